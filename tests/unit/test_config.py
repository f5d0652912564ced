"""The app factory and configuration from the environment."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet

from portal import create_app
from portal.config import load_config


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PORTAL_ENCRYPTION_KEYS", "PLATFORM_NAME",
                 "CRM_ALLOWED_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORTAL_INSTANCE_PATH", str(tmp_path))
    return tmp_path


def test_defaults_use_instance_folder(clean_env, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config()
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{clean_env / 'portal.sqlite3'}"
    assert cfg["REDIS_URL"] == ""
    assert cfg["PLATFORM_NAME"] == "ZiftONE"
    assert cfg["CRM_ALLOWED_NETWORKS"] == ""
    # Generated keys are written under instance/ with a warning, and are real Fernet keys.
    keys_file = clean_env / "encryption_keys"
    assert keys_file.read_text().strip() == cfg["PORTAL_ENCRYPTION_KEYS"]
    Fernet(cfg["PORTAL_ENCRYPTION_KEYS"].encode())
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    assert "PORTAL_ENCRYPTION_KEYS is not set" in caplog.text
    # A second start reuses them rather than making data unreadable.
    assert load_config()["PORTAL_ENCRYPTION_KEYS"] == cfg["PORTAL_ENCRYPTION_KEYS"]
    assert load_config()["SECRET_KEY"] == cfg["SECRET_KEY"]


def test_environment_wins(clean_env, monkeypatch):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/x")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SECRET_KEY", "s3cret")
    monkeypatch.setenv("PORTAL_ENCRYPTION_KEYS", key)
    monkeypatch.setenv("PLATFORM_NAME", "ChannelHub")
    monkeypatch.setenv("CRM_ALLOWED_NETWORKS", "127.0.0.0/8")
    cfg = load_config()
    assert cfg["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
    assert cfg["REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert cfg["SECRET_KEY"] == "s3cret"
    assert cfg["PORTAL_ENCRYPTION_KEYS"] == key
    assert cfg["PLATFORM_NAME"] == "ChannelHub"
    assert cfg["CRM_ALLOWED_NETWORKS"] == "127.0.0.0/8"
    assert not (clean_env / "encryption_keys").exists()


def test_bad_integer_setting_is_explained(clean_env, monkeypatch):
    monkeypatch.setenv("LOGIN_MAX_FAILURES", "five")
    with pytest.raises(RuntimeError, match="LOGIN_MAX_FAILURES must be a whole number"):
        load_config()


@pytest.mark.parametrize("value", ["0", "-2", "129", "100000"])
def test_parallel_batches_outside_what_the_throttle_can_bring_down_is_explained(clean_env, monkeypatch, value):
    """A limit of 0 would never send, and above 128 a request's 8 waits for 429s could not halve the limit down to
    1: both are refused at start with the range, not met later as a stalled or throttled run."""
    monkeypatch.setenv("SYNC_PARALLEL_BATCHES", value)
    with pytest.raises(RuntimeError, match=r"SYNC_PARALLEL_BATCHES must be from 1 to 128, not '-?\d+'"):
        load_config()


def test_parallel_batches_at_the_ends_of_its_range_is_taken(clean_env, monkeypatch):
    for value in (1, 128):
        monkeypatch.setenv("SYNC_PARALLEL_BATCHES", str(value))
        assert load_config()["SYNC_PARALLEL_BATCHES"] == value


@pytest.mark.parametrize("name", ["SYNC_SECONDS_PER_RECORD", "SYNC_PUSH_SLOT_WAIT"])
def test_bad_seconds_setting_is_explained(clean_env, monkeypatch, name):
    monkeypatch.setenv(name, "soon")
    with pytest.raises(RuntimeError, match=f"{name} must be a number, not 'soon'"):
        load_config()


def test_factory_registers_blueprints_and_platform_name(clean_env, monkeypatch):
    monkeypatch.setenv("PLATFORM_NAME", "ChannelHub")
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert {"auth", "settings"} <= set(app.blueprints)
    assert app.jinja_env.globals["platform_name"] == "ChannelHub"
    resp = app.test_client().get("/login")
    assert resp.status_code == 200
    assert "ChannelHub" in resp.text
    assert resp.headers["X-Frame-Options"] == "DENY"


def test_key_rotation(clean_env):
    from portal import crypto

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    app_old = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "PORTAL_ENCRYPTION_KEYS": old})
    with app_old.app_context():
        token = crypto.encrypt("hunter2-password")
    app_new = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "PORTAL_ENCRYPTION_KEYS": f"{new},{old}"})
    with app_new.app_context():
        assert crypto.decrypt(token) == "hunter2-password"
        rotated = crypto.rotate(token)
    app_only_new = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "PORTAL_ENCRYPTION_KEYS": new})
    with app_only_new.app_context():
        assert crypto.decrypt(rotated) == "hunter2-password"
        with pytest.raises(crypto.SecretUnreadable, match="enter it again"):
            crypto.decrypt(token)


def test_postgresql_connections_do_not_prepare_statements(clean_env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/x")
    assert load_config()["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] == {"prepare_threshold": None}
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    assert "connect_args" not in load_config()["SQLALCHEMY_ENGINE_OPTIONS"]


def test_batch_deadline_settings(clean_env, monkeypatch):
    """Item 4: a batch's deadline grows with its size, and both parts are configurable."""
    cfg = load_config()
    assert (cfg["SYNC_BATCH_BASE_SECONDS"], cfg["SYNC_BATCH_RECORD_SECONDS"]) == (60.0, 0.3)
    monkeypatch.setenv("SYNC_BATCH_BASE_SECONDS", "120")
    monkeypatch.setenv("SYNC_BATCH_RECORD_SECONDS", "0.5")
    cfg = load_config()
    assert (cfg["SYNC_BATCH_BASE_SECONDS"], cfg["SYNC_BATCH_RECORD_SECONDS"]) == (120.0, 0.5)
    monkeypatch.setenv("SYNC_BATCH_RECORD_SECONDS", "soon")
    with pytest.raises(RuntimeError, match="SYNC_BATCH_RECORD_SECONDS must be a number"):
        load_config()
