"""The run's record in the ledger: each step's counts, progress, and one way to record a failed record."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update

from ..connectors.dynamics import DynamicsError
from ..extensions import db
from ..ledger import STEP_TITLES
from ..models import utcnow
from ..platform_models import SyncFailure, SyncRun

DB_CHUNK = 1000  # local rows handled at once, so memory stays flat


def backoff(attempts: int) -> timedelta:
    """How long a transient failure waits before its next try: 1, 5, 30 minutes, then 2 hours."""
    return timedelta(minutes=[1, 5, 30, 120][min(attempts, 4) - 1])


@dataclass
class StepCounts:
    """What one step did."""

    name: str
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    read: int = 0
    deleted: int = 0  # records found deleted in the CRM (a full read)
    note: str = ""
    samples: list[str] = field(default_factory=list)


def record_failure(run: SyncRun, step: str, operation: str, entity: str, error: DynamicsError | str, *,
                   local_type: str = "", local_id: int | None = None, crm_id: str = "") -> SyncFailure:
    """A failed record in the ledger, with a message a person can act on and the raw fault.

    The record's earlier pending failure of the same operation is superseded, and its attempts carry on.
    """
    if isinstance(error, DynamicsError):
        code, message, action = error.code, error.message, error.action
        raw, retryable = str(error.detail or ""), bool(error.retryable)
    else:
        code, message, action, raw, retryable = "invalid", error, "Correct the record and retry it.", "", False
    previous = db.session.scalar(select(SyncFailure).where(
        SyncFailure.integration_id == run.integration_id, SyncFailure.status == "pending",
        SyncFailure.local_type == local_type, SyncFailure.local_id == local_id,
        SyncFailure.operation == operation).limit(1)) if local_id is not None else None
    attempts = (previous.attempts + 1) if previous else 1
    if previous:
        previous.status = "superseded"
    row = SyncFailure(
        run_id=run.id, integration_id=run.integration_id, step=step, operation=operation, entity=entity,
        local_type=local_type, local_id=local_id, crm_id=crm_id or "", code=code, message=message, action=action,
        raw=raw[:20000], retryable=retryable, attempts=attempts,
        next_attempt_at=utcnow() + backoff(attempts) if retryable else None)
    db.session.add(row)
    return row


class Recorder:
    """Writes one run's steps, counts, progress and failures to the ledger as the run goes."""

    def __init__(self, run: SyncRun, commit: Callable[[], None]):
        self.run = run
        self.commit = commit
        self.writes = not run.dry_run
        self.counts: StepCounts | None = None
        self._last_progress = 0.0

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepCounts]:
        """Run a step: mark it current, then store its counts."""
        self.counts = StepCounts(name)
        self.run.current_step = name
        self.commit()
        started = utcnow()
        status = "finished"
        try:
            yield self.counts
        except Exception:
            status = "failed"
            raise
        finally:
            c = self.counts
            steps = self.run.steps
            steps.append({"name": name, "title": STEP_TITLES.get(name, name), "status": status,
                          "created": c.created, "updated": c.updated, "skipped": c.skipped, "failed": c.failed,
                          "read": c.read, "deleted": c.deleted, "note": c.note, "samples": c.samples[:5],
                          "seconds": round((utcnow() - started).total_seconds(), 2)})
            self.run.steps_json = json.dumps(steps)
            self.run.created_count += c.created
            self.run.updated_count += c.updated
            self.run.skipped_count += c.skipped
            self.run.failed_count += c.failed
            self.commit()

    def progress(self, done: int, total: int, force: bool = False) -> None:
        """Store progress at most twice a second, so the page's bar moves without a write per record."""
        now = time.monotonic()
        if force or now - self._last_progress > 0.5:
            self.run.progress_done, self.run.progress_total = done, total
            self.commit()
            self._last_progress = now

    def fail(self, operation: str, entity: str, error: DynamicsError | str, *, local_type: str = "",
             local_id: int | None = None, crm_id: str = "") -> None:
        """Count one failed record and, in a run that writes, keep it in the ledger for a retry."""
        if self.counts:
            self.counts.failed += 1
        if self.writes:
            record_failure(self.run, self.counts.name if self.counts else "", operation, entity, error,
                           local_type=local_type, local_id=local_id, crm_id=crm_id)

    def resolve_failures(self, local_type: str, local_ids: Iterable[int]) -> None:
        """Records that went through: their earlier failures are resolved."""
        if not self.writes:
            return
        ids = list(local_ids)
        for i in range(0, len(ids), DB_CHUNK):
            db.session.execute(
                update(SyncFailure)
                .where(SyncFailure.integration_id == self.run.integration_id, SyncFailure.status == "pending",
                       SyncFailure.local_type == local_type, SyncFailure.local_id.in_(ids[i:i + DB_CHUNK]))
                .values(status="resolved"))


def summary(run: SyncRun) -> str:
    """One line for the ledger."""
    verb = "would create" if run.dry_run else "created"
    return (f"{verb} {run.created_count}, updated {run.updated_count}, skipped {run.skipped_count}, "
            f"failed {run.failed_count}")
