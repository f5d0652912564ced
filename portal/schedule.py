"""When sync work runs: nightly slots spread over the night, retries with backoff, on-demand runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    queues.queue(queues.QUEUE_NIGHTLY).enqueue_at(when, "jobs.sync.nightly", integration_id,
                                                  job_timeout=6 * 3600, result_ttl=86400)


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
                                               job_timeout=3600)


def start_run(integration: CrmIntegration, kind: str, *, dry_run: bool = False, steps: list[str] | None = None,
              lead_ids: list[int] | None = None, failure_ids: list[int] | None = None,
              trigger: str = "", full: bool = False) -> SyncRun:
    """Queue a run now: push at once on its own queue, the rest on the nightly queue (``full``: read everything)."""
    run = new_run(integration, kind, dry_run=dry_run, trigger=trigger, full=full)
    queue_name = queues.QUEUE_PUSH if kind in ("push", "retry") else queues.QUEUE_NIGHTLY
    try:
        job = queues.queue(queue_name).enqueue("jobs.sync.run", run.id, steps, lead_ids, failure_ids,
                                               job_timeout=6 * 3600, result_ttl=3600, failure_ttl=86400)
    except Exception:
        # The ledger must not show a run waiting forever for a job that was never queued.
        run.status, run.finished_at = RunStatus.failed, utcnow()
        run.message = "The run could not be queued (Redis did not answer). Nothing was sent; try again."
        db.session.commit()
        raise
    run.job_id = job.id
    db.session.commit()
    return run
