"""The worker process: each job on a clean database session, whatever the job before it left behind."""

from __future__ import annotations

from portal import queues
from portal.extensions import db
from portal.models import BackgroundJob, JobStatus

from .sync_helpers import start_worker, stop_worker


def test_a_failed_job_does_not_poison_the_next_one(app, tmp_path):
    """A job that dies mid-flush is followed by one that works: the worker rolled back and removed its session."""
    with app.app_context():
        first, second = "a" * 32, "b" * 32
        db.session.add_all([BackgroundJob(id=first, kind="health"), BackgroundJob(id=second, kind="health")])
        db.session.commit()
        q = queues.queue(queues.QUEUE_DEFAULT)
        q.enqueue("tests.integration.worker_jobs.poison", first, job_id=f"poison-{first}")
        q.enqueue("jobs.health.ping", second, job_id=second)
    worker = start_worker(app, tmp_path / "worker.log", "--burst", "--queues", queues.QUEUE_DEFAULT)
    try:
        worker.wait(timeout=60)
    finally:
        stop_worker(worker)
    log = (tmp_path / "worker.log").read_text()
    with app.app_context():
        assert db.session.get(BackgroundJob, second).status == JobStatus.finished, log
    assert "PendingRollbackError" not in log, log


def test_a_pool_of_workers_shares_the_queues_and_one_scheduler(app, tmp_path):
    """``--processes 2``: jobs run in two worker processes; a scheduled job is moved onto its queue once."""
    import json
    from datetime import timedelta

    import psutil

    from .sync_helpers import wait_for

    ids = [f"{i:032x}" for i in range(1, 7)]
    with app.app_context():
        db.session.add_all([BackgroundJob(id=i, kind="health") for i in ids])
        db.session.commit()
    pool = start_worker(app, tmp_path / "pool.log", "--processes", "2", "--queues", queues.QUEUE_DEFAULT)
    try:
        children = wait_for(lambda: len(psutil.Process(pool.pid).children()) == 2 and psutil.Process(pool.pid)
                            .children(), 30, "two worker processes")
        with app.app_context():
            q = queues.queue(queues.QUEUE_DEFAULT)
            q.enqueue_in(timedelta(seconds=1), "jobs.health.ping", ids[0], job_id=ids[0])
            for job_id in ids[1:]:
                q.enqueue("jobs.health.ping", job_id, job_id=job_id)

        def finished() -> list:
            with app.app_context():
                rows = [db.session.get(BackgroundJob, i) for i in ids]
                db.session.rollback()
                return rows if all(r.status == JobStatus.finished for r in rows) else []

        rows = wait_for(finished, 60, "every job to finish")
    finally:
        stop_worker(pool)
    pids = {json.loads(r.result_json)["pid"] for r in rows}
    assert pids <= {c.pid for c in children} and pool.pid not in pids
    log = (tmp_path / "pool.log").read_text()
    assert log.count("Acquired scheduler lock") == 1, log  # the parent schedules; the workers do not
