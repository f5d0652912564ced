"""The health job: proves a worker is alive and can reach the database."""

from __future__ import annotations

import json
import os
import socket

from .context import with_app


@with_app
def ping(job_id: str) -> dict:
    """Mark the health row finished with where it ran."""
    from portal.jobs_state import finish_job, start_job

    start_job(job_id)
    result = {"host": socket.gethostname(), "pid": os.getpid()}
    finish_job(job_id, ok=True, message="The background worker answered.", result=result)
    return json.loads(json.dumps(result))
