"""Sync jobs: thin wrappers around ``portal.sync`` (push at once, nightly, retry, acceptance)."""

from __future__ import annotations

import contextlib
import logging

from .context import with_app

log = logging.getLogger(__name__)


@with_app
def run(run_id: int, steps: list[str] | None = None, lead_ids: list[int] | None = None,
        failure_ids: list[int] | None = None) -> dict:
    """Carry out a queued run."""
    from flask import current_app

    from portal import sync
    from portal.platform_models import RunStatus
    from portal.schedule import requeue_waiting

    with _sql_counter(current_app.config.get("SYNC_COUNT_SQL")) as statements:
        done = sync.execute(run_id, steps=steps, lead_ids=lead_ids, failure_ids=failure_ids)
    if done.status == RunStatus.queued:  # another run of the integration is in progress: wait for it
        requeue_waiting(done, steps, lead_ids, failure_ids)
        return {"status": "waiting", "message": done.message}
    log.info("sync run %s (%s): %s %s", run_id, done.kind, done.status.value, done.message)
    if done.kind in ("push", "retry"):
        from portal.schedule import schedule_retry

        schedule_retry(done.integration_id)
    return {"status": done.status.value, "message": done.message, "sql_statements": statements["n"]}


@contextlib.contextmanager
def _sql_counter(enabled: bool):
    """Count the SQL statements a job runs (for benchmarks; off in production)."""
    counter = {"n": None}
    if not enabled:
        yield counter
        return
    from sqlalchemy import event

    from portal.extensions import db

    counter["n"] = 0

    def count(*_args, **_kwargs) -> None:
        counter["n"] += 1

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


@with_app
def nightly(integration_id: int) -> dict:
    """Start the nightly run of one integration (a job of its own) and schedule the next night."""
    from portal import sync
    from portal.extensions import db
    from portal.models import CrmIntegration
    from portal.schedule import enqueue_run, schedule_next_night

    integration = db.session.get(CrmIntegration, integration_id)
    if integration is None or not integration.enabled:
        return {"status": "skipped", "message": "The integration is Off."}
    # The run gets its own job, whose timeout fits its size (this one only starts it).
    run_row = enqueue_run(sync.new_run(integration, "nightly", trigger="schedule"))
    schedule_next_night(integration_id)
    return {"status": "queued", "message": f"Nightly run {run_row.id} queued."}


@with_app
def acceptance(lead_id: int, integration_id: int) -> None:
    """Qualify or disqualify the CRM lead after an accept or reject in the portal or the email."""
    from portal import sync
    from portal.connectors.dynamics import DynamicsError
    from portal.extensions import db
    from portal.lifecycle import record_failure
    from portal.models import CrmIntegration
    from portal.platform_models import Lead

    lead = db.session.get(Lead, lead_id)
    integration = db.session.get(CrmIntegration, integration_id)
    try:
        sync.push_acceptance(lead, integration)
    except DynamicsError as exc:
        record_failure(integration, exc.code, exc.message, exc.action)
        db.session.commit()
        if exc.retryable:
            raise  # RQ's retry takes it from here
