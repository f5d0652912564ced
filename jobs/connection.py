"""Connection-test jobs: run the connector's layered test and keep its result on the integration."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from portal.wording import at_most

from .context import with_app

log = logging.getLogger(__name__)

WAITING = "Waiting for the CRM"  # the step a test shows while the sync's batches hold every slot
# A CRM names its user and version as it likes, and the message is kept on the job and the integration and shown on
# every page: it is bounded. The CRM's own limits are 200 characters for a full name and 1,024 for a domain name.
NAME_SHOWN = 300
VERSION_SHOWN = 40


@with_app
def run_test(job_id: str, integration_id: int, add_lead_source: bool = False) -> dict:
    """Test the saved connection step by step; optionally add the platform's lead-source option first."""
    from flask import current_app

    from portal.connection import config_for
    from portal.connectors.dynamics import DynamicsError, Step
    from portal.connectors.dynamics.factory import open_service, run_connection_test
    from portal.crypto import SecretUnreadable
    from portal.extensions import db
    from portal.jobs_state import add_step, finish_job, start_job
    from portal.lifecycle import record_test, test_finished
    from portal.models import CrmIntegration
    from portal.sync.inflight import Turn

    start_job(job_id)
    integration = db.session.get(CrmIntegration, integration_id)
    fingerprint = integration.connection_fingerprint()
    platform = current_app.config["PLATFORM_NAME"]
    try:
        config = config_for(integration)
    except SecretUnreadable as exc:
        what = "client secret (or certificate)" if integration.is_online else "CRM password"
        error = {"code": "secret_unreadable", "message": str(exc),
                 "action": f"Enter the {what} again in CRM Connection Settings and save."}
        record_test(integration, ok=False, fingerprint=fingerprint, message=error["message"], error=error)
        finish_job(job_id, ok=False, message=error["message"], result={"ok": False, "steps": [], "error": error})
        return {"ok": False}

    # The test counts as one request in flight to the CRM, with the runs' batches (sync/inflight.py).
    turn = Turn(integration_id, wait=float(current_app.config.get("CONNECTION_TEST_SLOT_WAIT", 20)),
                on_wait=lambda text: add_step(job_id, {"name": WAITING, "ok": True, "detail": text}))
    with contextlib.closing(turn):
        if add_lead_source:
            try:
                service, transport = open_service(config)
                transport.gate = turn
                with transport:
                    value = service.ensure_option(platform)
                add_step(job_id, {"name": "Add lead source option", "ok": True,
                                  "detail": f"'{platform}' is option {value} of Lead Source, published"})
            except DynamicsError as exc:
                add_step(job_id, {"name": "Add lead source option", "ok": False, "detail": exc.message})

        def work(on_step):
            turn.on_wait = lambda text: on_step(Step(WAITING, True, text))
            return run_connection_test(config, platform_name=platform, on_step=on_step, gate=turn)

        deadline = float(current_app.config.get("CONNECTION_TEST_DEADLINE", 45))
        result = _within(deadline, work, lambda step: add_step(job_id, step.to_dict()))
        if result is None:  # the CRM holds the test: say so and free the worker for the next tenant's test
            error = {"code": "timeout", "message": f"The CRM did not finish answering within {deadline:.0f} s.",
                     "action": "Check that the CRM server is up and not overloaded, then test again."}
            record_test(integration, ok=False, fingerprint=fingerprint, message=error["message"], error=error)
            db.session.commit()
            finish_job(job_id, ok=False, message=error["message"], result={"ok": False, "steps": [], "error": error})
            return {"ok": False}
        user = _user_name(config, result.user_id, turn) if result.ok else None
    data = result.to_dict()
    data["user_name"] = user
    db.session.refresh(integration)
    was_on = integration.enabled
    if result.max_lengths:
        integration.max_lengths = result.max_lengths  # customized CRMs differ: records are checked against these
    if result.ok:
        message = f"Connected as {user or result.user_id}, CRM version {at_most(result.version or '', VERSION_SHOWN)}."
    else:
        message = f"{data['error']['message']}"
    test_finished(integration, ok=result.ok, was_on=was_on, fingerprint=fingerprint, message=message,
                  lead_source_value=result.lead_source_value, error=data["error"])
    db.session.commit()
    finish_job(job_id, ok=result.ok, message=message, result=data)
    log.info("connection test %s for integration %s: %s", job_id, integration_id, "ok" if result.ok else "failed")
    return {"ok": result.ok}


def _within(seconds: float, work, on_step):
    """Run ``work(on_step)`` in a thread for at most ``seconds``; its steps are reported from this thread.

    None when time is up: the thread is left to end with its request (a CRM that drips its answer keeps a
    socket read alive for ever), and the worker goes on to the next job.
    """
    steps: queue.SimpleQueue = queue.SimpleQueue()
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = work(steps.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread below
            out["error"] = exc

    thread = threading.Thread(target=run, name="connection-test", daemon=True)
    thread.start()
    end = time.monotonic() + seconds
    while True:
        thread.join(timeout=0.1)
        while not steps.empty():
            on_step(steps.get())
        if not thread.is_alive():
            break
        if time.monotonic() >= end:
            return None
    if "error" in out:
        raise out["error"]
    return out["result"]


def _user_name(config, user_id: str | None, gate) -> str | None:
    """The CRM user's full name for the success message (best effort: the test already passed)."""
    if not user_id:
        return None
    from portal.connectors.dynamics import DynamicsError
    from portal.connectors.dynamics.factory import open_service

    try:
        service, transport = open_service(config)
        transport.gate = gate
        with transport:
            entity = service.retrieve("systemuser", user_id, ["fullname", "domainname"])
        name = entity.attributes.get("fullname")
        domain_name = entity.attributes.get("domainname")
        shown = f"{name} ({domain_name})" if name and domain_name else name or domain_name
        return at_most(shown, NAME_SHOWN) if shown else shown
    except DynamicsError:
        return None
