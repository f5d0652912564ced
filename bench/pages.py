"""Page latency under load: CRM Settings, Edit Settings, Sync history (1,000 runs), a supplier's 1,000 partners.

    .venv/bin/python bench/pages.py [--quick] [--duration 30] [--rounds 3] [--connections 20] [--wrk-threads 2]
                                    [--server-threads 8] [--rows 1000]

Starts the production-like stack (PostgreSQL, Redis, the sandbox CRM; bench/common.py), seeds with bulk inserts
a partner whose integration has ROWS sync runs (a few with failures) and a supplier with ROWS partners whose
integrations are On, Off, in Error, tested or not; then serves the portal as in production (gunicorn, one
process per core with threads, on a free loopback port, with the stack's environment), signs in with requests and
runs wrk (Debian's, /usr/bin/wrk) against each page with the session cookie. A wrk Lua script counts every
answer that is not 200; any such answer fails the benchmark. The pages take turns in ROUNDS rounds that share each
page's duration, so a slower spell of a shared machine falls on every page, not on one: the CPU per request is
over all rounds, each percentile the median of the rounds'.

A bare signed-in page (the same session, user load and layout, no data; bench/bare.py) is measured in the same
run with the same stack. Prints, for each page: requests per second, 50th/95th/99th percentile latency, the target
for the 95th percentile and PASS/MISS, the server CPU per request and its ratio to the bare page's (target at most
1.5); then the SQL statements each page runs with 10 and with ROWS rows (counted in
process with the Flask test client), which must not grow. ``--quick`` runs each page for 4 seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Stack, partner_with_integration, stack, wait_for  # noqa: E402

PASSWORD = "Quartz-Meadow-73"
PARTNER_ADMIN = "admin@bench-partner.example"
SUPPLIER_ADMIN = "admin@bench-supplier.example"
SMALL_PARTNER_ADMIN = "admin@small-partner.example"
SMALL_SUPPLIER_ADMIN = "admin@small-supplier.example"
TOKEN_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
USER_AGENT = "portal-bench/1"

LUA = r"""
wrk.headers["Cookie"] = %(cookie)s
wrk.headers["User-Agent"] = %(agent)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; last_bad = 0 end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; last_bad = status end
end
function done(summary, latency, requests)
  local bad_total, last = 0, 0
  for _, t in ipairs(threads) do
    bad_total = bad_total + t:get("bad")
    if t:get("last_bad") ~= 0 then last = t:get("last_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%%d rps=%%.2f p50=%%.3f p95=%%.3f p99=%%.3f max=%%.3f non200=%%d last_bad=%%d " ..
    "connect=%%d read=%%d write=%%d status=%%d timeout=%%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, bad_total, last, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# --------------------------------------------------------------------------------------------------------------
# Seeding: bulk inserts, so 1,000 runs and 1,000 partners take a second or two.


def _steps(kind: str, i: int, failed: int) -> list[dict]:
    """Steps as the engine writes them into steps_json."""
    from portal.ledger import STEP_TITLES
    from portal.sync import NIGHTLY_STEPS

    names = NIGHTLY_STEPS if kind in ("nightly", "manual") else [kind]
    out = []
    for n, name in enumerate(names):
        out.append({"name": name, "title": STEP_TITLES.get(name, name), "status": "finished",
                    "created": (i * 7 + n) % 40, "updated": (i * 3 + n) % 15, "skipped": (i + n) % 9,
                    "failed": failed if n == 2 else 0, "read": (i * 11 + n) % 500 if name.startswith("pull") else 0,
                    "note": "", "samples": [], "seconds": round(0.2 + ((i + n) % 17) / 10, 2)})
    return out


def seed_runs(integration_id: int, count: int) -> None:
    """COUNT finished runs of an integration over the past months: nightly, pushes, Sync now, retries."""
    from sqlalchemy import insert, select

    from portal.extensions import db
    from portal.models import utcnow
    from portal.platform_models import RunStatus, SyncFailure, SyncRun

    now = utcnow()
    kinds = ["nightly", "push", "push", "manual", "push", "retry"]
    rows = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        failed = 3 if i % 40 == 7 else 0
        status = RunStatus.partial if failed else RunStatus.finished
        message = ""
        if i % 125 == 11:
            status, message = RunStatus.failed, ("The CRM refused the sign-in (HTTP 401). What to do: check the "
                                                  "username and password in CRM Connection Settings.")
        steps = [] if status == RunStatus.failed else _steps(kind, i, failed)
        created = now - timedelta(hours=(count - i) * 3)
        rows.append({
            "integration_id": integration_id, "kind": kind, "trigger": "schedule" if kind == "nightly" else "",
            "dry_run": False, "status": status, "job_id": None, "current_step": "",
            "progress_done": 100, "progress_total": 100, "steps_json": json.dumps(steps),
            "created_count": sum(s["created"] for s in steps), "updated_count": sum(s["updated"] for s in steps),
            "skipped_count": sum(s["skipped"] for s in steps), "failed_count": failed,
            "message": message or f"created {sum(s['created'] for s in steps)}, failed {failed}",
            "created_at": created, "started_at": created + timedelta(seconds=1),
            "finished_at": created + timedelta(seconds=5 + i % 60),
        })
    db.session.execute(insert(SyncRun), rows)
    partial = db.session.scalars(select(SyncRun.id).where(SyncRun.integration_id == integration_id,
                                                          SyncRun.failed_count > 0)).all()
    db.session.execute(insert(SyncFailure), [
        {"run_id": rid, "integration_id": integration_id, "step": "push_marketing_leads", "operation": "create",
         "entity": "lead", "local_type": "lead", "local_id": rid * 10 + k, "crm_id": "", "code": "crm_fault",
         "message": "The CRM refused the record.", "action": "Correct the record and retry it.",
         "raw": "<s:Fault>…</s:Fault>", "retryable": False, "attempts": 1, "status": "pending"}
        for rid in partial for k in range(3)])
    db.session.commit()


def seed_partners(supplier_id: int, prefix: str, count: int) -> None:
    """COUNT partners of a supplier, each with a Dynamics integration: On, Off, Error, tested or never tested."""
    from sqlalchemy import insert, select

    from portal import catalog
    from portal.extensions import db
    from portal.models import CrmIntegration, Organization, OrgKind, partner_suppliers, utcnow

    now = utcnow()
    db.session.execute(insert(Organization), [{"name": f"{prefix} {i:04d}", "kind": OrgKind.partner}
                                              for i in range(count)])
    ids = db.session.scalars(select(Organization.id).where(Organization.name.like(f"{prefix} %"))).all()
    db.session.execute(insert(partner_suppliers), [{"partner_id": pid, "supplier_id": supplier_id} for pid in ids])
    rows = []
    for n, pid in enumerate(ids):
        error = n % 7 == 3
        tested = n % 4 != 0
        rows.append({
            "organization_id": pid, "kind": catalog.DYNAMICS, "enabled": n % 3 != 0 or error,
            "supplier_id": supplier_id, "username": f"crm{n}", "domain": "CORP",
            "org_url": f"https://crm{n}.example.net/org/XRMServices/2011/Organization.svc",
            "last_test_ok": (n % 9 != 5) if tested else None,
            "last_test_at": now - timedelta(days=n % 30) if tested else None,
            "error_code": "auth_failed" if error else "",
            "error_message": "The CRM refused the sign-in." if error else "",
            "error_action": "Check the password." if error else "",
            "error_at": now - timedelta(hours=n % 48) if error else None,
        })
    db.session.execute(insert(CrmIntegration), rows)
    db.session.commit()


@contextlib.contextmanager
def _ctx(st: Stack):
    with st.app.app_context():
        yield


def seed(st: Stack, rows: int) -> dict:
    """The big partner and supplier (ROWS runs, ROWS partners) and the small ones (10 each), with admins."""
    from sqlalchemy import text

    from portal.cli import create_org, create_user
    from portal.extensions import db
    from portal.models import partner_suppliers

    with _ctx(st):
        supplier = create_org("Bench Supplier", "supplier", [])
        small_supplier = create_org("Small Supplier", "supplier", [])
        db.session.commit()
        supplier_id, small_supplier_id = supplier.id, small_supplier.id
    big_org, big_iid = partner_with_integration(st, "Bench Partner", supplier_id=supplier_id, last_test_ok=True)
    small_org, small_iid = partner_with_integration(st, "Small Partner", supplier_id=small_supplier_id,
                                                    last_test_ok=True)
    with _ctx(st):
        db.session.execute(partner_suppliers.insert(), [{"partner_id": big_org, "supplier_id": supplier_id},
                                                        {"partner_id": small_org, "supplier_id": small_supplier_id}])
        for email, org in ((PARTNER_ADMIN, "Bench Partner"), (SUPPLIER_ADMIN, "Bench Supplier"),
                           (SMALL_PARTNER_ADMIN, "Small Partner"), (SMALL_SUPPLIER_ADMIN, "Small Supplier")):
            create_user(email, PASSWORD, org, "admin")
        db.session.commit()
        seed_runs(big_iid, rows)
        seed_runs(small_iid, 10)
        seed_partners(supplier_id, "Partner", rows - 1)  # with Bench Partner: ROWS partners
        seed_partners(small_supplier_id, "Small partner", 9)
        if db.engine.dialect.name == "postgresql":  # the statistics autovacuum keeps on a server in use
            db.session.commit()
            db.session.execute(text("ANALYZE"))
            db.session.commit()  # the statistics are kept with the transaction
    return {"big": big_iid, "small": small_iid}


# --------------------------------------------------------------------------------------------------------------
# SQL statements per page, in process (Flask test client), with 10 and with ROWS rows.


BARE = "Bare signed-in page"
MAX_RATIO = 1.5  # a page may cost at most this many times the bare page's server CPU per request


def pages_for(iid: int, partner: str, supplier: str) -> list[tuple[str, str, str, float]]:
    """(label, path, login, target p95 in ms) of the measured pages (the bare page, served by bench/bare.py)."""
    return [
        (BARE, "/bench/bare", partner, 50.0),
        ("CRM Settings listing", "/settings/crm", partner, 50.0),
        ("Edit Settings", f"/settings/crm/{iid}/edit", partner, 50.0),
        ("Sync history", f"/settings/crm/{iid}/runs", partner, 100.0),
        ("Supplier's partners", "/settings/partners", supplier, 100.0),
    ]


def _test_login(app, email: str):
    client = app.test_client()
    page = client.get("/login")
    token = TOKEN_RE.search(page.text).group(1)
    resp = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    if resp.status_code != 302:
        raise SystemExit(f"sign-in of {email} failed in process: {resp.status_code}")
    return client


def sql_counts(st: Stack, ids: dict) -> list[tuple[str, int, int]]:
    """Statements each page runs, with the small and the big data set."""
    from sqlalchemy import event

    from portal.extensions import db

    with _ctx(st):
        engine = db.engine
    counter = {"n": 0}

    def before(*_args, **_kwargs):
        counter["n"] += 1

    clients = {email: _test_login(st.app, email)
               for email in (PARTNER_ADMIN, SUPPLIER_ADMIN, SMALL_PARTNER_ADMIN, SMALL_SUPPLIER_ADMIN)}

    def count(email: str, path: str) -> int:
        client = clients[email]
        client.get(path)  # warm whatever is not per row
        counter["n"] = 0
        event.listen(engine, "before_cursor_execute", before)
        try:
            resp = client.get(path)
        finally:
            event.remove(engine, "before_cursor_execute", before)
        if resp.status_code != 200:
            raise SystemExit(f"{path} answered {resp.status_code} in process")
        return counter["n"]

    out = []
    small = pages_for(ids["small"], SMALL_PARTNER_ADMIN, SMALL_SUPPLIER_ADMIN)
    big = pages_for(ids["big"], PARTNER_ADMIN, SUPPLIER_ADMIN)
    for (label, small_path, small_user, _), (_, big_path, big_user, _) in zip(small, big, strict=True):
        if label == BARE:
            continue  # served by bench/bare.py only
        out.append((label, count(small_user, small_path), count(big_user, big_path)))
    return out


# --------------------------------------------------------------------------------------------------------------
# The portal as in production, and wrk against it.


@contextlib.contextmanager
def serve_portal(st: Stack, threads: int, workers: int = 2):
    """gunicorn (WORKERS processes of THREADS threads, as production runs it), on a free loopback port.

    It serves ``bench.bare:app``: the production app plus the bare page measured against.
    """
    import requests

    from sandbox.testing import free_port

    port = free_port()
    log = open(Path(st.env["PORTAL_INSTANCE_PATH"]) / "portal.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(workers),
                             "--threads", str(threads), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
                             "bench.bare:app"], cwd=ROOT, env=st.env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"the portal exited with {proc.returncode}; see {log.name}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{base}/login", timeout=2).status_code == 200
        return False

    try:
        wait_for(up, 30, 0.1, "the portal to answer")
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def tree_cpu(proc) -> float:
    """CPU seconds of a process and its children (gunicorn's workers)."""
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        with contextlib.suppress(Exception):
            total += sum(child.cpu_times()[:2])
    return total


def login_cookie(base: str, email: str) -> str:
    """Sign in over HTTP; the Cookie header value of the session."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT  # session protection ties the session to the agent
    page = session.get(f"{base}/login", timeout=10)
    token = TOKEN_RE.search(page.text).group(1)
    resp = session.post(f"{base}/login", data={"email": email, "password": PASSWORD, "csrf_token": token},
                        allow_redirects=False, timeout=10)
    if resp.status_code != 302:
        raise SystemExit(f"sign-in of {email} failed: {resp.status_code}")
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def run_wrk(url: str, cookie: str, duration: float, connections: int, threads: int, folder: Path) -> dict:
    """One wrk run; the figures its Lua done() printed."""
    script = folder / "bench.lua"
    script.write_text(LUA % {"cookie": json.dumps(cookie), "agent": json.dumps(USER_AGENT)})
    cmd = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    figures = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    errors = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    if figures["non200"] or errors:
        raise SystemExit(f"{url}: {figures['non200']:.0f} answers were not 200 (last {figures['last_bad']:.0f}), "
                         f"{errors:.0f} socket errors: {line}")
    return figures


WRK = shutil.which("wrk") or "/usr/bin/wrk"


def merged(rounds: list[dict]) -> dict:
    """A page's rounds as one figure: requests per second and server CPU per request over all of them, and each
    latency percentile the median of the rounds' (wrk gives percentiles per run, which do not add up)."""
    requests, seconds = sum(r["requests"] for r in rounds), sum(r["requests"] / r["rps"] for r in rounds)
    figures = {name: statistics.median(r[name] for r in rounds) for name in ("p50", "p95", "p99")}
    figures.update(requests=requests, rps=requests / seconds,
                   cpu_ms=sum(r["cpu"] for r in rounds) * 1000 / max(1, requests))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 seconds a page")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per page (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="turns the pages take, sharing the duration")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--server-threads", type=int, default=4)
    parser.add_argument("--server-workers", type=int, default=2, help="gunicorn processes (one per core)")
    parser.add_argument("--rows", type=int, default=1000, help="sync runs, and partners of the supplier")
    args = parser.parse_args()
    duration = args.duration or (4.0 if args.quick else 30.0)
    if not Path(WRK).exists():
        raise SystemExit("wrk is needed: apt-get install wrk")

    started = time.monotonic()
    with stack() as st, tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        t0 = time.monotonic()
        ids = seed(st, args.rows)
        print(f"seeded {args.rows} sync runs and {args.rows} partners in {time.monotonic() - t0:.1f} s")
        counts = sql_counts(st, ids)
        results = []
        with serve_portal(st, args.server_threads, args.server_workers) as (base, proc):
            server = psutil.Process(proc.pid)
            cookies = {email: login_cookie(base, email) for email in (PARTNER_ADMIN, SUPPLIER_ADMIN)}
            pages = pages_for(ids["big"], PARTNER_ADMIN, SUPPLIER_ADMIN)
            for _label, path, email, _target in pages:
                run_wrk(base + path, cookies[email], 1, 2, 1, Path(tmp))  # warm-up: templates, pool, caches
            rounds = {label: [] for label, *_ in pages}
            for _ in range(args.rounds):  # the pages take turns: the machine's slower spells fall on every page
                for label, path, email, _target in pages:
                    cpu = tree_cpu(server)
                    figures = run_wrk(base + path, cookies[email], duration / args.rounds, args.connections,
                                      args.wrk_threads, Path(tmp))
                    figures["cpu"] = tree_cpu(server) - cpu
                    rounds[label].append(figures)
            results = [(label, path, merged(rounds[label]), target) for label, path, _email, target in pages]

    print()
    print(f"Pages under load: wrk -t{args.wrk_threads} -c{args.connections}, {duration:g} s a page in "
          f"{args.rounds} turns, gunicorn with "
          f"{args.server_workers} processes of {args.server_threads} threads, PostgreSQL; {args.rows} sync runs / "
          f"{args.rows} partners")
    bare_cpu = next(f["cpu_ms"] for label, _path, f, _t in results if label == BARE)
    print(f"{'page':<24} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'target p95':>11}  result"
          f"  {'server CPU ms/req':>17}  {'x bare':>6}  <= {MAX_RATIO}")
    for label, _path, f, target in results:
        verdict = "PASS" if f["p95"] < target else "MISS"
        ratio = f["cpu_ms"] / bare_cpu if bare_cpu else float("nan")
        cost = "" if label == BARE else ("PASS" if ratio <= MAX_RATIO else "MISS")
        print(f"{label:<24} {f['rps']:>8.1f} {f['p50']:>8.1f} {f['p95']:>8.1f} {f['p99']:>8.1f} "
              f"{'< ' + format(target, '.0f') + ' ms':>11}  {verdict}  {f['cpu_ms']:>17.1f}  {ratio:>6.2f}  {cost}")
    print("(wrk keeps every connection busy: latency is about connections x server time per request / cores;")
    print(" x bare: the page's server CPU per request over the bare signed-in page's, measured in the same run)")
    print()
    print(f"SQL statements per page (10 rows vs {args.rows} rows)")
    print(f"{'page':<24} {'10':>6} {args.rows:>6}  result")
    for label, few, many in counts:
        print(f"{label:<24} {few:>6} {many:>6}  {'same' if few == many else 'GROWS'}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
