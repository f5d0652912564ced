"""Factories and look-ups shared by the sync engine's tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from portal.extensions import db
from portal.models import CrmIntegration
from portal.platform_models import CrmLink, Lead, LeadOrigin, MarketingEvent, SyncFailure, SyncRun, normalize_email

PLATFORM_OPTION = 100000000  # the sandbox's "ZiftONE" lead source value
ROOT = Path(__file__).resolve().parents[2]


def configure(app, integration_id: int, **fields) -> None:
    """Set integration settings (the lead source value of the sandbox unless given)."""
    fields.setdefault("lead_source_value", PLATFORM_OPTION)
    with app.app_context():
        integ = db.session.get(CrmIntegration, integration_id)
        for key, value in fields.items():
            setattr(integ, key, value)
        db.session.commit()


def make_leads(app, org_id: int, n: int, *, score: int = 80, origin: LeadOrigin = LeadOrigin.marketing,
               prefix: str = "lead", events: tuple[str, ...] = (), start: int = 0, **fields) -> list[int]:
    """``n`` leads with every standard field filled; each gets one event of every type in ``events``."""
    ids = []
    when = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    with app.app_context():
        leads = []
        for i in range(start, start + n):
            email = f"{prefix}{i}@example.net"
            values = {
                "first_name": f"First{i}", "last_name": f"Last{i}", "company": f"Company {i}",
                "job_title": "Buyer", "phone": f"+1 555 7{i:04d}", "mobile_phone": f"+1 555 8{i:04d}",
                "address_line1": f"{i} Main Street", "city": "Portland", "state": "OR", "postal_code": "97201",
                "country": "US", **fields,
            }
            lead = Lead(organization_id=org_id, email=email, email_normalized=normalize_email(email),
                        origin=origin, score=score, **values)
            leads.append(lead)
        db.session.add_all(leads)
        db.session.flush()
        for lead in leads:
            for k, kind in enumerate(events):
                db.session.add(MarketingEvent(organization_id=org_id, lead_id=lead.id, event_type=kind,
                                              occurred_at=when + timedelta(minutes=k), details=f"detail {k}"))
        db.session.commit()
        ids = [ld.id for ld in leads]
    return ids


def add_event(app, lead_id: int, kind: str) -> int:
    with app.app_context():
        lead = db.session.get(Lead, lead_id)
        event = MarketingEvent(organization_id=lead.organization_id, lead_id=lead_id, event_type=kind,
                               occurred_at=datetime(2026, 3, 2, tzinfo=UTC))
        db.session.add(event)
        db.session.commit()
        return event.id


def run_steps(app, integration_id: int, steps: list[str] | None = None, *, kind: str = "manual",
              dry_run: bool = False, lead_ids: list[int] | None = None, failure_ids: list[int] | None = None) -> dict:
    """Run the engine in-process; the run as a plain dict (status, message, counts, steps by name)."""
    from portal import sync

    with app.app_context():
        integ = db.session.get(CrmIntegration, integration_id)
        run = sync.new_run(integ, kind, dry_run=dry_run, trigger="test")
        run = sync.execute(run.id, steps=steps, lead_ids=lead_ids, failure_ids=failure_ids)
        return run_dict(run)


def make_lists(app, integration_id: int, names: set[str] | None = None, keep: bool = True) -> dict[str, int]:
    """Contact lists made from the CRM's marketing lists of these names (all by default); their ids by name."""
    from portal import contact_lists
    from portal.sync.steps.contact_lists import live_marketing_lists

    made = {}
    with app.app_context():
        integ = db.session.get(CrmIntegration, integration_id)
        for crm_list in live_marketing_lists(integ):
            if names is None or crm_list.name in names:
                made[crm_list.name] = contact_lists.create_from_crm(integ, crm_list, crm_list.name, keep).id
        db.session.commit()
    return made


def run_dict(run: SyncRun) -> dict:
    return {"id": run.id, "status": run.status.value, "message": run.message, "created": run.created_count,
            "updated": run.updated_count, "skipped": run.skipped_count, "failed": run.failed_count,
            "steps": {s["name"]: s for s in run.steps}}


def failures(app, integration_id: int, status: str | None = "pending") -> list[dict]:
    with app.app_context():
        query = select(SyncFailure).where(SyncFailure.integration_id == integration_id)
        if status:
            query = query.where(SyncFailure.status == status)
        return [{c.name: getattr(f, c.name) for c in SyncFailure.__table__.columns}
                for f in db.session.scalars(query.order_by(SyncFailure.id))]


def link_count(app, integration_id: int, local_type: str | None = None) -> int:
    with app.app_context():
        query = select(func.count()).select_from(CrmLink).where(CrmLink.integration_id == integration_id)
        if local_type:
            query = query.where(CrmLink.local_type == local_type)
        return db.session.scalar(query)


def event_ids(app, lead_ids: list[int]) -> list[int]:
    with app.app_context():
        return list(db.session.scalars(select(MarketingEvent.id).where(MarketingEvent.lead_id.in_(lead_ids))))


def emails_in_crm(crm, entity: str = "lead") -> Counter:
    """How many CRM records of an entity carry each (normalised) email."""
    return Counter(normalize_email(r.get("emailaddress1")) for r in crm.records(entity, limit=100000)
                   if r.get("emailaddress1"))


def note_refs(crm) -> Counter:
    """How many notes carry each event reference ``[ref:E<id>]``."""
    refs: Counter = Counter()
    for note in crm.records("annotation", limit=100000):
        subject = note.get("subject") or ""
        start = subject.rfind("[ref:E")
        if start >= 0:
            refs[int(subject[start + 6:-1])] += 1
    return refs


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll until the condition is truthy; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(0.2, delay * 1.5)


def worker_env(app) -> dict:
    """The environment of a worker process that shares the test's database, Redis and encryption key."""
    cfg = app.config
    return {**os.environ, "DATABASE_URL": cfg["SQLALCHEMY_DATABASE_URI"], "REDIS_URL": cfg["REDIS_URL"],
            "PORTAL_ENCRYPTION_KEYS": cfg["PORTAL_ENCRYPTION_KEYS"], "SECRET_KEY": cfg["SECRET_KEY"],
            "CRM_ALLOWED_NETWORKS": cfg["CRM_ALLOWED_NETWORKS"], "PORTAL_INSTANCE_PATH": cfg["INSTANCE_PATH"],
            "PYTHONPATH": str(ROOT)}


def start_worker(app, log_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m jobs.worker`` as a real process, its output in ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the caller through stop_worker
    # A session of its own: a kill reaches the workers a pool forked, which would otherwise go on taking jobs.
    proc = subprocess.Popen([sys.executable, "-m", "jobs.worker", *args], cwd=ROOT, start_new_session=True,
                            env={**worker_env(app), **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def stop_worker(proc: subprocess.Popen, kill: bool = False) -> None:
    """Stop a worker started by ``start_worker`` (SIGTERM, its warm shutdown) or kill it, with every process it
    forked; one that does not stop within 15 s is killed."""
    if proc.poll() is None:
        if kill:
            _kill_group(proc)
        else:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
    proc.log_file.close()  # type: ignore[attr-defined]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the worker and the workers it forked (its own session's group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def steps_of(run: dict) -> dict:
    return run["steps"]


def dump(obj) -> str:
    return json.dumps(obj, default=str, indent=1)


def use_online(app, connected: dict) -> None:
    """Switch the connected integration to Dynamics 365 online against the sandbox's online mode."""
    from portal.crypto import encrypt

    crm = connected["crm"]
    app.config["CRM_AUTHORITY_HOST"] = crm.authority_host
    app.config["CRM_CA_BUNDLE"] = crm.ca_file
    with app.app_context():
        integ = db.session.get(CrmIntegration, connected["integration_id"])
        integ.connection_kind = "online"
        integ.environment_url, integ.tenant_id, integ.client_id = crm.environment_url, crm.tenant_id, crm.client_id
        integ.client_secret_encrypted = encrypt(crm.client_secret)
        db.session.commit()
