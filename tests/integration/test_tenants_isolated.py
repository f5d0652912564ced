"""One tenant's hung CRM holds no one else up: other tenants' pushes and connection tests go through at once."""

from __future__ import annotations

import time

from portal import queues
from portal.extensions import db
from portal.models import BackgroundJob, CrmIntegration, JobStatus
from portal.platform_models import RunStatus, SyncRun
from portal.schedule import start_run
from portal.serve import WORKERS

from .holding_proxy import HoldingProxy
from .sync_helpers import configure, make_leads, run_steps, start_worker, stop_worker, wait_for


def tenant(app, factory, crm, name: str, url=lambda u: u) -> tuple[int, int]:
    """A partner with its integration On, connected to the sandbox (through ``url``); (org id, integration id)."""
    org = factory.org(name)
    iid = factory.integration(org, password=crm.password, username=crm.username, domain=crm.domain,
                              org_url=url(crm.org_url), odata_url=url(crm.webapi_url))
    configure(app, iid, marketing_automation=True, enabled=True)
    return org, iid


def test_a_hung_crm_holds_up_no_other_tenant(app, factory, crm, tmp_path):
    """Tenant A's CRM holds every write; B's and C's pushes reach their CRM within 2 s, B's test runs as usual."""
    crm.reset(seed=False, platform_option=True)
    proxy = HoldingProxy(crm.org_url)
    org_a, hung = tenant(app, factory, crm, "Hung Partner", proxy.url)
    others = [tenant(app, factory, crm, name) for name in ("Busy Partner", "Calm Partner")]
    make_leads(app, org_a, 1500, prefix="hung")
    a_push = make_leads(app, org_a, 1, prefix="hung-push", start=5000)
    pushes = [(iid, make_leads(app, org, 1, prefix=f"push-{org}-")) for org, iid in others]
    workers = [start_worker(app, tmp_path / f"worker{i}.log", *args) for i, args in enumerate(WORKERS)]
    try:
        with app.app_context():
            nightly = start_run(db.session.get(CrmIntegration, hung), "manual", trigger="test").id
        wait_for(lambda: proxy.held >= 2, 60, "the hung tenant's run to be stuck on both lanes")
        with app.app_context():
            start_run(db.session.get(CrmIntegration, hung), "push", lead_ids=a_push, trigger="test")
        latencies = []
        org_of = {iid: org for org, iid in others}
        for iid, (lead_id,) in pushes:
            email = f"push-{org_of[iid]}-0@example.net"
            started = time.monotonic()
            with app.app_context():
                start_run(db.session.get(CrmIntegration, iid), "push", lead_ids=[lead_id], trigger="test")
            wait_for(lambda e=email: crm.records("lead", email=e), 10, f"the push of {email}")
            latencies.append(time.monotonic() - started)
        started = time.monotonic()
        with app.app_context():
            from portal import jobs_state

            job = jobs_state.enqueue("connection-test", "jobs.connection.run_test", queue_name=queues.QUEUE_TESTS,
                                     integration_id=others[0][1], args=(others[0][1], False), timeout=60).id

        def tested():
            with app.app_context():
                return db.session.get(BackgroundJob, job).status in (JobStatus.finished, JobStatus.failed)

        wait_for(tested, 15, "the other tenant's connection test")
        test_seconds = time.monotonic() - started
        print(f"other tenants' push latency: {[round(s, 2) for s in latencies]} s; connection test "
              f"{test_seconds:.1f} s")
        assert max(latencies) < 2.0, latencies
        with app.app_context():
            assert db.session.get(SyncRun, nightly).status == RunStatus.running  # still stuck: A only
    finally:
        for worker in workers:
            stop_worker(worker, kill=True)
        proxy.close()


def test_a_push_worker_keeps_sessions_for_a_bounded_number_of_tenants(app, factory, crm):
    """Pushes of many tenants through one worker: the least recently used CRM sessions are closed past the cap."""
    from portal.sync import engine

    for iid in list(engine._KEPT):
        engine.drop_kept_gateway(iid)
    crm.reset(seed=False, platform_option=True)
    app.config["SYNC_KEPT_GATEWAYS"] = 3
    tenants = [tenant(app, factory, crm, f"Pushing Partner {k}") for k in range(6)]
    kept = {}
    try:
        for org, iid in tenants:
            (lead_id,) = make_leads(app, org, 1, prefix=f"kept-{org}-")
            assert run_steps(app, iid, kind="push", lead_ids=[lead_id])["status"] == "finished"
            kept[iid] = engine._KEPT[iid][1]
        assert list(engine._KEPT) == [iid for _, iid in tenants[-3:]]  # the three used last
        for _, iid in tenants[:3]:  # the others' sessions (and their sockets) are closed, not left to linger
            for transport in kept[iid]._transports:
                assert not transport.session.adapters["http://"].poolmanager.pools
        # A push of a tenant whose session was closed opens a new one and goes through.
        org, iid = tenants[0]
        (lead_id,) = make_leads(app, org, 1, prefix=f"kept-again-{org}-", start=10)
        assert run_steps(app, iid, kind="push", lead_ids=[lead_id])["status"] == "finished"
        assert len(engine._KEPT) == 3 and iid in engine._KEPT
    finally:
        for iid in list(engine._KEPT):
            engine.drop_kept_gateway(iid)
