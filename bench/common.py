"""The production-like stack the benchmarks measure: PostgreSQL, Redis, the sandbox CRM, a real worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.testing import SandboxServer  # noqa: E402
from tests import services  # noqa: E402


@dataclass
class Stack:
    """Everything a benchmark talks to, with the app bound to the benchmark's own database."""

    app: object
    env: dict
    sandbox: SandboxServer
    database_url: str
    workers: list[subprocess.Popen] = field(default_factory=list)
    started: int = 0

    def start_worker(self, queues: str = "") -> psutil.Process:
        """A real RQ worker process (python -m jobs.worker), as in production."""
        args = [sys.executable, "-m", "jobs.worker"] + (["--queues", queues] if queues else [])
        folder = Path(self.env["PORTAL_INSTANCE_PATH"])
        folder.mkdir(parents=True, exist_ok=True)
        self.started += 1
        log = open(folder / f"worker-{self.started}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return psutil.Process(proc.pid)

    def start_worker_args(self, args: list[str]) -> psutil.Process:
        """A real worker process started with these arguments (``--queues``, ``--processes``, …)."""
        folder = Path(self.env["PORTAL_INSTANCE_PATH"])
        folder.mkdir(parents=True, exist_ok=True)
        self.started += 1
        log = open(folder / f"worker-{self.started}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "jobs.worker", *args], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return psutil.Process(proc.pid)

    def stop_workers(self) -> None:
        """Stop every worker started here."""
        for proc in self.workers:
            proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers.clear()


@contextlib.contextmanager
def stack(sandbox_threads: int = 8) -> Iterator[Stack]:
    """Start PostgreSQL (or use the running one), Redis and the sandbox; migrate a fresh database."""
    folder = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    with services.postgres_server() as admin, services.redis_server() as redis_url, \
            SandboxServer(seed=False, platform_option=True) as crm:
        url = services.create_database(admin)
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": "bench-secret",
            "PORTAL_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "PORTAL_INSTANCE_PATH": str(folder),
            "CRM_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128", "PYTHONUNBUFFERED": "1",
            # Dynamics 365 online: the sandbox's TLS port stands in for Microsoft Entra ID.
            "CRM_AUTHORITY_HOST": crm.authority_host, "CRM_CA_BUNDLE": crm.ca_file,
        })
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PORTAL_ENCRYPTION_KEYS",
                                               "PORTAL_INSTANCE_PATH", "CRM_ALLOWED_NETWORKS", "CRM_AUTHORITY_HOST",
                                               "CRM_CA_BUNDLE")})
        from portal import create_app

        app = create_app()
        with app.app_context():
            from flask_migrate import upgrade

            upgrade()
        st = Stack(app=app, env=env, sandbox=crm, database_url=url)
        try:
            yield st
        finally:
            st.stop_workers()
            with app.app_context():
                from portal.extensions import db

                db.engine.dispose()
            services.drop_database(admin, url)
            shutil.rmtree(folder, ignore_errors=True)


def partner_with_integration(st: Stack, name: str = "Bench Partner", **settings) -> tuple[int, int]:
    """A partner whose Dynamics integration points at the sandbox, On, with the given settings."""
    from portal.cli import create_org
    from portal.crypto import encrypt
    from portal.extensions import db
    from portal.models import integration_for

    with st.app.app_context():
        org = create_org(name, "partner", [])
        db.session.flush()
        integ = integration_for(org)
        crm = st.sandbox
        integ.username, integ.domain, integ.org_url = crm.username, crm.domain, crm.org_url
        integ.password_encrypted = encrypt(crm.password)
        if settings.pop("online", False):
            integ.connection_kind = "online"
            integ.environment_url, integ.tenant_id, integ.client_id = crm.environment_url, crm.tenant_id, crm.client_id
            integ.client_secret_encrypted = encrypt(crm.client_secret)
        integ.lead_source_value = 100000000
        integ.enabled = True
        for key, value in settings.items():
            setattr(integ, key, value)
        db.session.commit()
        return org.id, integ.id


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll until the predicate returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
