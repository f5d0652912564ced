"""Every setting of the portal, read from the environment, with defaults for the embedded setup."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """Return an environment variable stripped of blanks, or the default when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
    """Return an environment variable as an integer, refusing garbage, or a number outside low to high, with a clear
    message."""
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise RuntimeError(f"{name} must be a whole number, not {raw!r}") from exc
    if (low is not None and value < low) or (high is not None and value > high):
        raise RuntimeError(f"{name} must be from {low} to {high}, not {raw!r}")
    return value


def env_float(name: str, default: float) -> float:
    """Return an environment variable as a number of seconds (decimals allowed), refusing garbage."""
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise RuntimeError(f"{name} must be a number, not {raw!r}") from exc
    if value < 0 or value != value or value == float("inf"):
        raise RuntimeError(f"{name} must be a positive number, not {raw!r}")
    return value


def env_bool(name: str, default: bool) -> bool:
    """Return an environment variable as a boolean (1/true/yes/on)."""
    raw = env_str(name).lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def instance_path() -> Path:
    """Folder for the local database, keys and the embedded Redis (``PORTAL_INSTANCE_PATH``)."""
    path = Path(env_str("PORTAL_INSTANCE_PATH", str(PROJECT_ROOT / "instance")))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_secret(path: Path, make: callable, what: str) -> str:
    """Read a generated secret from the instance folder, creating it (mode 600) on first run."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    log.warning("%s is not set: generated one into %s (set it in the environment in production)", what, path)
    return value


def load_config(overrides: dict | None = None) -> dict:
    """Build the Flask configuration from the environment, then apply explicit overrides."""
    inst = instance_path()
    overrides = dict(overrides or {})
    cfg: dict = {
        "INSTANCE_PATH": str(inst),
        "SQLALCHEMY_DATABASE_URI": env_str("DATABASE_URL", f"sqlite:///{inst / 'portal.sqlite3'}"),
        "REDIS_URL": env_str("REDIS_URL"),
        "PLATFORM_NAME": env_str("PLATFORM_NAME", "ZiftONE"),
        "CRM_ALLOWED_NETWORKS": env_str("CRM_ALLOWED_NETWORKS"),
        "CRM_ALLOWED_ENDPOINTS": env_str("CRM_ALLOWED_ENDPOINTS"),
        # Dynamics 365 online: where Microsoft Entra ID signs the portal in (the sandbox stands in for it on
        # loopback), and a CA bundle to trust instead of the public ones (only for a CRM with a private CA).
        "CRM_AUTHORITY_HOST": env_str("CRM_AUTHORITY_HOST", "https://login.microsoftonline.com"),
        "CRM_CA_BUNDLE": env_str("CRM_CA_BUNDLE"),
        "SMTP_HOST": env_str("SMTP_HOST"),
        "SMTP_PORT": env_int("SMTP_PORT", 25),
        "SMTP_FROM": env_str("SMTP_FROM", "portal@localhost"),
        "LOGIN_MAX_FAILURES": env_int("LOGIN_MAX_FAILURES", 5),
        "LOGIN_LOCKOUT_SECONDS": env_int("LOGIN_LOCKOUT_SECONDS", 300),
        "SESSION_COOKIE_SECURE": env_bool("SESSION_COOKIE_SECURE", False),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "WTF_CSRF_TIME_LIMIT": None,  # pages stay open for long; the token is tied to the session instead
        # No ping before each checkout (a round trip per request); connections are recycled instead, and a
        # request on a connection the server dropped fails once and the pool replaces it.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_recycle": 300},
        "WORKER_STALE_SECONDS": env_int("WORKER_STALE_SECONDS", 5),
        # Page parts drawn from saved settings, kept per process for each combination of values they show
        # (portal.page_cache); 0 draws every page anew.
        "RENDERED_CACHE_SIZE": env_int("RENDERED_CACHE_SIZE", 256),
        # And at most this many characters of text in all (keys and parts): values a CRM writes have no set length.
        "RENDERED_CACHE_BYTES": env_int("RENDERED_CACHE_BYTES", 16_000_000),
        # Request bodies (forms and the JSON API) are small; refuse anything larger than this.
        "MAX_CONTENT_LENGTH": env_int("MAX_CONTENT_LENGTH", 5 * 1024 * 1024),
        # At most 128: the connector halves its limit once per burst of 429s and a request waits through at most 8
        # (MAX_THROTTLE_WAITS), so from 128 the limit can come down to 1 within one request's waits.
        "SYNC_PARALLEL_BATCHES": env_int("SYNC_PARALLEL_BATCHES", 2, low=1, high=128),
        "SYNC_LOCK_SECONDS": env_int("SYNC_LOCK_SECONDS", 90),
        # A batch of n records may take SYNC_BATCH_BASE_SECONDS + n * SYNC_BATCH_RECORD_SECONDS (plug-ins and
        # workflows on the server make large batches slow): 60 s + 0.3 s per record, 6 minutes for 1,000.
        "SYNC_BATCH_BASE_SECONDS": env_float("SYNC_BATCH_BASE_SECONDS", 60.0),
        "SYNC_BATCH_RECORD_SECONDS": env_float("SYNC_BATCH_RECORD_SECONDS", 0.3),
        # After Server Busy a batch waits this long before it goes again, doubled each round (at most 8 s).
        "SYNC_BUSY_BACKOFF_SECONDS": env_float("SYNC_BUSY_BACKOFF_SECONDS", 0.25),
        # Job timeouts that fit the work: a run gets a base plus a time per local record (never 6 h for all);
        # a push its own; a run that finds another in progress comes back after SYNC_WAIT_SECONDS.
        "SYNC_RUN_TIMEOUT_BASE": env_int("SYNC_RUN_TIMEOUT_BASE", 900),
        "SYNC_SECONDS_PER_RECORD": env_float("SYNC_SECONDS_PER_RECORD", 0.5),
        "SYNC_PUSH_TIMEOUT": env_int("SYNC_PUSH_TIMEOUT", 600),
        "SYNC_WAIT_SECONDS": env_int("SYNC_WAIT_SECONDS", 5),
        # A connection test ends within this, however the CRM answers (its job's timeout is a little longer).
        "CONNECTION_TEST_DEADLINE": env_int("CONNECTION_TEST_DEADLINE", 45),
        # A connection test counts as one request in flight to its CRM: it waits this long for a slot the
        # integration's sync holds (going before the sync's next batches), then says the CRM is busy with the sync.
        "CONNECTION_TEST_SLOT_WAIT": env_int("CONNECTION_TEST_SLOT_WAIT", 20),
        # How long a push waits for one of its CRM's in-flight slots before coming back later (see sync/inflight).
        "SYNC_PUSH_SLOT_WAIT": env_float("SYNC_PUSH_SLOT_WAIT", 1.0),
        # A push worker keeps an authenticated CRM session (one socket) for this many integrations at most.
        "SYNC_KEPT_GATEWAYS": env_int("SYNC_KEPT_GATEWAYS", 100),
        # How long a writer waits for a record another writer is sending (then leaves it to the next run).
        "SYNC_CLAIM_WAIT_SECONDS": env_int("SYNC_CLAIM_WAIT_SECONDS", 60),
        # For measurements only: one look-up and one write per record, as most integrations do (bench/sync.py).
        "SYNC_ONE_REQUEST_PER_RECORD": env_bool("SYNC_ONE_REQUEST_PER_RECORD", False),
        # For measurements only: sync jobs return how many SQL statements they ran.
        "SYNC_COUNT_SQL": env_bool("SYNC_COUNT_SQL", False),
    }
    cfg.update(overrides)
    if "SECRET_KEY" not in cfg:
        cfg["SECRET_KEY"] = env_str("SECRET_KEY") or _file_secret(
            inst / "secret_key", lambda: secrets.token_urlsafe(48), "SECRET_KEY"
        )
    if "PORTAL_ENCRYPTION_KEYS" not in cfg:
        cfg["PORTAL_ENCRYPTION_KEYS"] = env_str("PORTAL_ENCRYPTION_KEYS") or _file_secret(
            inst / "encryption_keys", lambda: Fernet.generate_key().decode(), "PORTAL_ENCRYPTION_KEYS"
        )
    if str(cfg["SQLALCHEMY_DATABASE_URI"]).startswith("postgresql"):
        # No server-side prepared statements: psycopg prepares a query after 5 runs, and PostgreSQL may then keep
        # a generic plan made while a table was small (before a large import), scanning whole tables afterwards.
        options = dict(cfg["SQLALCHEMY_ENGINE_OPTIONS"])
        options["connect_args"] = {**options.get("connect_args", {}), "prepare_threshold": None}
        cfg["SQLALCHEMY_ENGINE_OPTIONS"] = options
    cfg["SESSION_COOKIE_SECURE"] = cfg["SESSION_COOKIE_SECURE"] or cfg.get("PREFERRED_URL_SCHEME") == "https"
    cfg["REMEMBER_COOKIE_SECURE"] = cfg["SESSION_COOKIE_SECURE"]
    return cfg
