"""Push at once on a real RQ worker (S1, S12), and a worker killed mid-push loses and doubles nothing."""

from __future__ import annotations

import signal

import pytest
from rq import SimpleWorker
from sqlalchemy import func, select

from portal import leads, queues
from portal.extensions import db
from portal.models import CrmIntegration, Organization
from portal.platform_models import Acceptance, CrmLink, Lead, LeadOrigin, RunStatus, SyncRun

from .sync_helpers import (
    configure,
    emails_in_crm,
    event_ids,
    make_leads,
    note_refs,
    run_steps,
    start_worker,
    stop_worker,
    wait_for,
)


@pytest.fixture
def distributing(connected):
    """An empty sandbox; the partner's integration On with Lead Distribution and Synchronize Supplier Leads."""
    connected["crm"].reset(seed=False, platform_option=True)
    return connected


def distribute(app, data: dict) -> int:
    with app.test_request_context():
        supplier = db.session.scalar(select(Organization).where(Organization.name == "Acme Supplier"))
        partner = db.session.scalar(select(Organization).where(Organization.name == "Acme Partner"))
        return leads.distribute_lead(supplier, partner, data).id


def work_push_queue(app) -> None:
    with app.app_context():
        SimpleWorker([queues.queue(queues.QUEUE_PUSH)], connection=queues.redis()).work(burst=True)


def test_distributed_lead_is_pushed_at_once_with_its_events(app, distributing):
    crm, iid = distributing["crm"], distributing["integration_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, enabled=True,
              event_types=["email_click"])
    lead_id = distribute(app, {
        "email": "Pat.Buyer@Example.NET", "first_name": "Pat", "last_name": "Buyer", "company": "Globex",
        "job_title": "CTO", "phone": "+1 555 0100", "city": "Lyon", "country": "FR",
        "events": [{"type": "email_open", "occurred_at": "2026-03-01T10:00:00Z"},
                   {"type": "form_submission", "occurred_at": "2026-03-01T10:05:00Z"}]})
    with app.app_context():
        run = db.session.scalar(select(SyncRun).where(SyncRun.integration_id == iid))
        assert (run.kind, run.status, run.job_id is not None) == ("push", RunStatus.queued, True)
        # Sync history names the push by the person, not by an internal id.
        assert run.trigger == "Push of lead Pat Buyer <Pat.Buyer@Example.NET>", run.trigger
        assert queues.queue(queues.QUEUE_PUSH).count == 1
    work_push_queue(app)
    (rec,) = crm.records("lead", email="Pat.Buyer@Example.NET")
    assert (rec["firstname"], rec["companyname"], rec["jobtitle"], rec["address1_city"]) == (
        "Pat", "Globex", "CTO", "Lyon")
    notes = [n for n in crm.records("annotation") if n["objectid"]["Id"] == rec["leadid"]]
    assert len(notes) == 2  # all its events, whatever the selected types (S6)
    with app.app_context():
        assert db.session.get(SyncRun, run.id).status == RunStatus.finished
    # The same person again, with one more event: linked, not duplicated; only the new event is added.
    again = distribute(app, {"email": "pat.buyer@example.net", "first_name": "Patricia",
                             "events": [{"type": "email_click", "occurred_at": "2026-03-02T09:00:00Z"}]})
    assert again == lead_id
    work_push_queue(app)
    assert emails_in_crm(crm)["pat.buyer@example.net"] == 1
    assert crm.records("lead", email="pat.buyer@example.net")[0]["firstname"] == "Pat"  # no field updates
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, [lead_id])) and set(refs.values()) == {1}
    # Accepted in the portal: the CRM lead is qualified too (S12).
    with app.app_context():
        assert leads.set_acceptance(db.session.get(Lead, lead_id), True, "portal")
    work_push_queue(app)
    assert crm.records("lead", email="pat.buyer@example.net")[0]["statecode"] == 1


def test_no_push_when_the_integration_is_off_or_not_syncing_supplier_leads(app, distributing):
    iid = distributing["integration_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=False, enabled=True)
    distribute(app, {"email": "a@example.net"})
    configure(app, iid, ld_sync_supplier_leads=True, enabled=False)
    distribute(app, {"email": "b@example.net"})
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SyncRun)) == 0
        assert queues.queue(queues.QUEUE_PUSH).count == 0


def stable(read, what: str):
    """A condition that holds once ``read()`` gives the same value twice in a row, some polls apart."""
    seen = {"last": object(), "same": 0}

    def check() -> bool:
        value = read()
        seen["same"] = seen["same"] + 1 if value == seen["last"] else 0
        seen["last"] = value
        return seen["same"] >= 3

    check.__doc__ = what
    return check


def test_a_worker_killed_mid_push_leaves_nothing_lost_or_doubled(app, distributing, tmp_path):
    """SIGKILL the worker while it writes notes; the next run finds what the CRM wrote and sends the rest once."""
    crm, iid, org = distributing["crm"], distributing["integration_id"], distributing["org_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, enabled=True)
    n = 3000
    ids = make_leads(app, org, n, origin=LeadOrigin.distributed, prefix="kill", events=("email_click",))
    crm.set_faults(per_record_ms=1)
    with app.app_context():
        from portal.schedule import start_run

        run_id = start_run(db.session.get(CrmIntegration, iid), "push", lead_ids=ids, trigger="test").id
    worker = start_worker(app, tmp_path / "worker.log", "--queues", queues.QUEUE_PUSH, env={"SYNC_LOCK_SECONDS": "3"})
    try:
        wait_for(lambda: crm.stats()["records"].get("annotation", 0) > 0, 90, "the worker to write notes")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop_worker(worker, kill=True)
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log, log
    # The CRM finishes the request the dead worker sent; then the run is done again.
    wait_for(stable(lambda: crm.stats()["records"], "sandbox records"), 60, "the sandbox to settle")
    crm.clear_faults()
    written_before = crm.stats()["records"]
    assert 0 < written_before.get("annotation", 0) < n and written_before["lead"] == n
    with app.app_context():
        killed = db.session.get(SyncRun, run_id)
        assert killed.status == RunStatus.running  # nobody knows yet
        inflight = db.session.scalar(select(func.count()).select_from(CrmLink).where(
            CrmLink.integration_id == iid, CrmLink.local_type == "event", CrmLink.crm_id == ""))
        assert inflight > 0  # the kill landed while notes were in flight: the next run must reconcile them
    again = run_steps(app, iid, kind="push", lead_ids=ids)  # waits for the dead worker's lock to expire
    assert again["status"] == "finished", again
    with app.app_context():
        killed = db.session.get(SyncRun, run_id)
        assert killed.status == RunStatus.failed and "worker stopped" in killed.message
    counts = emails_in_crm(crm)
    assert len(counts) == n and set(counts.values()) == {1}
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, ids)) and set(refs.values()) == {1}
    assert again["created"] == n - written_before["annotation"]  # only the notes the CRM did not have
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Lead).where(
            Lead.acceptance == Acceptance.pending)) == n


def test_custom_fields_go_into_a_note_once_when_asked(app, distributing):
    """G3: with *send custom fields into the Notes*, a distributed lead's custom fields become one note."""
    crm, iid = distributing["crm"], distributing["integration_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, enabled=True,
              ld_custom_fields_in_notes=True)
    lead_id = distribute(app, {"email": "custom@notes.example", "last_name": "Note",
                               "custom_fields": {"Budget": "50k", "Region": "EMEA"}})
    run_steps(app, iid, kind="push", lead_ids=[lead_id])
    run_steps(app, iid, kind="push", lead_ids=[lead_id])
    notes = [n for n in crm.records("annotation") if f"[ref:C{lead_id}]" in (n.get("subject") or "")]
    assert len(notes) == 1
    assert "Budget: 50k" in notes[0]["notetext"] and "Region: EMEA" in notes[0]["notetext"]


def test_distribution_survives_a_queue_outage(app, distributing):
    """Redis down: the lead is kept, the run is marked failed (not left waiting), the nightly catch-up pushes it."""
    from portal.embedded import free_port

    configure(app, distributing["integration_id"], lead_distribution=True, ld_sync_supplier_leads=True,
              enabled=True)
    # A real outage: the queue's Redis is a loopback port where nothing listens.
    working = app.config["REDIS_URL"]
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    app.extensions["portal_redis"] = None
    try:
        lead_id = distribute(app, {"email": "outage@example.com", "last_name": "Outage"})
    finally:
        app.config["REDIS_URL"] = working
        app.extensions["portal_redis"] = None
    with app.app_context():
        assert db.session.get(Lead, lead_id) is not None
        run = db.session.scalar(select(SyncRun).where(SyncRun.kind == "push"))
        assert run.status == RunStatus.failed and "could not be queued" in run.message
