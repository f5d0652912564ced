"""Many writers on one integration: push, nightly, retry and Sync now never send a record twice or drop a run."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.platform_models import LeadOrigin, RunStatus, SyncRun

from .sync_helpers import configure, emails_in_crm, event_ids, make_leads, note_refs, run_steps, wait_for


@pytest.fixture(autouse=True)
def patient_pushes(app):
    """Pushes run in this process here, with no job to come back: they wait for a slot as long as it takes."""
    from portal.sync import engine

    app.config["SYNC_PUSH_SLOT_WAIT"] = 120
    for iid in list(engine._KEPT):
        engine.drop_kept_gateway(iid)  # a push gateway kept by an earlier test has the default wait


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


def work_queues(app, names: list[str]) -> None:
    """Work the queues in this process until empty, moving due scheduled jobs first (as the scheduler does)."""
    from jobs.worker import PortalWorker
    from portal import queues

    with app.app_context():
        PortalWorker([queues.queue(n) for n in names], connection=queues.redis()).work(
            burst=True, with_scheduler=True)


@pytest.mark.parametrize("kind", ["retry", "manual"])
def test_a_run_started_while_another_runs_waits_and_runs_after_it(app, distributing, kind):
    """Retry all (or the backoff retry, or Sync now) while a run holds the integration: it waits, then runs."""
    from portal import queues, sync
    from portal.models import CrmIntegration
    from portal.schedule import start_run

    iid = distributing["integration_id"]
    configure(app, iid, marketing_automation=True, enabled=True)
    app.config["SYNC_WAIT_SECONDS"] = 1
    with app.app_context():
        integ = db.session.get(CrmIntegration, iid)
        holder = sync.new_run(integ, "manual", trigger="test")
        waiting = start_run(integ, kind, steps=["push_marketing_leads"], trigger="test").id
        with sync.integration_lock(iid, "manual", holder.id) as got:
            assert got
            holder.status = RunStatus.running
            db.session.commit()
            work_queues(app, [queues.QUEUE_PUSH, queues.QUEUE_NIGHTLY])
            row = db.session.get(SyncRun, waiting)
            db.session.refresh(row)
            assert row.status == RunStatus.queued, row.message  # not dropped: it waits for the holder
            assert "starts when it has finished" in row.message
            holder.status, holder.finished_at = RunStatus.finished, holder.started_at
            db.session.commit()

    def done() -> bool:
        work_queues(app, [queues.QUEUE_PUSH, queues.QUEUE_NIGHTLY])
        with app.app_context():
            return db.session.get(SyncRun, waiting).status == RunStatus.finished

    wait_for(done, 30, f"the waiting {kind} run to run")


def test_batches_in_flight_to_one_crm_never_exceed_the_limit(app, distributing):
    """A Sync now sending on two lanes and pushes at the same time: at most SYNC_PARALLEL_BATCHES in flight."""
    crm, iid, org = distributing["crm"], distributing["integration_id"], distributing["org_id"]
    configure(app, iid, marketing_automation=True, enabled=True)
    assert app.config["SYNC_PARALLEL_BATCHES"] == 2
    make_leads(app, org, 4000, prefix="bulk")
    pushed = [make_leads(app, org, 300, prefix=f"push{k}-", origin=LeadOrigin.distributed) for k in range(3)]
    crm.set_faults(per_record_ms=2)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_steps(app, iid, ["push_marketing_leads"])))
    thread.start()
    try:
        wait_for(lambda: crm.stats()["records"].get("lead", 0) > 0, 60,
                 "the run to send")
        pushes = [run_steps(app, iid, kind="push", lead_ids=ids) for ids in pushed]
    finally:
        thread.join(180)
    crm.clear_faults()
    assert result["status"] == "finished" and all(p["status"] == "finished" for p in pushes), (result, pushes)
    peak = crm.stats()["executemultiple_peak"]
    print(f"max batches in flight: {peak}")
    assert 1 <= peak <= 2


def test_server_busy_halves_the_limit_of_the_integration_for_the_next_runs(app, distributing):
    """After Server Busy the integration sends one batch at a time, in this run and the next, then climbs back."""
    from portal.sync import inflight

    crm, iid, org = distributing["crm"], distributing["integration_id"], distributing["org_id"]
    configure(app, iid, marketing_automation=True, enabled=True)
    make_leads(app, org, 4000, prefix="busy")
    crm.set_faults(per_record_ms=1, max_concurrent_executemultiple=1)
    first = run_steps(app, iid, ["push_marketing_leads"])
    assert first["status"] == "finished", first
    busy_after_first = sum(crm.stats()["faults"].values())
    assert busy_after_first > 0  # two lanes met a CRM that takes one batch at a time
    with app.app_context():
        assert inflight.current_limit(iid) == 1  # kept for the integration, not for one write
    make_leads(app, org, 4000, prefix="busy-again", start=4000)
    second = run_steps(app, iid, ["push_marketing_leads"])
    assert second["status"] == "finished", second
    assert sum(crm.stats()["faults"].values()) == busy_after_first  # the next run did not overrun the CRM
    crm.clear_faults()
    with app.app_context():
        slots = inflight.Slots(iid)
        for _ in range(inflight.CLIMB_AFTER):
            slots.good()
        assert inflight.current_limit(iid) == 2  # a run of good answers brings it back up
