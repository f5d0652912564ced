"""Nightly push benchmark: marketing leads over the threshold with 5 events each, pushed by a real worker.

Prints, per size and CRM latency: records per second, HTTP requests per record written, SQL statements per
record, worker CPU seconds per 1,000 records and the worker's peak RSS; then the same work one request per
record (what most integrations do) and the ratio; then the gain from parallel ExecuteMultiple batches.

    .venv/bin/python bench/sync.py            # 1,000 / 10,000 / 100,000 leads at 0 and 20 ms
    .venv/bin/python bench/sync.py --quick    # small sizes, under a minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Stack, partner_with_integration, peak_rss_mb, stack, wait_for  # noqa: E402

EVENT_TYPES = ["email_click", "email_open", "form_submission", "web_plugin_view", "sms_click"]
STEPS = ["push_marketing_leads", "push_events"]


def seed(st: Stack, org_id: int, n: int) -> None:
    """N marketing leads over the threshold, each with 5 events (bulk inserts)."""
    from portal.extensions import db
    from portal.models import utcnow
    from portal.platform_models import Lead, MarketingEvent

    blank = {k: "" for k in ("job_title", "phone", "mobile_phone", "website", "address_line2", "state",
                             "description", "acceptance_via", "crm_status")}
    with st.app.app_context():
        now = utcnow()
        for start in range(0, n, 20000):
            rows = [dict(blank, organization_id=org_id, email=f"lead{i}@bench{org_id}.example",
                         email_normalized=f"lead{i}@bench{org_id}.example", origin="marketing", score=80,
                         first_name="Bench", last_name=f"Lead {i}", company=f"Company {i % 997}",
                         address_line1=f"{i} Main Street", city="Springfield", postal_code="12345", country="US",
                         custom_fields_json="{}", acceptance="pending", created_at=now, updated_at=now)
                    for i in range(start, min(n, start + 20000))]
            db.session.execute(Lead.__table__.insert(), rows)
            db.session.commit()
        last = 0
        while True:
            ids = db.session.scalars(db.select(Lead.id).where(Lead.organization_id == org_id, Lead.id > last)
                                     .order_by(Lead.id).limit(20000)).all()
            if not ids:
                break
            db.session.execute(MarketingEvent.__table__.insert(), [
                dict(organization_id=org_id, lead_id=lid, event_type=t, occurred_at=now, details="Bench event",
                     created_at=now) for lid in ids for t in EVENT_TYPES])
            db.session.commit()
            last = ids[-1]


def http_total(stats: dict, online: bool = False) -> int:
    """Every HTTP request the sandbox answered: NTLM handshake legs included, or token requests (online)."""
    if online:
        return stats["http"].get("webapi9", 0) + stats["http"].get("entra", 0)
    return sum(v for k, v in stats["requests"].items() if not k.startswith("webapi9")) + stats.get("ntlm_401", 0)


def one_case(st: Stack, n: int, latency_ms: int, *, one_per_record: bool = False, parallel: int = 2,
             per_record_ms: int = 0, online: bool = False) -> dict:
    """Seed, push with a fresh worker, and measure."""
    from rq.job import Job

    from portal import queues
    from portal.extensions import db
    from portal.models import CrmIntegration
    from portal.platform_models import SyncRun
    from portal.schedule import start_run

    st.sandbox.reset(seed=False, platform_option=True)
    st.sandbox.set_faults(latency_ms=latency_ms, per_record_ms=per_record_ms)
    org_id, integration_id = partner_with_integration(
        st, f"Bench {n} {latency_ms} {one_per_record} {parallel} {time.monotonic_ns()}",
        marketing_automation=True, ma_sync_leads=True, ma_score_threshold=50, online=online)
    with st.app.app_context():
        integ = db.session.get(CrmIntegration, integration_id)
        integ.event_types = EVENT_TYPES
        db.session.commit()
    seed(st, org_id, n)
    st.env.update({"SYNC_COUNT_SQL": "1", "SYNC_ONE_REQUEST_PER_RECORD": "1" if one_per_record else "0",
                   "SYNC_PARALLEL_BATCHES": str(parallel)})
    worker = st.start_worker(queues="nightly")
    with st.app.app_context():
        wait_for(lambda: queues.redis().smembers("rq:workers"), 20, what="the worker to start")
        before = st.sandbox.stats()
        cpu0 = sum(worker.cpu_times()[:2])
        run = start_run(db.session.get(CrmIntegration, integration_id), "manual", steps=STEPS, trigger="bench")
        run_id, job_id = run.id, run.job_id

        def finished():
            db.session.expire_all()
            row = db.session.get(SyncRun, run_id)
            return row if row.done else None

        row = wait_for(finished, 3600, interval=0.2, what="the run to finish")
        cpu = sum(worker.cpu_times()[:2]) - cpu0
        rss = peak_rss_mb(worker.pid)
        after = st.sandbox.stats()
        result = Job.fetch(job_id, connection=queues.redis()).return_value() or {}
    st.stop_workers()
    st.sandbox.clear_faults()
    written = row.created_count + row.updated_count
    seconds = (row.finished_at - row.started_at).total_seconds()
    http = http_total(after, online) - http_total(before, online)
    return {"n": n, "latency": latency_ms, "status": row.status.value, "written": written, "failed": row.failed_count,
            "seconds": seconds, "rps": written / seconds if seconds else 0, "http_per_record": http / max(1, written),
            "http": http, "sql_per_record": (result.get("sql_statements") or 0) / max(1, written),
            "cpu_per_1000": cpu / max(1, written) * 1000, "rss_mb": rss}


def show(title: str, rows: list[dict]) -> None:
    """Print a table of cases."""
    print(f"\n{title}")
    print(f"{'leads':>8} {'lat ms':>6} {'written':>8} {'failed':>6} {'seconds':>8} {'rec/s':>8} {'HTTP/rec':>9} "
          f"{'SQL/rec':>8} {'CPU s/1k':>8} {'peak RSS MB':>11}")
    for r in rows:
        print(f"{r['n']:>8} {r['latency']:>6} {r['written']:>8} {r['failed']:>6} {r['seconds']:>8.1f} "
              f"{r['rps']:>8.0f} {r['http_per_record']:>9.4f} {r['sql_per_record']:>8.3f} {r['cpu_per_1000']:>8.3f} "
              f"{r['rss_mb']:>11.1f}")
    sys.stdout.flush()


def main() -> None:
    """Run the cases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (1,000 and 2,000 leads)")
    parser.add_argument("--sizes", default="", help="comma-separated lead counts")
    parser.add_argument("--latencies", default="", help="comma-separated CRM latencies in ms (default 0,20)")
    parser.add_argument("--no-compare", action="store_true", help="skip the one-per-record and lanes cases")
    parser.add_argument("--kinds", default="onprem,online",
                        help="connection kinds: onprem (NTLM, SOAP ExecuteMultiple), online (OAuth, Web API $batch)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    sizes = [int(x) for x in args.sizes.split(",") if x] or ([300, 1000] if args.quick else [1000, 10000, 100000])
    latencies = tuple(int(x) for x in args.latencies.split(",") if x) or ((20,) if args.quick else (0, 20))
    single_n = 60 if args.quick else 1000
    parallel_n = 1000 if args.quick else 2000  # 2,000: two lead batches and ten note batches for 4 lanes
    per_record_ms = 1 if args.quick else 5
    print(f"Nightly push benchmark — {time.strftime('%Y-%m-%d %H:%M')} — leads with 5 events each; "
          "records written = leads + notes")
    with stack() as st:
        if "online" in kinds:
            for latency in latencies:
                rows = [one_case(st, n, latency, online=True) for n in sizes]
                show(f"Dynamics 365 online (Web API $batch of 1,000 outside change sets, 2 in parallel, OAuth), "
                     f"CRM latency {latency} ms per request", rows)
        if "onprem" not in kinds:
            return
        for latency in latencies:
            rows = [one_case(st, n, latency) for n in sizes]
            show(f"Batched (ExecuteMultiple of 1,000, 2 in parallel), CRM latency {latency} ms per request", rows)
            if latency == 20 and not args.no_compare:
                batched = one_case(st, single_n, latency) if single_n not in sizes else \
                    next(r for r in rows if r["n"] == single_n)
                single = one_case(st, single_n, latency, one_per_record=True)
                show("One request per record (what most integrations do), CRM latency 20 ms", [single])
                print(f"Batched is {single['seconds'] / batched['seconds']:.0f}x faster than one request per record "
                      f"at {single_n} leads ({batched['seconds']:.1f} s against {single['seconds']:.1f} s).")
            if len(rows) > 1:
                small, big = rows[-2], rows[-1]  # the issue compares 100,000 with 10,000
                print(f"Peak RSS at {big['n']} leads is {big['rss_mb'] / small['rss_mb']:.2f}x that at {small['n']}.")
        if args.no_compare:
            return
        lanes = [one_case(st, parallel_n, 0, parallel=p, per_record_ms=per_record_ms) for p in (1, 2, 4)]
        print(f"\nParallel ExecuteMultiple batches, the sandbox taking {per_record_ms} ms per record:")
        for p, r in zip((1, 2, 4), lanes, strict=True):
            print(f"  {p} at once: {r['rps']:>7.0f} records/s ({r['seconds']:.1f} s for {r['written']} records)")


if __name__ == "__main__":
    main()
