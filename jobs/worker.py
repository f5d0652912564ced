"""The worker entry point: ``python -m jobs.worker`` runs every queue with the scheduler."""

from __future__ import annotations

import argparse
import logging

from rq import SimpleWorker


def main(argv: list[str] | None = None) -> None:
    """Run a worker on the portal's queues until stopped (or until empty with --burst)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    parser.add_argument("--queues", default="", help="comma-separated queue names (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from portal import queues

    from .context import app

    flask_app = app()
    with flask_app.app_context():
        names = [q for q in args.queues.split(",") if q] or queues.ALL_QUEUES
        conn = queues.redis()
        from portal.schedule import ensure_schedules

        ensure_schedules()
        # SimpleWorker runs jobs in this process: no fork per job, so a push starts in milliseconds.
        worker = SimpleWorker([queues.queue(n) for n in names], connection=conn)
        worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")


if __name__ == "__main__":
    main()
