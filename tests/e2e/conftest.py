"""Browser-test fixtures: one live portal (waitress), worker, Redis and sandbox CRM per session; Debian's Chromium."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import delete, select

from portal import create_app
from portal.embedded import free_port
from portal.extensions import db

from ..conftest import TEST_KEY, base_overrides, migrate_to_head
from .accessibility import AccessibilityScan

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = PROJECT_ROOT / "screenshots"
CHROMIUM = os.environ.get("PORTAL_CHROMIUM", "/usr/bin/chromium")
# A Redis database of their own, so other tests' flushdb never touches the live worker's keys.
REDIS_DB = 7

ADMIN = ("admin@partner.example", "Tulip-Harbor-42")
MEMBER = ("member@partner.example", "Maple-River-17")


def _wait_until(check: Callable[[], bool], what: str, timeout: float, procs: list[LiveProcess]) -> None:
    """Poll ``check`` until true; fail early, with the logs, when a child process died."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        for proc in procs:
            proc.raise_if_dead()
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s\n" + "\n".join(p.tail() for p in procs))


@dataclass
class LiveProcess:
    """A child process of the stack with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = None

    def start(self) -> LiveProcess:
        """Start the process with stdout and stderr going to its log file."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=PROJECT_ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def tail(self, lines: int = 40) -> str:
        """The end of the log, for error messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def raise_if_dead(self) -> None:
        """Fail with the log when the process exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def stop(self) -> None:
        """Terminate, then kill if it does not stop in time; always close the log."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class LiveStack:
    """The running portal and what the tests need to reach behind it (database, sandbox)."""

    url: str
    crm: object
    app: object
    integration_id: int
    folder: Path
    procs: list[LiveProcess] = field(default_factory=list)

    def wait_for_idle_jobs(self, timeout: float = 20.0) -> None:
        """Wait until no job of the demo integration is queued or running (so a reset cannot race one)."""
        from portal.models import BackgroundJob, JobStatus

        def idle() -> bool:
            with self.app.app_context():
                busy = db.session.scalar(select(BackgroundJob.id).where(
                    BackgroundJob.integration_id == self.integration_id,
                    BackgroundJob.status.in_([JobStatus.queued, JobStatus.started])).limit(1))
                db.session.remove()
            return busy is None

        _wait_until(idle, "the background jobs", timeout, self.procs)

    def reset(self, *, connected: bool = False, password: str | None = None, tested: bool = False,
              enabled: bool = False) -> None:
        """Put the demo integration back to a fresh row (column defaults), optionally connected, tested, On."""
        from portal.crypto import encrypt
        from portal.models import BackgroundJob, CrmIntegration, utcnow

        self.wait_for_idle_jobs()
        with self.app.app_context():
            row = db.session.get(CrmIntegration, self.integration_id)
            for column in CrmIntegration.__table__.columns:
                if column.primary_key or column.key in ("organization_id", "kind"):
                    continue
                default = column.default
                if default is None:
                    value = None
                elif default.is_callable:
                    value = default.arg(None)
                else:
                    value = default.arg
                setattr(row, column.key, value)
            db.session.execute(delete(BackgroundJob).where(BackgroundJob.integration_id == self.integration_id))
            if connected:
                row.username, row.domain = self.crm.username, self.crm.domain
                row.org_url, row.odata_url = self.crm.org_url, self.crm.webapi_url
                row.password_encrypted = encrypt(password or self.crm.password)
                row.connection_saved_at = utcnow()
            if tested:
                row.last_test_ok, row.last_test_at = True, utcnow()
                row.last_test_fingerprint = row.connection_fingerprint()
                row.last_test_message = "Connected (set up by the test)."
            row.enabled = enabled
            db.session.commit()
            db.session.remove()

    def failed_run(self, leads: int = 3) -> int:
        """A run whose marketing leads the CRM refused (the user lacks the create privilege); its id."""
        from ..integration.sync_helpers import configure, make_leads, run_steps

        with self.app.app_context():
            from portal.models import CrmIntegration

            org_id = db.session.get(CrmIntegration, self.integration_id).organization_id
            db.session.remove()
        configure(self.app, self.integration_id, marketing_automation=True, ma_sync_leads=True, ma_score_threshold=50)
        self.failed_leads = make_leads(self.app, org_id, leads, prefix=f"refused-{uuid.uuid4().hex}-")
        self.crm.set_faults(missing_privilege="prvCreateLead")
        try:
            run = run_steps(self.app, self.integration_id, ["push_marketing_leads"])
        finally:
            self.crm.set_faults(missing_privilege=[])
        assert run["failed"] >= leads, run
        return run["id"]

    def last_job_seconds(self) -> tuple[float, float]:
        """The last job's wait in the queue and its run time, as the worker recorded them."""
        from portal.models import BackgroundJob

        with self.app.app_context():
            job = db.session.scalar(select(BackgroundJob).where(BackgroundJob.integration_id == self.integration_id)
                                    .order_by(BackgroundJob.created_at.desc()).limit(1))
            waited = (job.started_at - job.created_at).total_seconds()
            ran = (job.finished_at - job.started_at).total_seconds()
            db.session.remove()
        return waited, ran

    def integration(self) -> dict:
        """The demo integration's columns as they are saved now."""
        from portal.models import CrmIntegration

        with self.app.app_context():
            row = db.session.get(CrmIntegration, self.integration_id)
            values = {c.key: getattr(row, c.key) for c in CrmIntegration.__table__.columns}
            db.session.remove()
        return values


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # loopback only
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _worker_registered(redis_url: str) -> bool:
    from redis import Redis
    from rq import Worker

    conn = Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        return Worker.count(connection=conn) > 0
    finally:
        conn.close()


@pytest.fixture(scope="session")
def live_stack(redis_url, crm_sandbox) -> Iterator[LiveStack]:
    """Migrated SQLite, seeded demo, the portal under waitress and a real worker, all on loopback."""
    from portal.cli import seed_demo_data
    from portal.models import CrmIntegration, Organization

    redis = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    with tempfile.TemporaryDirectory(prefix="portal-e2e-") as tmp:
        folder = Path(tmp)
        db_url = f"sqlite:///{folder / 'portal.sqlite3'}"
        migrate_to_head(db_url, folder)
        app = create_app(base_overrides(db_url, redis, folder))
        with app.app_context():
            seed_demo_data({"org_url": crm_sandbox.org_url, "odata_url": crm_sandbox.webapi_url,
                            "username": crm_sandbox.username, "domain": crm_sandbox.domain,
                            "password": crm_sandbox.password})
            partner = db.session.scalar(select(Organization).where(Organization.name == "Demo Partner"))
            integration_id = db.session.scalar(
                select(CrmIntegration.id).where(CrmIntegration.organization_id == partner.id))
            db.session.remove()

        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "REDIS_URL": redis,
            "SECRET_KEY": "e2e-secret-key",
            "PORTAL_ENCRYPTION_KEYS": TEST_KEY,
            "PORTAL_INSTANCE_PATH": str(folder),
            "CRM_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            # Dynamics 365 online: the sandbox's TLS port stands in for Microsoft Entra ID.
            "CRM_AUTHORITY_HOST": crm_sandbox.authority_host,
            "CRM_CA_BUNDLE": crm_sandbox.ca_file,
            "WORKER_STALE_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
        }
        portal = LiveProcess("portal", [sys.executable, "-m", "tests.e2e.live_portal", str(port)], env,
                             folder / "portal.log")
        worker = LiveProcess("worker", [sys.executable, "-m", "jobs.worker"], env, folder / "worker.log")
        stack = LiveStack(url=f"http://127.0.0.1:{port}", crm=crm_sandbox, app=app,
                          integration_id=integration_id, folder=folder, procs=[portal, worker])
        try:
            portal.start()
            worker.start()
            _wait_until(lambda: _answers(f"{stack.url}/login"), "the portal", 30, stack.procs)
            _wait_until(lambda: _worker_registered(redis), "the worker", 30, stack.procs)
            yield stack
        finally:
            for proc in reversed(stack.procs):
                proc.stop()
            with app.app_context():
                db.engine.dispose()
            conn = app.extensions.get("portal_redis")
            if conn is not None:
                conn.close()


@pytest.fixture(scope="session")
def base_url(live_stack) -> str:
    """Playwright's base URL: the live portal."""
    return live_stack.url


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args) -> dict:
    """Debian's Chromium (Playwright never downloads a browser here), headless and quiet on the network."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    }


# Page states the accessibility scan covered, per test; summed at the end of the session.
SCANNED: list[int] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many page states the accessibility scan covered."""
    if SCANNED:
        terminalreporter.write_line(f"accessibility scan: {sum(SCANNED)} page states in {len(SCANNED)} browser tests "
                                    "(axe-core, WCAG 2.1 A/AA; serious or critical violations fail the test)")


@pytest.fixture
def new_context(new_context) -> Iterator[Callable]:
    """Every browser context a test opens, with JavaScript, is scanned; serious or critical violations fail the test."""
    scan = AccessibilityScan()

    def make(**kwargs):
        context = new_context(**kwargs)
        if kwargs.get("java_script_enabled", True):
            scan.install(context)
        return context

    yield make
    scan.flush()
    SCANNED.append(scan.states)
    assert not scan.findings and not scan.errors, "accessibility violations:\n" + scan.report()


@pytest.fixture
def stack(live_stack) -> Iterator[LiveStack]:
    """The live stack with the demo integration fresh and the sandbox reseeded without faults; faults cleared after."""
    # Other tests share the sandbox and may leave it unseeded or faulty.
    live_stack.crm.reset(seed=True, platform_option=True)
    live_stack.reset()
    try:
        yield live_stack
    finally:
        live_stack.crm.clear_faults()
        with contextlib.suppress(RuntimeError):
            live_stack.wait_for_idle_jobs()


def sign_in(page, account: tuple[str, str] = ADMIN) -> None:
    """Sign in through the form and land on the page the portal opens on."""
    page.goto("/login")
    page.get_by_label("Email").fill(account[0])
    page.get_by_label("Password", exact=True).fill(account[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/login" not in url)


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under screenshots/ (kept out of git) for a person to look at."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
