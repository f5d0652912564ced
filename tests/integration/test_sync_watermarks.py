"""Nightly reads of what changed: watermarks per pull, the overlap, full resyncs (on demand, weekly) and deletions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.connection import config_for
from portal.connectors.dynamics import OrganizationService, Transport
from portal.extensions import db
from portal.models import CrmIntegration, utcnow
from portal.platform_models import CrmLink, Lead, SyncRun, SyncWatermark

from .sync_helpers import configure, run_steps

OLD = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@pytest.fixture
def people(connected, app):
    """An empty sandbox holding 6 leads and 4 contacts last modified an hour apart, long ago; Pull Contacts on."""
    crm = connected["crm"]
    crm.reset(seed=False, platform_option=True)
    stamp = lambda i: (OLD + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    crm.insert_records("lead", [{"lastname": f"L{i}", "emailaddress1": f"wl{i}@example.net", "subject": "s",
                                 "modifiedon": stamp(i)} for i in range(6)])
    crm.insert_records("contact", [{"lastname": f"C{i}", "emailaddress1": f"wc{i}@example.net",
                                    "modifiedon": stamp(i)} for i in range(4)])
    configure(app, connected["integration_id"], marketing_automation=True, ma_pull_contacts=True)
    return connected


def _service(app, iid: int) -> OrganizationService:
    with app.app_context():
        return OrganizationService(Transport(config_for(db.session.get(CrmIntegration, iid))))


def _pull(app, iid: int, **kw) -> dict:
    run = run_steps(app, iid, ["pull_records"], **kw)
    assert run["status"] == "finished", run
    return run["steps"]["pull_records"]


def test_the_nightly_pull_reads_only_records_modified_since_the_last_read(app, people):
    crm, iid = people["crm"], people["integration_id"]
    first = _pull(app, iid)
    assert (first["read"], first["created"]) == (10, 10) and "full read" in first["note"]
    with app.app_context():
        marks = {m.name: m for m in db.session.scalars(select(SyncWatermark).where(
            SyncWatermark.integration_id == iid))}
        assert marks["pull_records:lead"].modified_on == OLD + timedelta(hours=5)
        assert marks["pull_records:contact"].modified_on == OLD + timedelta(hours=3)
        assert marks["pull_records:lead"].full_at is not None
    # Nothing changed: only the newest record of each kind is read again (the overlap), nothing is created.
    quiet = _pull(app, iid)
    assert (quiet["read"], quiet["created"], quiet["updated"]) == (2, 0, 0), quiet
    assert "modified since the last run" in quiet["note"]

    # Two records change in the CRM: they are read (with the overlap's one) and their leads updated.
    svc = _service(app, iid)
    lead_id = crm.records("lead", email="wl1@example.net")[0]["leadid"]
    contact_id = crm.records("contact", email="wc0@example.net")[0]["contactid"]
    svc.update("lead", lead_id, {"jobtitle": "Chief Buyer"})
    svc.update("contact", contact_id, {"address1_city": "Bergen"})
    svc.transport.close()
    changed = _pull(app, iid)
    assert (changed["read"], changed["updated"], changed["created"]) == (4, 2, 0), changed
    with app.app_context():
        lead = db.session.scalar(select(Lead).where(Lead.email_normalized == "wl1@example.net"))
        assert lead.job_title == "Chief Buyer"
        assert db.session.scalar(select(Lead.city).where(Lead.email_normalized == "wc0@example.net")) == "Bergen"
        mark = db.session.scalar(select(SyncWatermark).where(SyncWatermark.integration_id == iid,
                                                             SyncWatermark.name == "pull_records:lead"))
        assert mark.modified_on > utcnow() - timedelta(minutes=1)  # the CRM's stamp of the change just made


def test_a_preview_moves_no_watermark(app, people):
    iid = people["integration_id"]
    _pull(app, iid)
    with app.app_context():
        before = sorted((m.name, m.modified_on, m.read_at) for m in db.session.scalars(select(SyncWatermark)))
    assert _pull(app, iid, dry_run=True)["read"] == 2
    with app.app_context():
        assert sorted((m.name, m.modified_on, m.read_at) for m in db.session.scalars(select(SyncWatermark))) == before


def test_a_full_resync_reads_everything_and_notices_deleted_records(app, people, runner):
    crm, iid = people["crm"], people["integration_id"]
    _pull(app, iid)
    gone = crm.records("lead", email="wl2@example.net")[0]["leadid"]
    svc = _service(app, iid)
    svc.delete("lead", gone)
    svc.transport.close()
    nightly = _pull(app, iid)  # a nightly read does not see deletions
    assert nightly["read"] == 2 and nightly["deleted"] == 0
    result = runner.invoke(args=["sync", "run", "--integration", str(iid), "--step", "pull_records", "--full"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        run = db.session.scalar(select(SyncRun).order_by(SyncRun.id.desc()).limit(1))
        assert run.full and run.steps[0]["read"] == 9 and run.steps[0]["deleted"] == 1
        assert "1 deleted in the CRM" in run.steps[0]["note"]
        lead = db.session.scalar(select(Lead).where(Lead.email_normalized == "wl2@example.net"))
        assert lead is not None  # kept on the platform, only unlinked
        assert db.session.scalar(select(func.count()).select_from(CrmLink).where(
            CrmLink.integration_id == iid, CrmLink.local_id == lead.id)) == 0
        assert db.session.scalar(select(func.count()).select_from(CrmLink).where(
            CrmLink.integration_id == iid, CrmLink.local_type == "lead")) == 9


def test_a_week_after_the_last_full_read_the_nightly_pull_reads_everything(app, people):
    iid = people["integration_id"]
    _pull(app, iid)
    assert _pull(app, iid)["read"] == 2
    with app.app_context():
        for mark in db.session.scalars(select(SyncWatermark).where(SyncWatermark.integration_id == iid)):
            mark.full_at = utcnow() - timedelta(days=7, minutes=1)
        db.session.commit()
    weekly = _pull(app, iid)
    assert weekly["read"] == 10 and "full read" in weekly["note"]
    assert _pull(app, iid)["read"] == 2  # and the week starts again


def test_resync_everything_on_sync_history_queues_a_full_run(app, connected, client, auth):
    from .test_runs_pages import mark_tested, post, runs_of

    iid = connected["integration_id"]
    mark_tested(app, iid)
    page = client.get(f"/settings/crm/{iid}/runs")
    assert f'action="/settings/crm/{iid}/runs/resync"' in page.text and "Resync everything" in page.text
    resp = post(client, auth, f"/settings/crm/{iid}/runs/resync")
    assert resp.status_code == 200, resp.text
    (run,) = runs_of(app, iid)
    assert (run.kind, run.full, run.dry_run) == ("manual", True, False) and "Resync everything" in run.trigger
    assert "reads every CRM record again" in resp.text
    assert post(client, auth, f"/settings/crm/{iid}/runs/resync").status_code == 409  # one run at a time
    assert client.post(f"/settings/crm/{iid}/runs/resync").status_code == 400  # no CSRF token


def test_follow_up_pulls_read_changes_and_every_record_of_a_newly_linked_lead(app, people):
    crm, iid = people["crm"], people["integration_id"]
    steps = ["pull_records", "pull_status"]
    first = run_steps(app, iid, steps)["steps"]["pull_status"]
    assert first["read"] == 6  # every linked CRM lead, on the first (full) read
    assert run_steps(app, iid, steps)["steps"]["pull_status"]["read"] == 1  # the overlap's newest lead
    svc = _service(app, iid)
    svc.set_state("lead", crm.records("lead", email="wl0@example.net")[0]["leadid"], 2, 6)
    svc.transport.close()
    changed = run_steps(app, iid, steps)["steps"]["pull_status"]
    assert (changed["read"], changed["updated"]) == (2, 1), changed  # the changed lead and the overlap's
    # A CRM lead untouched for a year, linked only now (a full pull): its status is read all the same.
    crm.insert_records("lead", [{"lastname": "Old", "emailaddress1": "old@example.net", "subject": "s",
                                 "modifiedon": "2025-01-01T00:00:00Z"}])
    with app.app_context():
        run = SyncRun(integration_id=iid, kind="manual", full=True, trigger="test")
        db.session.add(run)
        db.session.commit()
        from portal import sync

        sync.execute(run.id, steps=["pull_records"])
    status = run_steps(app, iid, ["pull_status"])["steps"]["pull_status"]
    assert status["read"] == 2 and status["updated"] == 1, status  # the lead changed just before, the new one


def test_a_quiet_night_costs_one_query_per_pull_even_where_there_was_nothing_to_read(app, people):
    crm, iid = people["crm"], people["integration_id"]
    configure(app, iid, ma_pull_opportunities=True)
    steps = ["pull_records", "pull_status", "pull_activities", "pull_opportunities"]
    run_steps(app, iid, steps)
    before = crm.stats()["requests"].get("RetrieveMultiple", 0)
    quiet = run_steps(app, iid, steps)
    assert quiet["status"] == "finished", quiet
    # leads and contacts, then one query each for statuses, activities and opportunities modified since
    assert crm.stats()["requests"]["RetrieveMultiple"] - before == 5
