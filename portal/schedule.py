"""When sync work runs: nightly slots spread over the night, retries with backoff, on-demand runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import func, select

from . import queues
from .extensions import db
from .ledger import new_run
from .models import CrmIntegration, utcnow
from .platform_models import RunStatus, SyncFailure, SyncRun

NIGHTLY_KEY = "portal:nightly:{id}"


def nightly_slot(integration_id: int, day: datetime) -> datetime:
    """When an integration's nightly run starts: spread between 01:00 and 05:00 UTC, stable per integration."""
    minutes = (integration_id * 7919) % (4 * 60)
    base = datetime(day.year, day.month, day.day, 1, 0, tzinfo=UTC)
    return base + timedelta(minutes=minutes)


def schedule_next_night(integration_id: int) -> None:
    """Put the integration's next nightly run on the scheduler, once (a Redis key remembers it)."""
    conn = queues.redis()
    now = utcnow()
    when = nightly_slot(integration_id, now)
    if when <= now:
        when = nightly_slot(integration_id, now + timedelta(days=1))
    key = NIGHTLY_KEY.format(id=integration_id)
    stamp = when.isoformat()
    # SET … GET in one command: of two workers starting at once, only the first schedules the night.
    previous = conn.set(key, stamp, ex=int((when - now).total_seconds()) + 3600, get=True)
    if previous == stamp.encode():
        return
    # This job only creates the night's run and queues it with a timeout from its size (``enqueue_run``).
    queues.queue(queues.QUEUE_NIGHTLY).enqueue_at(when, "jobs.sync.nightly", integration_id,
                                                  job_timeout=300, result_ttl=86400)


def ensure_schedules() -> int:
    """Schedule the next night of every integration that is On (at worker start and when switched On)."""
    ids = db.session.scalars(select(CrmIntegration.id).where(CrmIntegration.enabled.is_(True))).all()
    for integration_id in ids:
        schedule_next_night(integration_id)
    return len(ids)


def schedule_retry(integration_id: int) -> None:
    """After a run with transient failures, retry them when the earliest backoff expires."""
    due = db.session.scalar(select(func.min(SyncFailure.next_attempt_at)).where(
        SyncFailure.integration_id == integration_id, SyncFailure.status == "pending",
        SyncFailure.retryable.is_(True)))
    if due is None:
        return
    conn = queues.redis()
    key = f"portal:retry:{integration_id}"
    if not conn.set(key, "1", nx=True, ex=max(30, int((due - utcnow()).total_seconds()) + 30)):
        return  # a retry is already scheduled
    integration = db.session.get(CrmIntegration, integration_id)
    run = new_run(integration, "retry", trigger="backoff")
    queues.queue(queues.QUEUE_PUSH).enqueue_at(max(due, utcnow()), "jobs.sync.run", run.id,
                                               job_timeout=run_timeout(run))


def queue_for(kind: str) -> str:
    """The queue of a run kind: pushes and retries on their own queue, never behind nightly work."""
    return queues.QUEUE_PUSH if kind in ("push", "retry") else queues.QUEUE_NIGHTLY


def requeue_waiting(run: SyncRun, steps: list[str] | None, lead_ids: list[int] | None,
                    failure_ids: list[int] | None) -> None:
    """A run that found another run of its integration in progress: its job comes back in a few seconds."""
    delay = int(current_app.config.get("SYNC_WAIT_SECONDS") or 5)
    job = queues.queue(queue_for(run.kind)).enqueue_in(
        timedelta(seconds=delay), "jobs.sync.run", run.id, steps, lead_ids, failure_ids,
        job_timeout=run_timeout(run), result_ttl=3600, failure_ttl=86400)
    run.job_id = job.id
    db.session.commit()


def run_timeout(run: SyncRun) -> int:
    """A run's job timeout, from the work it has: a push is minutes, a nightly run its records' worth, never 6 h.

    The estimate is generous (a slow CRM writes a few records a second per connection); a run that meets it is
    marked failed in Sync history, saying so, and the next run picks up what it left.
    """
    if run.kind in ("push", "acceptance"):
        return int(current_app.config.get("SYNC_PUSH_TIMEOUT") or 600)
    from .platform_models import Lead, MarketingEvent

    integration = db.session.get(CrmIntegration, run.integration_id)
    records = db.session.scalar(select(func.count()).select_from(Lead).where(
        Lead.organization_id == integration.organization_id)) or 0
    records += db.session.scalar(select(func.count()).select_from(MarketingEvent).where(
        MarketingEvent.organization_id == integration.organization_id)) or 0
    base = float(current_app.config.get("SYNC_RUN_TIMEOUT_BASE", 900))
    per_record = float(current_app.config.get("SYNC_SECONDS_PER_RECORD", 0.5))
    return max(1, int(min(6 * 3600, base + records * per_record)))


def start_run(integration: CrmIntegration, kind: str, *, dry_run: bool = False, steps: list[str] | None = None,
              lead_ids: list[int] | None = None, failure_ids: list[int] | None = None,
              trigger: str = "", full: bool = False) -> SyncRun:
    """Queue a run now: push at once on its own queue, the rest on the nightly queue (``full``: read everything)."""
    return enqueue_run(new_run(integration, kind, dry_run=dry_run, trigger=trigger, full=full),
                       steps=steps, lead_ids=lead_ids, failure_ids=failure_ids)


def enqueue_run(run: SyncRun, *, steps: list[str] | None = None, lead_ids: list[int] | None = None,
                failure_ids: list[int] | None = None) -> SyncRun:
    """Put a new run's job on its queue, with a timeout from its size."""
    try:
        job = queues.queue(queue_for(run.kind)).enqueue("jobs.sync.run", run.id, steps, lead_ids, failure_ids,
                                                        job_timeout=run_timeout(run), result_ttl=3600,
                                                        failure_ttl=86400)
    except Exception:
        # The ledger must not show a run waiting forever for a job that was never queued.
        run.status, run.finished_at = RunStatus.failed, utcnow()
        run.message = "The run could not be queued (Redis did not answer). Nothing was sent; try again."
        db.session.commit()
        raise
    run.job_id = job.id
    db.session.commit()
    return run
