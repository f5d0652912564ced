"""One run per integration at a time: Redis locks that a live run renews and a dead worker's run lets expire."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from flask import current_app
from sqlalchemy import select

from .. import queues
from ..extensions import db
from ..models import utcnow
from ..platform_models import RunStatus, SyncRun


def lock_name(integration_id: int, kind: str) -> str:
    """The Redis lock of a run kind: pushes have their own, every other run shares one per integration."""
    return f"portal:sync-lock:{integration_id}:{'push' if kind in ('push', 'acceptance') else 'run'}"


def lock_seconds() -> int:
    """How long a lock outlives its holder: its holder extends it while alive, so a killed worker's lock expires.

    Longer than the connector's read timeout, so that a dead holder's last request is over when another run starts.
    """
    return int(current_app.config.get("SYNC_LOCK_SECONDS") or 90)


@contextlib.contextmanager
def integration_lock(integration_id: int, kind: str, run_id: int | None = None) -> Iterator[bool]:
    """One nightly/manual run per integration at a time (pushes have their own short lock).

    The lock's value names the run holding it, and a thread extends it while the run is alive; a worker killed
    mid-run leaves a lock that expires after ``lock_seconds`` instead of blocking the integration for hours.
    """
    ttl = lock_seconds()
    lock = queues.redis().lock(lock_name(integration_id, kind), timeout=ttl,
                               blocking_timeout=30 if kind == "push" else 0, thread_local=False)
    got = lock.acquire(token=f"run-{run_id}" if run_id is not None else None)
    stop = threading.Event()
    beat = None
    if got:
        def extend() -> None:
            while not stop.wait(ttl / 3):
                with contextlib.suppress(Exception):
                    lock.reacquire()

        beat = threading.Thread(target=extend, name=f"sync-lock-{integration_id}", daemon=True)
        beat.start()
    try:
        yield bool(got)
    finally:
        stop.set()
        if beat is not None:
            beat.join(timeout=5)
        if got:
            with contextlib.suppress(Exception):
                lock.release()


def run_alive(run: SyncRun) -> bool:
    """True while a run is running and still holds its lock (its worker is alive)."""
    if run.status != RunStatus.running:
        return False
    held = queues.redis().get(lock_name(run.integration_id, run.kind))
    return held is not None and held.decode() == f"run-{run.id}"


def close_stopped_runs(integration_id: int, current_id: int) -> int:
    """Runs left "running" by a worker that died (their lock is gone): marked failed, saying why."""
    rows = db.session.scalars(select(SyncRun).where(
        SyncRun.integration_id == integration_id, SyncRun.id != current_id,
        SyncRun.status == RunStatus.running)).all()
    stopped = [r for r in rows if not run_alive(r)]
    for row in stopped:
        row.status = RunStatus.failed
        row.finished_at = utcnow()
        row.message = ("The worker stopped before this run finished (it was killed or restarted). Nothing is lost: "
                       "the records it did not finish are picked up by the next run.")
    if stopped:
        db.session.commit()
    return len(stopped)


def other_live_run(integration_id: int, run_id: int) -> bool:
    """True when another run of the integration is running and alive (it may have records in flight)."""
    others = db.session.scalars(select(SyncRun).where(
        SyncRun.integration_id == integration_id, SyncRun.id != run_id, SyncRun.status == RunStatus.running)).all()
    return any(run_alive(r) for r in others)
