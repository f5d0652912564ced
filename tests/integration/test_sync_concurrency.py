"""Many writers on one integration: push, nightly, retry and Sync now never send a record twice or drop a run."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.platform_models import LeadOrigin, RunStatus, SyncRun

from .sync_helpers import configure, emails_in_crm, event_ids, make_leads, note_refs, run_steps, wait_for


@pytest.fixture
def distributing(connected):
    """An empty sandbox; the partner's integration On with Lead Distribution and Synchronize Supplier Leads."""
    connected["crm"].reset(seed=False, platform_option=True)
    return connected


def running_runs(app, iid: int) -> list[int]:
    with app.app_context():
        return list(db.session.scalars(select(SyncRun.id).where(SyncRun.integration_id == iid,
                                                                SyncRun.status == RunStatus.running)))


def test_a_push_during_the_nightly_catch_up_sends_each_lead_once(app, distributing):
    """Push the last leads while the nightly step sends them: one CRM record each, and both runs finish."""
    crm, iid, org = distributing["crm"], distributing["integration_id"], distributing["org_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, enabled=True)
    n = 300
    ids = make_leads(app, org, n, origin=LeadOrigin.distributed, prefix="race", events=("email_click",))
    crm.set_faults(per_record_ms=2)
    nightly: dict = {}

    def catch_up() -> None:
        nightly.update(run_steps(app, iid, ["push_distributed_leads", "push_events"]))

    thread = threading.Thread(target=catch_up)
    thread.start()
    try:
        wait_for(lambda: running_runs(app, iid), 20, "the nightly run to start")
        pushes = [run_steps(app, iid, kind="push", lead_ids=ids[-k - 1:]) for k in range(5)]
    finally:
        thread.join(120)
    crm.clear_faults()
    assert nightly["status"] in ("finished", "partial"), nightly
    assert all(p["status"] in ("finished", "partial") for p in pushes), pushes
    counts = emails_in_crm(crm)
    assert len(counts) == n and set(counts.values()) == {1}, counts.most_common(3)
    refs = note_refs(crm)
    assert set(refs.values()) <= {1}, refs.most_common(3)
    with app.app_context():
        assert not db.session.scalars(select(SyncRun).where(SyncRun.status == RunStatus.running)).all()
    # What a run missed while another had it in hand, the next run sends: every event once.
    run_steps(app, iid, ["push_events"])
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, ids)) and set(refs.values()) == {1}
