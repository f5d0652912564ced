"""Jobs only the tests enqueue, to put a real worker in the states the portal's jobs can leave it in."""

from __future__ import annotations

from jobs.context import with_app


@with_app
def poison(job_id: str) -> None:
    """Fail in the middle of a flush, leaving the session needing a rollback (as a crashed run once did)."""
    from portal.extensions import db
    from portal.models import BackgroundJob

    db.session.add(BackgroundJob(id=job_id, kind="health"))  # the same key as an existing row
    db.session.flush()
