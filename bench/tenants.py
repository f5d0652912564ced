"""Many tenants on many workers: T integrations × L leads with events, all due at once, one tenant's CRM hung.

PostgreSQL, Redis, the sandbox CRM over real NTLM (taking a set time per record), and real worker processes
(``python -m jobs.worker --processes W`` on the nightly queues, one more for pushes). Every integration's run is
queued at the same moment, the hung tenant's first; meanwhile other tenants' leads are pushed one by one. Prints,
per number of workers: total time, records/s, speed-up, finish-time spread, worker peak RSS, the most batches in
flight per CRM (sampled in Redis; never above SYNC_PARALLEL_BATCHES) and the other tenants' push latency.

    .venv/bin/python bench/tenants.py                   # 40 × 300 leads × 2 events, 5 ms a record, 1/2/4 workers
    .venv/bin/python bench/tenants.py --quick           # 6 × 100 leads × 1 event, 2 ms a record, 1/2 workers
    .venv/bin/python bench/tenants.py --tenants 10 --workers 1,2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import partner_with_integration, percentile, stack, wait_for  # noqa: E402
from tests.integration.holding_proxy import HoldingProxy  # noqa: E402


def make_leads(app, org_id: int, n: int, events: int, prefix: str) -> list[int]:
    """``n`` leads of a partner, each with ``events`` events."""
    from datetime import UTC, datetime, timedelta

    from portal.extensions import db
    from portal.platform_models import Lead, LeadOrigin, MarketingEvent, normalize_email

    when = datetime(2026, 3, 1, tzinfo=UTC)
    with app.app_context():
        leads = [Lead(organization_id=org_id, email=f"{prefix}{i}@example.net",
                      email_normalized=normalize_email(f"{prefix}{i}@example.net"), first_name="F", last_name="L",
                      company="C", score=80, origin=LeadOrigin.marketing) for i in range(n)]
        db.session.add_all(leads)
        db.session.flush()
        db.session.add_all([MarketingEvent(organization_id=org_id, lead_id=ld.id, event_type="email_click",
                                           occurred_at=when + timedelta(minutes=k)) for ld in leads
                            for k in range(events)])
        db.session.commit()
        return [ld.id for ld in leads]


def tree_rss(proc: psutil.Process) -> dict[int, int]:
    """RSS of a process and its children, by pid."""
    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            out[p.pid] = p.memory_info().rss
    return out


def one_round(st, args, workers: int, round_no: int) -> dict:
    """Queue every tenant's run at once on ``workers`` worker processes; measure until all but the hung are done."""
    from sqlalchemy import select

    from portal import queues
    from portal.extensions import db
    from portal.models import CrmIntegration
    from portal.platform_models import Lead, RunStatus, SyncRun
    from portal.schedule import start_run
    from portal.sync import inflight

    crm = st.sandbox
    crm.reset(seed=False, platform_option=True)
    crm.set_faults(per_record_ms=args.per_record_ms)
    proxy = HoldingProxy(crm.org_url)
    tenants, push_leads = [], []
    for t in range(args.tenants):
        org, iid = partner_with_integration(st, f"Partner {round_no}-{t}", marketing_automation=True)
        make_leads(st.app, org, args.leads, args.events, f"r{round_no}t{t}-")
        push_leads.append((iid, make_leads(st.app, org, 3, 0, f"r{round_no}t{t}-push-")))
        tenants.append(iid)
    _, hung = partner_with_integration(st, f"Hung {round_no}", marketing_automation=True)
    with st.app.app_context():
        integ = db.session.get(CrmIntegration, hung)
        integ.org_url = proxy.url(crm.org_url)
        db.session.commit()
    with st.app.app_context():
        make_leads(st.app, db.session.get(CrmIntegration, hung).organization_id, 1500, 0, f"r{round_no}hung-")
    pool = st.start_worker_args(["--queues", "default,nightly", "--processes", str(workers), "--no-scheduler"])
    st.start_worker_args(["--queues", "connection-tests,push"])  # pushes never wait behind nightly work
    if workers > 1:
        wait_for(lambda: len(pool.children()) == workers, 60, what="the pool's workers")
    time.sleep(2)  # the workers import and connect
    peaks: dict[int, int] = {}
    inflight_max = {"per_crm": 0}
    stop = threading.Event()

    def sample() -> None:
        with st.app.app_context():
            conn = queues.redis()
            keys = [inflight._key(i) for i in tenants + [hung]]
            while not stop.is_set():
                for pid, rss in tree_rss(pool).items():
                    if pid != pool.pid or workers == 1:  # a pool's parent only watches its workers
                        peaks[pid] = max(peaks.get(pid, 0), rss)
                pipe = conn.pipeline(transaction=False)
                now = time.time()
                for key in keys:
                    pipe.zcount(key, now, "+inf")
                inflight_max["per_crm"] = max([inflight_max["per_crm"], *pipe.execute()])
                time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with st.app.app_context():
        # The hung tenant's run gets a short time limit here (production: from its size) so the round ends.
        st.app.config.update(SYNC_RUN_TIMEOUT_BASE=args.hung_timeout, SYNC_SECONDS_PER_RECORD=0)
        start_run(db.session.get(CrmIntegration, hung), "manual", trigger="bench")
        st.app.config.update(SYNC_RUN_TIMEOUT_BASE=900, SYNC_SECONDS_PER_RECORD=0.5)
        run_ids = [start_run(db.session.get(CrmIntegration, iid), "manual", trigger="bench").id for iid in tenants]
    latencies = []
    wait_for(lambda: proxy.held > 0, 60, what="the hung tenant's run to hang")
    for iid, lead_ids in push_leads[: args.pushes]:
        email_start = time.monotonic()
        with st.app.app_context():
            start_run(db.session.get(CrmIntegration, iid), "push", lead_ids=lead_ids[:1], trigger="bench")
            email = db.session.get(Lead, lead_ids[0]).email
        wait_for(lambda e=email: crm.records("lead", email=e), 60, interval=0.02, what=f"the push of {email}")
        latencies.append(time.monotonic() - email_start)

    def done() -> list:
        with st.app.app_context():
            rows = db.session.execute(select(SyncRun.status, SyncRun.finished_at).where(
                SyncRun.id.in_(run_ids))).all()
            db.session.rollback()
            return rows if all(s in (RunStatus.finished, RunStatus.partial, RunStatus.failed) for s, _ in rows) \
                else []

    rows = wait_for(done, 3600, interval=0.5, what="every tenant's run")
    total = time.monotonic() - started
    stop.set()
    sampler.join(5)
    with st.app.app_context():
        first = db.session.scalar(select(SyncRun.created_at).where(SyncRun.id == run_ids[0]))
        failed = sum(1 for s, _ in rows if s == RunStatus.failed)
    finishes = sorted((f - first).total_seconds() for _, f in rows)
    st.stop_workers()
    proxy.close()
    records = args.tenants * args.leads * (1 + args.events)
    return {"workers": workers, "total": total, "records": records, "rate": records / total,
            "spread": finishes[-1] - finishes[0], "peak_rss": max(peaks.values() or [0]),
            "in_flight": inflight_max["per_crm"], "em_peak": crm.stats()["executemultiple_peak"],
            "latencies": latencies, "failed": failed}


def idle_rss(st) -> tuple[int, list[tuple[str, int]]]:
    """One idle worker (all queues, with its scheduler): its RSS, and its process tree's."""
    proc = st.start_worker_args([])
    time.sleep(6)
    parts = [(" ".join(p.cmdline()[-3:]), p.memory_info().rss) for p in [proc, *proc.children(recursive=True)]]
    st.stop_workers()
    return sum(r for _, r in parts), parts


def main() -> None:
    """Run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 × 100 leads × 1 event, 2 ms a record, 1/2 workers")
    parser.add_argument("--tenants", type=int, default=0)
    parser.add_argument("--leads", type=int, default=0)
    parser.add_argument("--events", type=int, default=-1)
    parser.add_argument("--workers", default="")
    parser.add_argument("--per-record-ms", type=int, default=0)
    parser.add_argument("--hung-timeout", type=int, default=0, help="the hung tenant's run's time limit (s)")
    parser.add_argument("--pushes", type=int, default=0, help="other tenants' pushes during the round")
    args = parser.parse_args()
    args.tenants = args.tenants or (6 if args.quick else 40)
    args.leads = args.leads or (100 if args.quick else 300)
    args.events = args.events if args.events >= 0 else (1 if args.quick else 2)
    counts = [int(w) for w in (args.workers or ("1,2" if args.quick else "1,2,4")).split(",")]
    args.per_record_ms = args.per_record_ms or (2 if args.quick else 5)
    args.hung_timeout = args.hung_timeout or (15 if args.quick else 60)
    args.pushes = args.pushes or min(args.tenants, 5)
    print(f"{args.tenants} tenants × {args.leads} leads × {args.events} events, {args.per_record_ms} ms a record, "
          f"one hung tenant (time limit {args.hung_timeout} s), workers {counts}")
    with stack() as st:
        total, parts = idle_rss(st)
        print(f"idle worker: {total / 2**20:.0f} MB in {len(parts)} process(es): "
              + ", ".join(f"{name} {rss / 2**20:.0f} MB" for name, rss in parts))
        print(f"{'workers':>7} {'total s':>8} {'rec/s':>7} {'speed-up':>8} {'spread s':>8} {'peak MB':>8} "
              f"{'in flight':>9} {'push p50/max s':>15}", flush=True)
        results = []
        for n, w in enumerate(counts):
            r = one_round(st, args, w, n)
            results.append(r)
            lat = r["latencies"]
            print(f"{r['workers']:>7} {r['total']:>8.1f} {r['rate']:>7.0f} {results[0]['total'] / r['total']:>8.2f} "
                  f"{r['spread']:>8.1f} {r['peak_rss'] / 2**20:>8.0f} {r['in_flight']:>9} "
                  f"{statistics.median(lat):>7.2f}/{max(lat):<7.2f}"
                  + (f"  ({r['failed']} runs failed)" if r["failed"] else ""), flush=True)
    print("in flight: the most batches one integration had in the CRM at once (Redis, sampled every 50 ms); the "
          f"sandbox saw at most {max(r['em_peak'] for r in results)} at once, all tenants together.")
    print(f"push p95 over all rounds: {percentile(sorted(x for r in results for x in r['latencies']), 95):.2f} s")


if __name__ == "__main__":
    main()
