"""The worker entry point: ``python -m jobs.worker [--queues …] [--processes N]``.

One process runs the scheduler (a thread, not a forked process per worker); each job runs on a database session
of its own that is removed when the job ends, whatever happened in it.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import threading

from rq import Queue, SimpleWorker
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.worker_pool import WorkerPool

from portal.sync import TimeLimitReached

from .context import app

log = logging.getLogger(__name__)

SCHEDULER_INTERVAL = 1  # seconds between looks at the scheduled jobs
# Held by the scheduler thread through each look, and by a pool while it forks a worker: a forked child has only the
# forking thread, so a lock another thread held at the fork (an import's, while the scheduler imported something)
# stays held in the child for ever, and the worker hangs before it takes a job.
SCHEDULER_TICK = threading.Lock()
FORK_WAIT = 1.0  # seconds a pool waits for a look to end before it leaves a worker to its next check
SCHEDULER_STOP_WAIT = 15  # seconds a stopping worker waits for the scheduler's last look and its locks' release


class JobTimeLimit(TimeLimitReached, JobTimeoutException):
    """A job's time is up: RQ's timeout error, and the sync engine's, so a run can say what happened."""


class TimeLimit(UnixSignalDeathPenalty):
    """RQ's job timeout (SIGALRM in the worker's main thread), raising an error the sync engine understands."""

    def handle_death_penalty(self, signum, frame):
        """Raise the time-limit error in the job's thread."""
        raise JobTimeLimit(self._timeout)


class PortalWorker(SimpleWorker):
    """Runs jobs in this process (no fork per job, so a push starts in milliseconds), each on a clean session."""

    death_penalty_class = TimeLimit

    def execute_job(self, job, queue):
        """Run one job inside a fresh application context; its session is rolled back and removed after it."""
        from flask import current_app, has_app_context

        from portal.extensions import db

        # The app of whoever runs the worker (a test, the CLI) or this process's own; a new context either way.
        flask_app = current_app._get_current_object() if has_app_context() else app()
        with flask_app.app_context():
            try:
                return super().execute_job(job, queue)
            finally:
                # A job that failed mid-transaction must not hand its broken session to the next job.
                try:
                    db.session.rollback()
                finally:
                    db.session.remove()

    def work(self, burst: bool = False, *args, with_scheduler: bool = False, **kwargs):
        """Work the queues; the scheduler is this process's thread (see ``run_scheduler``), not a fork per worker.

        In burst mode RQ's own one-off pass still moves due jobs onto their queues first.
        """
        return super().work(burst, *args, with_scheduler=with_scheduler and burst, **kwargs)


class PortalWorkerPool(WorkerPool):
    """RQ's pool of worker processes, forking each worker only between the scheduler thread's looks."""

    def start_worker(self, *args, **kwargs):
        """Fork one worker while the scheduler thread holds no lock (see ``SCHEDULER_TICK``).

        A look that outlasts ``FORK_WAIT`` (Redis slow to answer) leaves the worker to the pool's next check, a
        second later; a pool told to stop while it waited forks nothing (the stop reached only the live workers).
        """
        if not SCHEDULER_TICK.acquire(timeout=FORK_WAIT):
            return None
        try:
            if self.status == self.Status.STOPPED:
                return None
            return super().start_worker(*args, **kwargs)
        finally:
            SCHEDULER_TICK.release()


class PoolWorker(PortalWorker):
    """A worker of a pool: the pool's parent process runs the scheduler for all of them."""

    def work(self, burst: bool = False, *args, with_scheduler: bool = False, **kwargs):
        """Work the queues without a scheduler of its own."""
        return super().work(burst, *args, with_scheduler=False, **kwargs)


def run_scheduler(connection, queue_names: list[str], stop: threading.Event) -> threading.Thread:
    """Move due scheduled jobs (nightly runs, backoff retries) onto their queues, in a thread of this process.

    RQ's locks make one scheduler per queue active across every process and machine; the others stand by.
    """
    scheduler = RQScheduler(queue_names, connection=connection, interval=SCHEDULER_INTERVAL)

    def loop() -> None:
        while not stop.is_set():
            with SCHEDULER_TICK:
                try:
                    if scheduler.should_reacquire_locks:
                        scheduler.acquire_locks()
                    if scheduler.acquired_locks:
                        scheduler.heartbeat()
                        scheduler.enqueue_scheduled_jobs()
                except Exception:  # noqa: BLE001 - a Redis hiccup: try again next tick
                    log.exception("scheduler tick failed")
            stop.wait(SCHEDULER_INTERVAL)
        try:
            scheduler.release_locks()
        except Exception:  # noqa: BLE001 - Redis gone: the locks expire by themselves
            log.exception("could not release the scheduler's locks")

    thread = threading.Thread(target=loop, name="rq-scheduler", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    """Run workers on the portal's queues until stopped (or until empty with --burst)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    parser.add_argument("--queues", default="", help="comma-separated queue names (default: all)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes on this machine (RQ's pool)")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="do not move scheduled jobs onto queues here (another process does)")
    args = parser.parse_args(argv)
    # `kill -USR1 <pid>` prints every thread's stack: where a stuck job is waiting.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from portal import queues
    from portal.extensions import db

    flask_app = app()
    with flask_app.app_context():
        names = [q for q in args.queues.split(",") if q] or queues.ALL_QUEUES
        conn = queues.redis()
        from portal.schedule import ensure_schedules

        ensure_schedules()
        db.session.remove()
        db.engine.dispose()  # no connection is carried into the pool's forked workers

    stop = threading.Event()
    scheduler_thread = None
    if not args.no_scheduler and not args.burst:  # every queue's scheduled jobs, whichever queues are worked
        scheduler_thread = run_scheduler(conn, queues.ALL_QUEUES, stop)
    try:
        if args.processes > 1:
            pool = PortalWorkerPool(names, connection=conn, num_workers=args.processes, worker_class=PoolWorker)
            pool.start(burst=args.burst, logging_level="INFO")
        else:
            worker = PortalWorker([Queue(n, connection=conn) for n in names], connection=conn)
            worker.work(burst=args.burst, with_scheduler=not args.no_scheduler, logging_level="INFO")
    finally:
        stop.set()
        if scheduler_thread is not None:  # its locks released now: another machine's scheduler takes over at once
            scheduler_thread.join(SCHEDULER_STOP_WAIT)


if __name__ == "__main__":
    main()
