"""``make run``: migrate, seed the demo, and serve the portal with its worker, Redis and the sandbox CRM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from .config import PROJECT_ROOT, instance_path
from .embedded import EmbeddedRedis, free_port

# Two workers: pushes and connection tests never wait behind nightly work; the first runs the scheduler.
WORKERS = [["--queues", "connection-tests,push"], ["--queues", "default,nightly", "--no-scheduler"]]

log = logging.getLogger("portal.serve")


def _wait_http(url: str, timeout: float = 20.0, verify: str | bool = True) -> None:
    """Wait until a URL answers at all (any status)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=0.5, allow_redirects=False, verify=verify).close()
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _port_or_free(preferred: int) -> int:
    """The preferred loopback port when it is free, else any free one."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def sandbox_ports(env: dict[str, str]) -> tuple[int, int]:
    """The sandbox's on-premises and TLS ports: SANDBOX_PORT (5555 when free) and SANDBOX_TLS_PORT, else the next one.

    Two `make run`s side by side then differ by SANDBOX_PORT alone; a busy preferred port gives way to a free one.
    """
    port = int(env.get("SANDBOX_PORT", "0")) or _port_or_free(5555)
    tls_port = int(env.get("SANDBOX_TLS_PORT", "0")) or _port_or_free(port + 1)
    return port, tls_port


def allow_sandbox(env: dict[str, str], *ports: int) -> None:
    """Let the portal reach exactly the sandbox's address and ports (on-premises and online), not the rest of loopback.

    Tenant administrators choose the URLs the connection test reaches: allowing all of loopback would let
    them probe every local service (Redis, PostgreSQL...) through it.
    """
    current = [e.strip() for e in env.get("CRM_ALLOWED_ENDPOINTS", "").split(",") if e.strip()]
    for port in ports:
        entry = f"127.0.0.1:{port}"
        if entry not in current:
            current.append(entry)
    env["CRM_ALLOWED_ENDPOINTS"] = ",".join(current)
    print(f"* CRM_ALLOWED_ENDPOINTS={env['CRM_ALLOWED_ENDPOINTS']} so the portal may reach the sandbox CRM only")


def main(argv: list[str] | None = None) -> int:
    """Start everything, print the address and the logins, and stop it all on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("PORTAL_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORTAL_PORT", "8000")))
    parser.add_argument("--no-sandbox", action="store_true", help="do not start the sandbox CRM")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Ctrl-C must stop everything even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    inst = instance_path()
    children: list[subprocess.Popen] = []
    redis_server = None
    env = dict(os.environ)
    try:
        if not env.get("REDIS_URL"):
            redis_server = EmbeddedRedis(inst / "redis").start()
            env["REDIS_URL"] = redis_server.url
            print(f"* Redis: embedded {redis_server.how} at {redis_server.url}")
        else:
            print(f"* Redis: {env['REDIS_URL']} (from REDIS_URL)")
        sandbox = None
        if not args.no_sandbox:
            from sandbox.testing import DOMAIN, PASSWORD, USERNAME

            port, tls_port = sandbox_ports(env)
            data = inst / "sandbox"
            children.append(subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "sandbox", "--port", str(port), "--data-dir", str(data), "--seed",
                 "--platform-option", "--tls-port", str(tls_port)],
                cwd=PROJECT_ROOT, env=env,
            ))
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/_sandbox/faults")
            from sandbox.online import CLIENT_ID, CLIENT_SECRET, TENANT_ID

            online = f"https://127.0.0.1:{tls_port}"
            _wait_http(online + "/api/data/v9.2/", verify=str(data / "tls-cert.pem"))
            sandbox = {
                "org_url": f"{base}/demo/XRMServices/2011/Organization.svc/web",
                "odata_url": f"{base}/demo/api/data/v8.2/",
                "username": USERNAME, "domain": DOMAIN, "password": PASSWORD,
                "environment_url": online, "tenant_id": TENANT_ID, "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
            if not env.get("CRM_AUTHORITY_HOST"):
                # The sandbox stands in for Microsoft Entra ID, with a certificate of its own.
                env["CRM_AUTHORITY_HOST"] = online
                env.setdefault("CRM_CA_BUNDLE", str(data / "tls-cert.pem"))
                print(f"* CRM_AUTHORITY_HOST={online}: the sandbox signs Dynamics 365 online connections in")
            allow_sandbox(env, port, tls_port)
            print(f"* Sandbox CRM: {sandbox['org_url']} (user {DOMAIN}\\{USERNAME})")
            print(f"* Sandbox Dynamics 365 online: {online} (tenant {TENANT_ID}, client {CLIENT_ID}); the demo "
                  "partner has both kinds saved: choose the kind under CRM Connection Settings")
        os.environ.update(env)

        from . import create_app
        from .cli import seed_demo_data

        app = create_app()
        with app.app_context():
            from flask_migrate import upgrade

            upgrade()
            logins = seed_demo_data(sandbox)
        print(f"* Database: {app.config['SQLALCHEMY_DATABASE_URI']} (migrated)")

        for worker_args in WORKERS:
            children.append(subprocess.Popen([sys.executable, "-m", "jobs.worker", *worker_args],  # noqa: S603
                                             cwd=PROJECT_ROOT, env=env))
            print(f"* Worker: started ({' '.join(worker_args)})")

        url = f"http://{args.host}:{args.port}/"
        print(f"\nThe portal is at {url}  (Ctrl-C stops everything)\nDemo logins:")
        for email, password, role, org in logins:
            print(f"  {email:<26} {password:<22} {role:<7} {org}")
        sys.stdout.flush()
        from waitress import serve

        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        serve(app, host=args.host, port=args.port, threads=8, ident="portal")
    except KeyboardInterrupt:
        print("\nStopping…")
    finally:
        for child in reversed(children):
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if redis_server:
            redis_server.stop()
        print("Stopped the portal, its worker, the sandbox and the embedded Redis.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
