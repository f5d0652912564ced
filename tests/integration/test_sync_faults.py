"""The engine under faults: bad records, transient faults, authentication failures, two runs at once."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from portal import sync
from portal.connectors.dynamics import webapi
from portal.connectors.dynamics.soap import CreateRequest
from portal.connectors.dynamics.xml import OptionSetValue
from portal.extensions import db
from portal.models import CrmIntegration, Notice
from portal.platform_models import LeadOrigin, RunStatus, SyncRun
from portal.sync import mapping

from .sync_helpers import (
    add_event,
    configure,
    emails_in_crm,
    event_ids,
    failures,
    make_leads,
    note_refs,
    run_steps,
    use_online,
    wait_for,
)


def banner(app, integration_id: int) -> str:
    """The error code of the banner under the integration's listing row ("" when there is none)."""
    with app.app_context():
        code = db.session.get(CrmIntegration, integration_id).error_code
        db.session.remove()
    return code or ""


@pytest.fixture
def ready(connected):
    """An empty sandbox (with the platform's lead source) and an integration that pushes distributed leads."""
    connected["crm"].reset(seed=False, platform_option=True)
    return connected


def test_one_bad_record_never_sinks_its_batch(app, ready, monkeypatch):
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, event_types=["email_click"])
    ids = make_leads(app, org, 6, prefix="batch", events=("email_click",))
    real = mapping.lead_attributes

    def one_bad(lead, entity, **kwargs):
        attrs = real(lead, entity, **kwargs)
        if lead.email == "batch3@example.net":
            attrs["leadsourcecode"] = OptionSetValue(424242)  # not an option of Lead Source: the CRM refuses it
        return attrs

    monkeypatch.setattr(mapping, "lead_attributes", one_bad)
    run = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert run["status"] == "partial", run
    assert run["steps"]["push_marketing_leads"]["created"] == 5
    assert run["steps"]["push_marketing_leads"]["failed"] == 1
    assert set(emails_in_crm(crm)) == {f"batch{i}@example.net" for i in range(6) if i != 3}
    (bad,) = failures(app, iid)
    assert (bad["local_type"], bad["local_id"], bad["operation"], bad["entity"]) == ("lead", ids[3], "create", "lead")
    assert "424242" in bad["message"] and bad["action"] and bad["raw"]
    assert bad["retryable"] is False and bad["next_attempt_at"] is None
    # The notes of the five good leads went; the bad lead's event waits for its lead.
    assert len(note_refs(crm)) == 5
    # Once the record is corrected, a retry run creates it and resolves the failure.
    monkeypatch.setattr(mapping, "lead_attributes", real)
    retry = run_steps(app, iid, kind="retry")
    assert retry["status"] == "finished", retry
    assert emails_in_crm(crm)["batch3@example.net"] == 1 and len(note_refs(crm)) == 6
    assert failures(app, iid) == [] and failures(app, iid, "resolved")[0]["local_id"] == ids[3]


def test_a_note_on_a_lead_deleted_in_the_crm_fails_alone(app, ready):
    from portal.connection import config_for
    from portal.connectors.dynamics import OrganizationService, Transport

    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, event_types=["email_click", "form_submission"])
    ids = make_leads(app, org, 3, prefix="del", events=("email_click",))
    run_steps(app, iid, ["push_marketing_leads", "push_events"])
    new = [add_event(app, lead_id, "form_submission") for lead_id in ids]
    gone = crm.records("lead", email="del1@example.net")[0]["leadid"]
    with app.app_context():
        svc = OrganizationService(Transport(config_for(db.session.get(CrmIntegration, iid))))
        svc.delete("lead", gone)
        svc.transport.close()
    run = run_steps(app, iid, ["push_events"])
    assert run["status"] == "partial" and run["steps"]["push_events"]["created"] == 2
    (failed,) = failures(app, iid)
    assert failed["local_id"] == new[1] and failed["code"] == "not_found" and failed["retryable"] is False
    refs = note_refs(crm)
    assert refs[new[0]] == refs[new[2]] == 1 and new[1] not in refs
    # Item 12: not failed again every night: the lead is created again, with its events, and the failure resolved.
    again = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert again["status"] == "finished" and failures(app, iid) == [], again
    (lead,) = crm.records("lead", email="del1@example.net")
    assert lead["leadid"] != gone and note_refs(crm)[new[1]] == 1
    assert set(note_refs(crm).values()) == {1}  # the deleted lead's notes went with it; each is there once


@pytest.mark.parametrize(("fault", "nth"), [("http500", 2), ("http500", 3), ("drop", 2), ("drop", 3), ("busy", 1)])
def test_transient_faults_are_retried_without_duplicates(app, ready, fault, nth):
    """Every nth CRM request fails: 2 hits the leads' batch, 3 the notes' batch; busy: every request, six tries."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, enabled=True)
    # email_open is not a selected event type: distributed leads carry all their events all the same (S6).
    ids = make_leads(app, org, 30, origin=LeadOrigin.distributed, prefix=f"tr{fault}",
                     events=("email_click", "email_open"))
    app.config["SYNC_PARALLEL_BATCHES"] = 1
    crm.set_faults(**{f"{fault}_ratio": 1.0}, every_nth=nth)
    first = run_steps(app, iid, kind="push", lead_ids=ids)
    crm.clear_faults()
    pending = failures(app, iid)
    # The leads' batch failing fails every record the run tried (failed); the notes' batch, only the notes (partial).
    assert first["status"] == ("partial" if nth == 3 else "failed"), first
    assert len(pending) == (30 if nth < 3 else 60), pending
    assert {f["local_type"] for f in pending} == ({"lead"} if nth < 3 else {"event"})
    assert all(f["retryable"] and f["next_attempt_at"] is not None for f in pending), pending
    assert {f["code"] for f in pending} == {{"http500": "server_error", "drop": "unreachable",
                                              "busy": "server_busy"}[fault]}
    # A run where every record failed raises the listing's banner (a run stopped by Server Busy says so);
    # one with some records through does not.
    raised = "" if nth == 3 else "server_busy" if fault == "busy" else "records_failed"
    assert banner(app, iid) == raised, banner(app, iid)
    # The retry run (what schedule_retry queues) completes them, and nothing is in the CRM twice.
    retry = run_steps(app, iid, kind="retry")
    assert retry["status"] == "finished", retry
    assert banner(app, iid) == ""  # and a run that goes through lowers it again
    catch_up = run_steps(app, iid, ["push_distributed_leads", "push_events"])  # nothing left over
    assert catch_up["created"] == 0
    counts = emails_in_crm(crm)
    assert set(counts) == {f"tr{fault}{i}@example.net" for i in range(30)} and set(counts.values()) == {1}
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, ids)) and set(refs.values()) == {1}
    assert failures(app, iid) == []


def test_busy_reads_and_writes_slow_down_and_finish(app, ready):
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True)
    make_leads(app, org, 20, prefix="slow")
    crm.set_faults(busy_ratio=1.0, every_nth=2)
    run = run_steps(app, iid, ["push_marketing_leads"])
    assert run["status"] == "finished", run
    assert set(emails_in_crm(crm).values()) == {1} and len(emails_in_crm(crm)) == 20


def test_online_run_with_a_fifth_of_answers_429_completes_with_every_record_once(app, ready):
    """Dynamics 365 online: service protection limits are waited out (Retry-After), never failed records."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    use_online(app, ready)
    configure(app, iid, marketing_automation=True, lead_distribution=True, ld_sync_supplier_leads=True,
              event_types=["email_click"])
    marketing = make_leads(app, org, 3000, prefix="tm", events=("email_click",))
    distributed = make_leads(app, org, 300, origin=LeadOrigin.distributed, prefix="td",
                             events=("email_click", "email_open"))
    crm.set_faults(throttle_ratio=0.2, every_nth=5, throttle_retry_after=1)  # every fifth request: 429
    run = run_steps(app, iid, ["push_marketing_leads", "push_distributed_leads", "push_events"])
    throttled = crm.stats()["faults"].get("throttle", 0)
    crm.clear_faults()
    assert run["status"] == "finished", run
    assert throttled >= 2  # a fifth of the requests were refused, and the run still finished
    assert failures(app, iid) == []
    counts = emails_in_crm(crm)
    assert len(counts) == 3300 and set(counts.values()) == {1}
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, marketing + distributed)) and set(refs.values()) == {1}


def online_gateways(app, ready, monkeypatch, count: int, parallel: int) -> list[sync.CrmGateway]:
    """``count`` gateways of one online integration, as ``count`` workers would each hold one.

    ``parallel`` is SYNC_PARALLEL_BATCHES. The connector's in-process throttles start afresh: the same
    integration id on the other database must not find this one's.
    """
    use_online(app, ready)
    app.config["SYNC_PARALLEL_BATCHES"] = parallel
    monkeypatch.setattr(webapi, "_THROTTLES", {})
    with app.app_context():
        integ = db.session.get(CrmIntegration, ready["integration_id"])
        gateways = [sync.CrmGateway(integ, parallel) for _ in range(count)]
        db.session.remove()
    return gateways


def lead_creates(prefix: str, n: int) -> list[CreateRequest]:
    """Creates of ``n`` leads, one email each."""
    return [CreateRequest("lead", {"lastname": f"Last{i}", "emailaddress1": f"{prefix}{i}@example.net"})
            for i in range(n)]


def test_the_limit_is_the_least_of_the_setting_the_halving_and_the_hint_and_halves_once_a_window(app, ready):
    """Slots of two workers: the CRM's hint caps the limit, never above the setting; a burst halves it once."""
    from portal.sync import inflight

    iid = ready["integration_id"]
    app.config["SYNC_PARALLEL_BATCHES"] = 4
    with app.app_context():
        one, other = inflight.Slots(iid), inflight.Slots(iid)
    one.hint(8)
    assert other.limit() == 4  # a hint above the setting: the setting
    assert one.busy(0.5) and other.limit() == 2
    assert not other.busy(0.5) and not one.busy() and other.limit() == 2  # the same burst: halved once
    started = time.monotonic()
    wait_for(other.busy, 5, "the window of the first halving to end")
    assert time.monotonic() - started >= 0.4 and one.limit() == 1
    one.hint(3)
    token = other.acquire(1)
    with pytest.raises(inflight.NoSlot):  # one in flight: the most while halved twice
        one.acquire(0.2)
    other.release(token)
    for expected in (2, 3, 3):  # climbs back a step per run of good answers, to the hint (below the setting)
        for _ in range(inflight.CLIMB_AFTER):
            one.good()
        assert other.limit() == expected
    assert not one.conn.exists(f"portal:busy-limit:{iid}")  # the halving is over; the hint alone caps
    one.hint(1)
    token = one.acquire(1)
    with pytest.raises(inflight.NoSlot):
        other.acquire(0.2)
    one.release(token)


def test_a_burst_of_429s_met_by_one_worker_halves_the_limit_every_worker_uses_once(app, ready, monkeypatch):
    """Dynamics 365 online: 429s lower the integration's limit in Redis at once, once per Retry-After window.

    One worker's four batches meet a CRM that takes two requests at a time: two are refused together. The
    other worker (its own gateway) then finds the limit halved, once for the burst, not once per refusal (that
    would leave 1), and so does the worker's own throttle; the refused batches still wait out Retry-After and go
    again, two at once, which the CRM takes, and every record is there once.
    """
    crm = ready["crm"]
    first, other = online_gateways(app, ready, monkeypatch, 2, 4)
    try:
        first.service().who_am_i()
        assert other.slots.limit() == 4
        first.writer.batch_size = 25
        # A second for each request: the four lanes' batches are in the CRM's hands together even when a lane
        # starts late (it opens its own session first).
        crm.set_faults(max_concurrent_requests=2, latency_ms=1000, throttle_retry_after=2)
        started = time.monotonic()
        results = first.write(lead_creates("burst", 100))  # four batches at once
        took = time.monotonic() - started
        throttled = crm.stats()["faults"].get("throttle", 0)
        limit = other.slots.limit()
        own_limit = first.service().throttle.limit
    finally:
        first.close()
        other.close()
        crm.clear_faults()
    assert [r.ok for r in results] == [True] * 100, [r.error for r in results if not r.ok][:3]
    assert throttled >= 2  # several batches were refused in one burst
    assert took >= 2  # and waited out Retry-After before going again
    assert limit == 2  # every worker's limit, halved once for the burst
    assert own_limit == 2  # and the worker's own, once too
    counts = emails_in_crm(crm)
    assert len(counts) == 100 and set(counts.values()) == {1}


def test_the_dop_hint_caps_the_batches_in_flight_of_every_worker(app, ready, monkeypatch):
    """x-ms-dop-hint below SYNC_PARALLEL_BATCHES: two workers writing at once never have more batches in flight."""
    crm = ready["crm"]
    gateways = online_gateways(app, ready, monkeypatch, 2, 4)
    crm.set_faults(dop_hint=2, latency_ms=200)
    results: dict[int, list] = {}
    try:
        for gateway in gateways:
            gateway.writer.batch_size = 20
            gateway.service().who_am_i()  # a worker's first answer names the hint (a run reads before it writes)
        assert [g.slots.limit() for g in gateways] == [2, 2]
        threads = [threading.Thread(target=lambda k=k, g=g: results.update({k: g.write(lead_creates(f"dop{k}-", 160))}))
                   for k, g in enumerate(gateways)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        peak = crm.stats()["batch_peak"]
    finally:
        for gateway in gateways:
            gateway.close()
        crm.clear_faults()
    assert sorted(results) == [0, 1] and all(r.ok for k in results for r in results[k])
    print(f"most $batch requests in flight: {peak} (hint 2, SYNC_PARALLEL_BATCHES 4)")
    assert peak == 2  # up to the hint, never beyond it
    counts = emails_in_crm(crm)
    assert len(counts) == 320 and set(counts.values()) == {1}


@pytest.mark.parametrize("kind", ["onprem", "online"])
def test_auth_failure_stops_the_run_and_switches_off_after_the_limit(app, ready, kind):
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, enabled=True, auth_failure_limit=3)
    make_leads(app, org, 3, prefix="auth")
    if kind == "online":
        use_online(app, ready)
        # The client secret was rotated in Microsoft Entra ID (and the portal still has the old one).
        crm.register_app(crm.client_id, tenant_id=crm.tenant_id, client_secret="Rotated-Secret-2")
    else:
        crm.set_faults(password_changed_user=crm.username)
    for attempt in (1, 2, 3):
        run = run_steps(app, iid, kind="nightly")
        assert run["status"] == "failed" and run["created"] == 0, run
        assert "What to do" in run["message"]
        # Stopped at the first step that talks to the CRM (the two before it are Off); nothing after it ran.
        assert list(run["steps"]) == ["pull_records", "contact_lists", "push_marketing_leads"]
        assert run["steps"]["push_marketing_leads"]["status"] == "failed"
        with app.app_context():
            integ = db.session.get(CrmIntegration, iid)
            assert integ.error_code == "auth_failed" and integ.auth_failures == attempt
            assert integ.enabled is (attempt < 3)
            notices = db.session.scalars(select(Notice).where(Notice.organization_id == org)).all()
            assert len(notices) == (1 if attempt == 3 else 0)
    assert "switched Off" in notices[0].message
    assert crm.records("lead") == []
    crm.clear_faults()
    crm.register_app(crm.client_id, tenant_id=crm.tenant_id, client_secret=crm.client_secret)
    run = run_steps(app, iid, ["push_marketing_leads"])
    assert run["status"] == "finished"
    with app.app_context():
        integ = db.session.get(CrmIntegration, iid)
        assert integ.error_code == "" and integ.auth_failures == 0


def test_a_second_run_while_one_holds_the_lock_waits_and_says_so(app, ready):
    iid = ready["integration_id"]
    configure(app, iid, marketing_automation=True)
    with app.app_context():
        integ = db.session.get(CrmIntegration, iid)
        holder = sync.new_run(integ, "nightly", trigger="test")
        with sync.integration_lock(iid, "nightly", holder.id) as got:
            assert got
            holder.status = RunStatus.running
            db.session.commit()
            assert sync.run_alive(holder)
            second = sync.execute(sync.new_run(integ, "manual", trigger="test").id)
            assert second.status == RunStatus.queued  # it waits for the holder (its job comes back)
            assert "another run of this integration is in progress" in second.message
            assert second.finished_at is None and second.steps == []
            # Pushes have their own lock: a distributed lead is not held up by a nightly run.
            push = sync.execute(sync.new_run(integ, "push").id, lead_ids=[])
            assert push.status == RunStatus.finished
            assert db.session.get(SyncRun, holder.id).status == RunStatus.running  # a live run is left alone
        assert not sync.run_alive(holder)  # the lock is released
        third = sync.execute(sync.new_run(integ, "manual", trigger="test").id, steps=["push_marketing_leads"])
        assert third.status == RunStatus.finished
        stale = db.session.get(SyncRun, holder.id)
        assert stale.status == RunStatus.failed and "worker stopped" in stale.message


def test_a_lock_left_by_a_dead_holder_expires(app, ready):
    from portal import queues

    iid = ready["integration_id"]
    configure(app, iid, marketing_automation=True)
    app.config["SYNC_LOCK_SECONDS"] = 1
    with app.app_context():
        # What a SIGKILLed worker leaves: its lock, no one to extend it.
        queues.redis().set(sync.lock_name(iid, "manual"), "run-999999", px=1000)
        integ = db.session.get(CrmIntegration, iid)
        waiting = sync.execute(sync.new_run(integ, "manual").id, steps=["push_marketing_leads"])
        assert waiting.status == RunStatus.queued
        wait_for(lambda: queues.redis().get(sync.lock_name(iid, "manual")) is None, 5, "the lock to expire")
        ok = sync.execute(waiting.id, steps=["push_marketing_leads"])  # its job, come back
        assert ok.status == RunStatus.finished


def test_a_live_run_keeps_its_lock_beyond_the_timeout(app, ready):
    import time

    from portal import queues

    iid = ready["integration_id"]
    app.config["SYNC_LOCK_SECONDS"] = 1
    with app.app_context(), sync.integration_lock(iid, "manual", 7) as got:
        assert got
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # the heartbeat extends it every third of the timeout
            assert queues.redis().get(sync.lock_name(iid, "manual")) == b"run-7"
            time.sleep(0.1)
