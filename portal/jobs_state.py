"""The rows that mirror background jobs: created on enqueue, updated by the job as it goes."""

from __future__ import annotations

import json
from datetime import timedelta

from flask import current_app

from . import queues
from .extensions import db
from .models import BackgroundJob, JobStatus, utcnow


def enqueue(kind: str, func: str, *, queue_name: str, organization_id: int | None = None,
            integration_id: int | None = None, args: tuple = (), timeout: int = 600) -> BackgroundJob:
    """Create the job's row, commit it, then put the job on its queue (the row exists before it runs)."""
    job_id = queues.new_job_id()
    row = BackgroundJob(id=job_id, kind=kind, organization_id=organization_id, integration_id=integration_id)
    db.session.add(row)
    db.session.commit()
    queues.queue(queue_name).enqueue(func, job_id, *args, job_id=job_id, job_timeout=timeout,
                                     result_ttl=3600, failure_ttl=86400)
    return row


def job_of(job_id: str) -> BackgroundJob | None:
    """The job row named by an id from a request, or None for an id no row can have (too long, or holding a NUL,
    which PostgreSQL refuses in a text)."""
    if len(job_id) > BackgroundJob.id.type.length or "\x00" in job_id:
        return None
    return db.session.get(BackgroundJob, job_id)


def _row(job_id: str) -> BackgroundJob:
    row = db.session.get(BackgroundJob, job_id)
    if row is None:
        raise LookupError(f"no background job {job_id}")
    return row


def start_job(job_id: str) -> BackgroundJob:
    """Mark a job started."""
    row = _row(job_id)
    row.status = JobStatus.started
    row.started_at = utcnow()
    db.session.commit()
    return row


def add_step(job_id: str, step: dict) -> None:
    """Append a finished step so the page polling the row shows it at once."""
    row = _row(job_id)
    row.steps_json = json.dumps([*row.steps, step])
    db.session.commit()


def finish_job(job_id: str, *, ok: bool, message: str = "", result: dict | None = None) -> BackgroundJob:
    """Mark a job finished or failed with its outcome."""
    row = _row(job_id)
    row.status = JobStatus.finished if ok else JobStatus.failed
    row.message = message
    row.result_json = json.dumps(result or {}, default=str)
    row.finished_at = utcnow()
    db.session.commit()
    return row


def is_stuck_in_queue(row: BackgroundJob) -> bool:
    """True when no worker has picked the job up within the configured grace period."""
    grace = timedelta(seconds=current_app.config["WORKER_STALE_SECONDS"])
    return row.status == JobStatus.queued and utcnow() - row.created_at > grace
