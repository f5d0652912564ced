"""Nightly reads of what changed: HTTP requests and records read by the nightly pull, quiet, after changes, full.

    .venv/bin/python bench/nightly.py [--quick] [--size 100000] [--changes 1000]

Starts the production-like stack once (PostgreSQL, Redis, the sandbox CRM; bench/common.py) and loads the sandbox
with SIZE/2 leads and SIZE/2 contacts (default 100,000 in all; ``--quick``: 10,000), each with an email and a
``modifiedon`` one minute apart over the weeks before today (a CRM's records are mostly old). A partner
integration (Pull Contacts, Pull Opportunities) and a real ``python -m jobs.worker`` run the nightly pull steps
(pull_records, pull_status, pull_activities, pull_opportunities) four times, as Sync now does:

1. the first run (no watermark yet: a full read, which links every record);
2. nothing changed since;
3. after CHANGES records were changed in the CRM (half leads, half contacts, through the connector);
4. Resync everything (a full read on demand; the weekly full read is the same).

Prints, per run: HTTP requests the CRM answered (sandbox statistics before/after, NTLM legs included), records
read by each step, and seconds; then the targets: at most 10 requests when nothing changed, about CHANGES records
read after CHANGES changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Stack, partner_with_integration, stack, wait_for  # noqa: E402

CHUNK = 5000  # records per control-API insert
STEPS = ["pull_records", "pull_status", "pull_activities", "pull_opportunities"]


def load_crm(st: Stack, size: int) -> None:
    """Wipe the sandbox and load SIZE/2 leads and SIZE/2 contacts, modified a minute apart, the newest a day ago."""
    crm = st.sandbox
    crm.reset(platform_option=True)
    half = size // 2
    oldest = datetime.now(UTC) - timedelta(days=1, minutes=half)
    for entity in ("lead", "contact"):
        for start in range(0, half, CHUNK):
            rows = []
            for i in range(start, min(half, start + CHUNK)):
                row = {"firstname": f"First{i}", "lastname": f"Last{i}", "jobtitle": "Buyer",
                       "emailaddress1": f"{entity}{i}@nightly{size}.example.net", "address1_city": "Lyon",
                       "modifiedon": (oldest + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
                if entity == "lead":
                    row["companyname"], row["subject"] = f"Company {i % 997}", "Bench"
                rows.append(row)
            crm.insert_records(entity, rows)


def change_records(st: Stack, iid: int, changes: int) -> None:
    """Change CHANGES records in the CRM, half leads and half contacts, as a CRM user would (ExecuteMultiple)."""
    from portal.connection import config_for
    from portal.connectors.dynamics import OrganizationService, Transport, UpdateRequest
    from portal.extensions import db
    from portal.models import CrmIntegration

    with st.app.app_context():
        config = config_for(db.session.get(CrmIntegration, iid))
    with Transport(config) as transport:
        svc = OrganizationService(transport)
        for entity, count in (("lead", changes // 2), ("contact", changes - changes // 2)):
            ids = [r[f"{entity}id"] for r in st.sandbox.records(entity, limit=count)]
            requests = [UpdateRequest(entity, rid, {"jobtitle": "Head of Buying"}) for rid in ids]
            for start in range(0, len(requests), 1000):
                svc.execute_multiple(requests[start:start + 1000])


def http_requests(st: Stack) -> tuple[int, dict]:
    """Every HTTP request the CRM endpoints have answered (NTLM handshakes included), and requests by operation."""
    stats = st.sandbox.stats()
    return sum(stats["http"].values()), dict(stats["requests"])


def one_run(st: Stack, iid: int, label: str, timeout: float, *, full: bool = False) -> dict:
    """Queue a manual run of the nightly pull steps, wait for it, and measure."""
    from portal import schedule
    from portal.extensions import db
    from portal.models import CrmIntegration
    from portal.platform_models import RunStatus, SyncRun

    before, ops_before = http_requests(st)
    started = time.monotonic()
    with st.app.app_context():
        run_id = schedule.start_run(db.session.get(CrmIntegration, iid), "manual", steps=STEPS, full=full,
                                    trigger="bench").id

    def finished():
        with st.app.app_context():
            run = db.session.get(SyncRun, run_id)
            return (run.status.value, run.steps, run.message) if run.done else None

    status, steps, message = wait_for(finished, timeout, 0.2, f"run #{run_id} ({label})")
    if status != RunStatus.finished.value:
        raise SystemExit(f"run #{run_id} ({label}) ended {status}: {message}")
    after, ops_after = http_requests(st)
    ops = {k: v - ops_before.get(k, 0) for k, v in ops_after.items() if v - ops_before.get(k, 0)}
    return {"label": label, "http": after - before, "ops": ops, "seconds": time.monotonic() - started,
            "read": {s["name"]: s["read"] for s in steps}, "updated": {s["name"]: s["updated"] for s in steps},
            "deleted": sum(s.get("deleted", 0) for s in steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 records instead of 100,000")
    parser.add_argument("--size", type=int, default=None, help="leads and contacts in the CRM (default 100000)")
    parser.add_argument("--changes", type=int, default=1000, help="records changed before the third run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one run")
    args = parser.parse_args()
    size = args.size or (10000 if args.quick else 100000)

    begun = time.monotonic()
    with stack() as st:
        t0 = time.monotonic()
        load_crm(st, size)
        print(f"loaded {size // 2} leads and {size // 2} contacts in {time.monotonic() - t0:.1f} s", flush=True)
        _org, iid = partner_with_integration(st, "Nightly Partner", marketing_automation=True, ma_pull_contacts=True,
                                             ma_pull_opportunities=True, record_leads_as="lead")
        st.start_worker()
        results = [one_run(st, iid, "first run (full read)", args.timeout)]
        print(f"{results[-1]['label']}: {results[-1]['seconds']:.1f} s", flush=True)
        results.append(one_run(st, iid, "nothing changed", args.timeout))
        change_records(st, iid, args.changes)
        results.append(one_run(st, iid, f"{args.changes:,} changed", args.timeout))
        results.append(one_run(st, iid, "Resync everything (full)", args.timeout, full=True))
        st.stop_workers()

    print()
    print(f"Nightly pull ({', '.join(STEPS)}), CRM holding {size:,} leads and contacts, one worker, PostgreSQL, "
          "sandbox CRM on loopback")
    print(f"{'run':<28} {'HTTP req':>9} {'records read':>13} " + " ".join(f"{s:>18}" for s in STEPS)
          + f" {'seconds':>8}")
    for res in results:
        total = sum(res["read"].values())
        print(f"{res['label']:<28} {res['http']:>9} {total:>13} "
              + " ".join(f"{res['read'].get(s, 0):>18}" for s in STEPS) + f" {res['seconds']:>8.1f}")
    for res in results:
        print(f"{res['label']}: CRM requests by operation {res['ops']}, other HTTP (NTLM handshake legs) "
              f"{res['http'] - sum(res['ops'].values())}")
    quiet, changed, full = results[1], results[2], results[3]
    print()
    print(f"Nothing changed: {quiet['http']} HTTP requests (target <= 10): {'PASS' if quiet['http'] <= 10 else 'MISS'}"
          f"; full resync: {full['http']}")
    people = changed["read"]["pull_records"]
    print(f"After {args.changes:,} changes: pull_records read {people:,} records (target about {args.changes:,}; "
          f"the rest is the overlap of {people - args.changes} records modified in the 5 minutes before the last "
          f"read), {sum(changed['read'].values()):,} in all steps, {changed['http']} HTTP requests; "
          f"full resync read {full['read']['pull_records']:,}")
    print(f"\ntotal {time.monotonic() - begun:.0f} s")


if __name__ == "__main__":
    main()
