"""Nightly pull: CRM leads and contacts into the platform, and a dynamic marketing list, through a real worker.

    .venv/bin/python bench/pull.py [--quick] [--sizes 10000,100000] [--list-share 0.2]

Starts the production-like stack once (PostgreSQL, Redis, the sandbox CRM; bench/common.py). For each size N
(default 10,000 then 100,000; ``--quick``: 2,000 then 10,000) the sandbox is wiped and loaded through its control
API with N/2 leads and N/2 contacts (10% without an email) and a dynamic list of leads (type true, created from
leads) whose FetchXML selects N/5 of them (20,000 at N = 100,000) by city. A fresh partner integration (Pull
Contacts on) and a fresh ``python -m jobs.worker`` process run one manual run of the steps pull_records and
contact_lists (portal.schedule.start_run, as Sync now does); the benchmark waits for the run to finish.

Prints per size: each step's time and records read per second, HTTP requests sent to the CRM per 5,000 records
read (sandbox statistics before/after; target at most 1), the worker's CPU seconds (psutil) and peak RSS
(VmHWM); then the 100k/10k peak RSS ratio (target at most 1.2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Stack, partner_with_integration, peak_rss_mb, stack, wait_for  # noqa: E402

CHUNK = 5000  # records per control-API insert
LIST_CITY = "Listville"


def dynamic_list_query(city: str) -> str:
    """The list's own FetchXML, as Dynamics stores it for a dynamic marketing list of leads."""
    return ('<fetch version="1.0" output-format="xml-platform" mapping="logical" distinct="false">'
            '<entity name="lead"><attribute name="fullname"/><attribute name="leadid"/>'
            f'<filter type="and"><condition attribute="address1_city" operator="eq" value="{city}"/></filter>'
            '</entity></fetch>')


def load_crm(st: Stack, size: int, list_share: float) -> dict:
    """Wipe the sandbox and load SIZE/2 leads, SIZE/2 contacts and the dynamic list; returns what was loaded."""
    crm = st.sandbox
    crm.reset(platform_option=True)
    half = size // 2
    in_list = int(size * list_share)
    cities = ("Lyon", "Porto", "Ghent", "Turin", "Leeds")
    for entity in ("lead", "contact"):
        for start in range(0, half, CHUNK):
            rows = []
            for i in range(start, min(half, start + CHUNK)):
                row = {"firstname": f"First{i}", "lastname": f"Last{i}", "jobtitle": "Buyer",
                       "telephone1": f"+33 1 23 {i % 100:02d} {i % 97:02d}",
                       "address1_city": LIST_CITY if entity == "lead" and i < in_list else cities[i % 5],
                       "address1_country": "France"}
                if i % 10 != 9:  # 10% without email
                    row["emailaddress1"] = f"{entity}{i}@bench{size}.example.net"
                if entity == "lead":
                    row["companyname"] = f"Company {i % 997}"
                    row["subject"] = "Bench"
                rows.append(row)
            crm.insert_records(entity, rows)
    crm.insert_records("list", [{"listname": "Bench dynamic list", "type": True, "createdfromcode": 4,
                                 "query": dynamic_list_query(LIST_CITY), "statecode": 0}])
    return {"leads": half, "contacts": half, "list": in_list}


def http_requests(st: Stack) -> tuple[int, dict]:
    """Every HTTP request the CRM endpoints have answered (NTLM handshakes included), and requests by operation."""
    stats = st.sandbox.stats()
    return sum(stats["http"].values()), dict(stats["requests"])


def run_size(st: Stack, size: int, list_share: float, timeout: float) -> dict:
    """Load the CRM, start a fresh worker, run the two pull steps and measure."""
    from portal import schedule
    from portal.extensions import db
    from portal.models import CrmIntegration
    from portal.platform_models import ContactList, Lead, RunStatus, SyncRun

    t0 = time.monotonic()
    loaded = load_crm(st, size, list_share)
    load_seconds = time.monotonic() - t0
    _org_id, iid = partner_with_integration(st, f"Pull Partner {size}", marketing_automation=True,
                                            ma_pull_contacts=True, record_leads_as="lead")
    st.stop_workers()
    worker = st.start_worker()
    time.sleep(2)  # imports done, app built: the baseline below is the idle worker
    idle_rss = worker.memory_info().rss / 2**20
    cpu_before = sum(worker.cpu_times()[:2])
    http_before, ops_before = http_requests(st)
    started = time.monotonic()
    with st.app.app_context():
        run_id = schedule.start_run(db.session.get(CrmIntegration, iid), "manual",
                                    steps=["pull_records", "contact_lists"], trigger="bench").id

    def finished():
        with st.app.app_context():
            run = db.session.get(SyncRun, run_id)
            return (run.status.value, run.steps, run.message) if run.done else None
        return None

    status, steps, message = wait_for(finished, timeout, 0.2, f"run #{run_id} at {size}")
    wall = time.monotonic() - started
    cpu = sum(worker.cpu_times()[:2]) - cpu_before
    peak = peak_rss_mb(worker.pid)
    http_after, ops_after = http_requests(st)
    http = http_after - http_before
    ops = {k: v - ops_before.get(k, 0) for k, v in ops_after.items() if v - ops_before.get(k, 0)}
    if status != RunStatus.finished.value:
        raise SystemExit(f"run #{run_id} ended {status}: {message}")
    with st.app.app_context():
        from sqlalchemy import func, select

        org = db.session.get(CrmIntegration, iid).organization_id
        leads = db.session.scalar(select(func.count()).select_from(Lead).where(Lead.organization_id == org))
        lst = db.session.scalar(select(ContactList).where(ContactList.organization_id == org))
        members, list_skipped = (lst.member_count, lst.skipped_without_email) if lst else (0, 0)
    st.stop_workers()
    read = sum(s.get("read", 0) for s in steps)
    return {"size": size, "loaded": loaded, "load_seconds": load_seconds, "steps": steps, "wall": wall, "cpu": cpu,
            "peak": peak, "idle": idle_rss, "http": http, "ops": ops, "read": read, "leads": leads, "members": members,
            "list_skipped": list_skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 2,000 and 10,000")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default 10000,100000)")
    parser.add_argument("--list-share", type=float, default=0.2, help="dynamic list size as a share of N")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one run")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("2000,10000" if args.quick else "10000,100000")).split(",")]

    begun = time.monotonic()
    results = []
    with stack() as st:
        for size in sizes:
            res = run_size(st, size, args.list_share, args.timeout)
            results.append(res)
            print(f"N={size}: loaded {res['loaded']['leads']} leads, {res['loaded']['contacts']} contacts, "
                  f"a dynamic list of {res['loaded']['list']} in {res['load_seconds']:.1f} s; "
                  f"run took {res['wall']:.1f} s", flush=True)

    print()
    print("Nightly pull (pull_records + contact_lists), one worker, PostgreSQL, sandbox CRM on loopback")
    print(f"{'N':>8} {'step':<14} {'read':>8} {'created':>8} {'updated':>8} {'skipped':>8} {'seconds':>8} "
          f"{'records/s':>10}")
    for res in results:
        for s in res["steps"]:
            rate = s["read"] / s["seconds"] if s["seconds"] else float("nan")
            print(f"{res['size']:>8} {s['name']:<14} {s['read']:>8} {s['created']:>8} {s['updated']:>8} "
                  f"{s['skipped']:>8} {s['seconds']:>8.1f} {rate:>10.0f}")
    print()
    print(f"{'N':>8} {'read':>8} {'HTTP req':>9} {'req/5,000 read':>15} {'CPU s':>7} {'CPU s/1,000':>12} "
          f"{'idle RSS MiB':>13} {'peak RSS MiB':>13} {'platform leads':>15} {'list members':>13}")
    for res in results:
        per = res["http"] / (res["read"] / 5000) if res["read"] else float("nan")
        print(f"{res['size']:>8} {res['read']:>8} {res['http']:>9} {per:>15.2f} {res['cpu']:>7.1f} "
              f"{res['cpu'] / res['read'] * 1000:>12.3f} {res['idle']:>13.0f} {res['peak']:>13.0f} "
              f"{res['leads']:>15} {res['members']:>13}")
    for res in results:
        others = res["http"] - sum(res["ops"].values())
        print(f"N={res['size']}: CRM requests by operation {res['ops']}, other HTTP (NTLM handshake legs) {others}")
    print()
    big = results[-1]
    per = big["http"] / (big["read"] / 5000)
    print(f"HTTP requests per 5,000 records read at N={big['size']:,}: {per:.2f} (target <= 1): "
          f"{'PASS' if per <= 1 else 'MISS'}  (fixed cost per run: the NTLM handshake and the list query; "
          f"a FetchXML page holds at most 5,000 records)")
    if len(results) >= 2:
        small = results[0]
        ratio = big["peak"] / small["peak"]
        print(f"Peak RSS at {big['size']:,} / at {small['size']:,}: {big['peak']:.0f} / {small['peak']:.0f} MiB = "
              f"{ratio:.2f} (target <= 1.2): {'PASS' if ratio <= 1.2 else 'MISS'}")
        if small["size"] // 2 < 5000:
            print("  (below N = 10,000 a page holds fewer than 5,000 records, so the smaller run keeps less in "
                  "memory: the ratio means most from N = 10,000 up)")
    print(f"\ntotal {time.monotonic() - begun:.0f} s")


if __name__ == "__main__":
    main()
