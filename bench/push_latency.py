"""Push latency: a supplier distributes leads one by one at a steady rate; how long until each is in the CRM?

One real worker (``python -m jobs.worker``), PostgreSQL, Redis and the sandbox CRM over real NTLM. Each lead is
distributed as the portal does it (``portal.leads.distribute_lead``, with 2 events); a poller watches the
sandbox and notes when each lead's record appears. Prints the median, 95th and 99th percentile.

    .venv/bin/python bench/push_latency.py                 # 200 leads, one every 0.5 s
    .venv/bin/python bench/push_latency.py --quick         # 40 leads, one every 0.2 s
    .venv/bin/python bench/push_latency.py --interval 0.25 # a faster rate
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import partner_with_integration, percentile, stack, wait_for  # noqa: E402


def main() -> None:
    """Distribute, watch, print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 leads")
    parser.add_argument("--leads", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between two distributions (0.5)")
    args = parser.parse_args()
    count = args.leads or (40 if args.quick else 200)
    args.interval = args.interval or (0.2 if args.quick else 0.5)
    with stack() as st:
        from portal import leads, queues
        from portal.cli import create_org
        from portal.extensions import db
        from portal.models import Organization

        with st.app.app_context():
            supplier_org = create_org("Latency Supplier", "supplier", [])
            db.session.commit()
            supplier_id = supplier_org.id
        partner_id, _ = partner_with_integration(st, "Latency Partner", lead_distribution=True,
                                                 ld_sync_supplier_leads=True)
        with st.app.app_context():
            partner = db.session.get(Organization, partner_id)
            partner.suppliers.append(db.session.get(Organization, supplier_id))
            db.session.commit()
        st.start_worker()
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            # The sandbox's control API lists the leads it holds; each new email is stamped when first seen.
            while not stop.is_set():
                now = time.monotonic()
                for rec in st.sandbox.records("lead", limit=count + 10):
                    email = (rec.get("emailaddress1") or "").lower()
                    if email in sent and email not in seen:
                        seen[email] = now
                time.sleep(0.01)

        with st.app.app_context():
            wait_for(lambda: queues.redis().smembers("rq:workers"), 20, what="the worker to start")
        poller = threading.Thread(target=watch, daemon=True)
        poller.start()
        started = time.monotonic()
        with st.app.app_context(), st.app.test_request_context(base_url="http://127.0.0.1:8000/"):
            supplier = db.session.get(Organization, supplier_id)
            for i in range(count):
                due = started + i * args.interval
                time.sleep(max(0.0, due - time.monotonic()))
                email = f"latency{i}@example.com"
                sent[email] = time.monotonic()
                leads.distribute_lead(supplier, db.session.get(Organization, partner_id), {
                    "email": email, "first_name": "Lat", "last_name": f"Ency {i}", "company": "Bench Co",
                    "events": [{"type": "form_submission"}, {"type": "email_click"}]})
        wait_for(lambda: len(seen) >= count, 120, interval=0.05, what="every lead to reach the CRM")
        stop.set()
        poller.join()
        latencies = [(seen[e] - sent[e]) * 1000 for e in sent]
        print(f"Push latency — {time.strftime('%Y-%m-%d %H:%M')} — {count} leads distributed one every "
              f"{args.interval:g} s, one worker, 2 events each")
        print(f"  median {statistics.median(latencies):7.0f} ms")
        print(f"  p95    {percentile(latencies, 95):7.0f} ms   (target: under 1000 ms)")
        print(f"  p99    {percentile(latencies, 99):7.0f} ms")
        print(f"  max    {max(latencies):7.0f} ms")


if __name__ == "__main__":
    main()
