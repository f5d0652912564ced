"""Shared fixtures: services started once per session, the app on SQLite and PostgreSQL, factories."""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from portal import create_app
from portal.extensions import db

from . import services

TEST_KEY = Fernet.generate_key().decode()
PASSWORD = "Correct-Horse-9"


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL of a PostgreSQL server (running, or started for the session)."""
    with services.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server of the session's own."""
    with services.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def instance_dir() -> Iterator[Path]:
    """An instance folder for the session (no test touches the developer's ``instance/``)."""
    with tempfile.TemporaryDirectory(prefix="portal-instance-") as folder:
        yield Path(folder)


def migrate_to_head(url: str, instance: Path) -> None:
    """Build the schema from empty with the real migrations."""
    from flask_migrate import upgrade

    app = create_app(base_overrides(url, "redis://unused", instance))
    with app.app_context():
        upgrade()
        db.engine.dispose()


def base_overrides(url: str, redis: str, instance: Path) -> dict:
    """The configuration every test app shares."""
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": url,
        "REDIS_URL": redis,
        "SECRET_KEY": "test-secret-key",
        "PORTAL_ENCRYPTION_KEYS": TEST_KEY,
        "INSTANCE_PATH": str(instance),
        "CRM_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        "WORKER_STALE_SECONDS": 3,
    }


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request, instance_dir) -> Iterator[str]:
    """A migrated database per backend; every test that uses ``app`` runs on both."""
    if request.param == "sqlite":
        url = f"sqlite:///{instance_dir / 'test.sqlite3'}"
        migrate_to_head(url, instance_dir)
        yield url
        return
    admin = request.getfixturevalue("pg_admin_url")
    url = services.create_database(admin)
    migrate_to_head(url, instance_dir)
    yield url
    services.drop_database(admin, url)


@pytest.fixture
def app(database_url, redis_url, instance_dir):
    """The portal on a clean database."""
    flask_app = create_app(base_overrides(database_url, redis_url, instance_dir))
    yield flask_app
    with flask_app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
        db.engine.dispose()
    conn = flask_app.extensions.get("portal_redis")
    if conn is not None:
        conn.flushdb()
        conn.close()


@pytest.fixture
def client(app):
    """A test client."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner."""
    return app.test_cli_runner()


TOKEN_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|"X-CSRFToken": "([^"]+)"')


def csrf_from(html: str) -> str:
    """The CSRF token in a page."""
    match = TOKEN_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1) or match.group(2)


TOKEN_VALUE_RE = re.compile(r'(name="[\w-]*csrf_token"[^>]*value=")([^"]+)(")|("X-CSRFToken": ")([^"]+)(")')


def tokens(html: str) -> set[str]:
    """Every CSRF token in a page."""
    return {m.group(2) or m.group(5) for m in TOKEN_VALUE_RE.finditer(html)}


def without_tokens(html: str) -> str:
    """The page with its CSRF tokens written as TOKEN: a token is signed with the second it was made, so two answers
    a second apart differ there alone."""
    return TOKEN_VALUE_RE.sub(lambda m: (m.group(1) or m.group(4)) + "TOKEN" + (m.group(3) or m.group(6)), html)


@dataclass
class Factory:
    """Small helpers that make test data and return ids."""

    app: object

    def org(self, name: str, kind: str = "partner", suppliers: tuple[str, ...] = ()) -> int:
        from portal.cli import create_org

        with self.app.app_context():
            org = create_org(name, kind, list(suppliers))
            db.session.commit()
            return org.id

    def user(self, email: str, org: str, role: str = "admin", password: str = PASSWORD) -> str:
        from portal.cli import create_user

        with self.app.app_context():
            create_user(email, password, org, role)
            db.session.commit()
        return email

    def profile(self, integration_id: int) -> None:
        """General Settings and a Usage Profile saved (the partner's first supplier, Marketing Automation)."""
        from portal.models import CrmIntegration

        with self.app.app_context():
            integ = db.session.get(CrmIntegration, integration_id)
            integ.supplier_id = integ.organization.suppliers[0].id
            integ.marketing_automation = True
            db.session.commit()

    def integration(self, org_id: int, password: str | None = None, **fields) -> int:
        from portal.crypto import encrypt
        from portal.models import Organization, integration_for

        with self.app.app_context():
            integ = integration_for(db.session.get(Organization, org_id))
            if password is not None:
                integ.password_encrypted = encrypt(password)
            for key, value in fields.items():
                setattr(integ, key, value)
            db.session.commit()
            return integ.id


@pytest.fixture
def factory(app) -> Factory:
    """Test-data helpers bound to the app."""
    return Factory(app)


class Auth:
    """Signs a test client in and out."""

    def __init__(self, client):
        self.client = client

    def login(self, email: str, password: str = PASSWORD):
        page = self.client.get("/login")
        return self.client.post(
            "/login", data={"email": email, "password": password, "csrf_token": csrf_from(page.text)}
        )

    def token(self, path: str = "/settings/crm") -> str:
        return csrf_from(self.client.get(path).text)


@pytest.fixture
def auth(client) -> Auth:
    """Sign-in helper."""
    return Auth(client)


@pytest.fixture
def partner_admin(factory, auth) -> dict:
    """A supplier, a partner with an administrator signed in, and the partner's integration id."""
    factory.org("Acme Supplier", "supplier")
    org_id = factory.org("Acme Partner", "partner", ("Acme Supplier",))
    factory.user("admin@acme.example", "Acme Partner", "admin")
    integration_id = factory.integration(org_id)
    resp = auth.login("admin@acme.example")
    assert resp.status_code == 302
    return {"org_id": org_id, "integration_id": integration_id, "email": "admin@acme.example"}


@pytest.fixture(scope="session")
def crm_sandbox():
    """One sandbox Dynamics CRM for the portal's tests (real NTLM on loopback); tests reset what they need."""
    from sandbox.testing import SandboxServer

    with SandboxServer(seed=True, platform_option=True) as server:
        yield server


@pytest.fixture
def crm(crm_sandbox):
    """The shared sandbox with its faults cleared after the test."""
    yield crm_sandbox
    crm_sandbox.clear_faults()


@pytest.fixture
def connected(app, factory, partner_admin, crm) -> dict:
    """The signed-in partner's integration saved with the sandbox's connection settings."""
    from portal.crypto import encrypt

    with app.app_context():
        from portal.models import CrmIntegration

        row = db.session.get(CrmIntegration, partner_admin["integration_id"])
        row.username, row.domain, row.org_url = crm.username, crm.domain, crm.org_url
        row.odata_url = crm.webapi_url
        row.password_encrypted = encrypt(crm.password)
        db.session.commit()
    return {**partner_admin, "crm": crm}


@contextlib.contextmanager
def session_time_zone(app, zone: str):
    """Inside the block, PostgreSQL sessions run in ZONE (as a server configured far from UTC would): it gives
    zoned timestamps in that zone. SQLite has no session time zone: the block changes nothing there."""
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine

    def set_zone(dbapi_connection, _record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET TIME ZONE '{zone}'")
        dbapi_connection.commit()

    postgres = engine.dialect.name == "postgresql"
    if postgres:
        event.listen(engine, "connect", set_zone)
        engine.dispose()
    try:
        yield
    finally:
        if postgres:
            event.remove(engine, "connect", set_zone)
            engine.dispose()


@contextlib.contextmanager
def count_statements(app):
    """The SQL statements the app runs inside the block, as a list (its length is the count)."""
    from sqlalchemy import event

    seen: list[str] = []
    with app.app_context():
        engine = db.engine

    def record(_conn, _cursor, statement, *_args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
