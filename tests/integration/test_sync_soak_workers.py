"""Soak: three workers, every kind of run on one integration at once, a hung tenant beside it.

Pushes, Sync now, Retry all and backoff retries of one integration overlap while the CRM fails now and then;
another tenant's CRM holds every write. When it settles: every lead and every event in the CRM exactly once, no
run left running or waiting, no job lost, never more batches in flight than allowed.
"""

from __future__ import annotations

import time

from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select

from portal import ledger, queues
from portal.extensions import db
from portal.models import CrmIntegration
from portal.platform_models import LeadOrigin, RunStatus, SyncFailure, SyncRun
from portal.schedule import start_run

from .holding_proxy import HoldingProxy
from .sync_helpers import (
    configure,
    emails_in_crm,
    event_ids,
    make_leads,
    note_refs,
    start_worker,
    stop_worker,
    wait_for,
)
from .test_tenants_isolated import tenant

SOAK_WORKERS = [["--queues", "connection-tests,push"], ["--queues", "default,nightly", "--no-scheduler"],
                ["--queues", "push,nightly", "--no-scheduler"]]


def start(app, iid: int, kind: str, **kw) -> int:
    with app.app_context():
        return start_run(db.session.get(CrmIntegration, iid), kind, trigger="soak", **kw).id


def bring_scheduled_forward(app) -> int:
    """Backoff retries are minutes away: move them onto their queue now (time passing; tonight's runs stay put)."""
    moved = 0
    with app.app_context():
        q = queues.queue(queues.QUEUE_PUSH)
        registry = ScheduledJobRegistry(queue=q)
        for job_id in registry.get_job_ids():
            job = q.fetch_job(job_id)
            if job is not None and job.func_name == "jobs.sync.run":
                registry.remove(job_id)
                q.enqueue_job(job)
                moved += 1
    return moved


def open_runs(app, iid: int) -> list:
    with app.app_context():
        return list(db.session.execute(select(SyncRun.id, SyncRun.kind, SyncRun.status).where(
            SyncRun.integration_id == iid, SyncRun.status.in_([RunStatus.queued, RunStatus.running]))))


def test_every_record_once_with_three_workers_and_a_hung_tenant(app, factory, crm, tmp_path):
    crm.reset(seed=False, platform_option=True)
    proxy = HoldingProxy(crm.org_url)
    org_h, hung = tenant(app, factory, crm, "Hung Partner", proxy.url)
    make_leads(app, org_h, 1500, prefix="hung")
    org, iid = tenant(app, factory, crm, "Soak Partner")
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, event_types=["email_click"])
    marketing = make_leads(app, org, 700, prefix="ma", events=("email_click",))
    distributed = make_leads(app, org, 300, prefix="ld", origin=LeadOrigin.distributed, events=("email_click",),
                             start=700)
    crm.set_faults(per_record_ms=1, http500_every_nth=40)  # now and then a request fails as a whole
    app.config.update(SYNC_RUN_TIMEOUT_BASE=25, SYNC_SECONDS_PER_RECORD=0)  # the hung tenant's run ends at 25 s
    workers = [start_worker(app, tmp_path / f"worker{i}.log", *args, env={"SYNC_WAIT_SECONDS": "1"})
               for i, args in enumerate(SOAK_WORKERS)]
    began = time.monotonic()
    try:
        start(app, hung, "manual")
        app.config.update(SYNC_RUN_TIMEOUT_BASE=900, SYNC_SECONDS_PER_RECORD=0.5)
        start(app, iid, "manual")  # Sync now
        for k in range(6):  # distributed leads pushed as they arrive, 50 at a time
            start(app, iid, "push", lead_ids=distributed[k * 50:(k + 1) * 50])
            if k == 2:
                start(app, iid, "retry")  # Retry all, while the rest goes on
        time.sleep(0.2)
        start(app, iid, "retry")

        def settled() -> bool:
            bring_scheduled_forward(app)
            return not open_runs(app, iid)

        wait_for(settled, 60, "every run of the integration to finish")
        crm.clear_faults()
        # What failed now and then is retried (the backoff's retry, brought forward), then one last Sync now.
        with app.app_context():
            pending = db.session.scalar(select(func.count()).select_from(SyncFailure).where(
                SyncFailure.integration_id == iid, SyncFailure.status == "pending"))
        if pending:
            start(app, iid, "retry")
        start(app, iid, "manual")
        wait_for(settled, 60, "the last runs to finish")
        wait_for(lambda: not open_runs(app, hung), 40, "the hung tenant's run to end at its time limit")
    finally:
        for worker in workers:
            stop_worker(worker, kill=True)
        proxy.close()
    elapsed = time.monotonic() - began
    counts = emails_in_crm(crm)
    ours = {e: n for e, n in counts.items() if not e.startswith("hung")}
    refs = note_refs(crm)
    peak = crm.stats()["executemultiple_peak"]
    with app.app_context():
        runs = list(db.session.execute(select(SyncRun.kind, SyncRun.status, func.count()).where(
            SyncRun.integration_id == iid).group_by(SyncRun.kind, SyncRun.status)))
        hung_run = db.session.scalar(select(SyncRun).where(SyncRun.integration_id == hung))
        failed_jobs = sum(len(queues.queue(n).failed_job_registry) for n in queues.ALL_QUEUES)
    print(f"\nsoak: {len(ours)} leads in the CRM (max {max(ours.values())} each), {len(refs)} notes "
          f"(max {max(refs.values())} each), runs {[(k, s.value, n) for k, s, n in runs]}, "
          f"max in flight {peak}, {elapsed:.0f} s")
    assert len(ours) == 1000 and set(ours.values()) == {1}
    assert set(refs) == set(event_ids(app, marketing + distributed)) and set(refs.values()) == {1}
    with app.app_context():  # why a run did not finish, should one not
        ended = list(db.session.scalars(select(SyncRun).where(
            SyncRun.integration_id == iid, SyncRun.status.not_in([RunStatus.finished, RunStatus.partial]))))
        # A small retry whose only batch met the now-and-then 500 failed every record it tried: that is
        # "failed" too, but it ran to its end (its records wait for the next retry); no run was stopped.
        said = [(run.id, run.kind, run.status.value, run.message) for run in ended if ledger.stopped(run)
                or run.status != RunStatus.failed]
    assert not said, (runs, said)
    assert hung_run.status == RunStatus.failed and "time limit" in hung_run.message
    assert failed_jobs <= 1  # the hung tenant's job, ended by its timeout; no other job lost
    assert peak <= 2
