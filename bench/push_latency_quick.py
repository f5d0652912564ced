"""Push at once (S1): time from a supplier's distribution to the lead being in the CRM, with one real worker.

    .venv/bin/python bench/push_latency_quick.py [--leads 120] [--interval 0.1] [--events 2]

Starts its own sandbox CRM (real NTLM on loopback), Redis and SQLite database in a temporary folder, and one
``python -m jobs.worker`` process that shares them (same encryption key). Each lead is distributed through
``portal.leads.distribute_lead`` (as the web app does); the sandbox is polled for the lead's email, and the
time from the call to the record appearing is kept. Prints ``PUSH-LATENCY median=… p95=… n=…``.
Not collected by pytest (``bench/`` is outside ``testpaths``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=120)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two distributions")
    parser.add_argument("--events", type=int, default=2, help="marketing events per lead")
    args = parser.parse_args()

    from portal.embedded import EmbeddedRedis
    from sandbox.testing import SandboxServer

    with tempfile.TemporaryDirectory(prefix="push-latency-") as folder, \
            SandboxServer(seed=False, platform_option=True) as crm:
        tmp = Path(folder)
        redis = EmbeddedRedis(tmp / "redis").start()
        try:
            run(args, tmp, redis.url, crm)
        finally:
            redis.stop()


def run(args, tmp: Path, redis_url: str, crm) -> None:
    from flask_migrate import upgrade
    from sqlalchemy import select

    from portal import create_app, leads
    from portal.cli import create_org
    from portal.crypto import encrypt
    from portal.extensions import db
    from portal.models import Organization, integration_for

    env = {
        "DATABASE_URL": f"sqlite:///{tmp / 'portal.sqlite3'}", "REDIS_URL": redis_url,
        "PORTAL_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "SECRET_KEY": "bench-secret",
        "CRM_ALLOWED_NETWORKS": "127.0.0.0/8", "PORTAL_INSTANCE_PATH": str(tmp / "instance"),
    }
    os.environ.update(env)
    app = create_app()
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        supplier = create_org("Bench Supplier", "supplier", [])
        partner = create_org("Bench Partner", "partner", ["Bench Supplier"])
        db.session.commit()
        integ = integration_for(partner)
        integ.username, integ.domain, integ.org_url = crm.username, crm.domain, crm.org_url
        integ.odata_url, integ.password_encrypted = crm.webapi_url, encrypt(crm.password)
        integ.lead_source_value = 100000000
        integ.lead_distribution = integ.ld_sync_supplier_leads = integ.enabled = True
        db.session.commit()
        supplier_id, partner_id = supplier.id, partner.id

    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=ROOT, env={**os.environ, **env},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        events = ["email_click", "form_submission", "email_open", "web_plugin_view"][: args.events]

        def poll() -> None:
            now = time.monotonic()
            for rec in crm.records("lead", limit=100000):
                email = (rec.get("emailaddress1") or "").lower()
                if email in sent and email not in seen:
                    seen[email] = now

        with app.test_request_context():
            supplier = db.session.get(Organization, supplier_id)
            partner = db.session.scalar(select(Organization).where(Organization.id == partner_id))
            next_at = time.monotonic()
            for i in range(args.leads):
                email = f"bench{i}@example.net"
                sent[email] = time.monotonic()
                leads.distribute_lead(supplier, partner, {
                    "email": email, "first_name": f"Bench{i}", "last_name": "Lead", "company": "Bench Co",
                    "events": [{"type": kind} for kind in events]})
                next_at += args.interval
                while time.monotonic() < next_at:
                    poll()
                    time.sleep(0.01)
        deadline = time.monotonic() + 120
        while len(seen) < len(sent) and time.monotonic() < deadline:
            poll()
            time.sleep(0.01)
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        log.close()
    latencies = sorted(seen[e] - sent[e] for e in seen)
    if len(latencies) < len(sent):
        print(f"{len(sent) - len(latencies)} leads never reached the CRM; see {tmp / 'worker.log'}")
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)]
    print(f"PUSH-LATENCY median={statistics.median(latencies) * 1000:.0f}ms p95={p95 * 1000:.0f}ms "
          f"max={latencies[-1] * 1000:.0f}ms n={len(latencies)} interval={args.interval}s events/lead={args.events}")


if __name__ == "__main__":
    main()
