"""Redis and the RQ queues: the web app enqueues, the worker (``jobs/``) runs."""

from __future__ import annotations

import atexit
import uuid
from pathlib import Path

from flask import Flask, current_app
from redis import Redis
from rq import Queue

from .embedded import EmbeddedRedis

# Named queues: a slow nightly run never holds up a connection test or a lead push.
QUEUE_TESTS = "connection-tests"
QUEUE_PUSH = "push"
QUEUE_NIGHTLY = "nightly"
QUEUE_DEFAULT = "default"
ALL_QUEUES = [QUEUE_TESTS, QUEUE_PUSH, QUEUE_DEFAULT, QUEUE_NIGHTLY]


def init_app(app: Flask) -> None:
    """Remember where Redis is; connect lazily so pages that need no queue never wait on it."""
    app.extensions["portal_redis"] = None


def redis_url(app: Flask | None = None) -> str:
    """The configured Redis, the one the launcher started, or an embedded one owned by this process."""
    app = app or current_app
    url = app.config.get("REDIS_URL")
    if url:
        return url
    marker = Path(app.config["INSTANCE_PATH"]) / "redis" / "redis.url"
    if marker.exists():
        candidate = marker.read_text().strip()
        try:
            Redis.from_url(candidate, socket_connect_timeout=0.5).ping()
            app.config["REDIS_URL"] = candidate
            return candidate
        except Exception:  # noqa: BLE001, S110 - a stale marker: start our own below
            pass
    server = EmbeddedRedis(Path(app.config["INSTANCE_PATH"]) / "redis").start()
    atexit.register(server.stop)
    app.config["REDIS_URL"] = server.url
    return server.url


def redis(app: Flask | None = None) -> Redis:
    """The shared Redis connection."""
    app = app or current_app
    conn = app.extensions.get("portal_redis")
    if conn is None:
        conn = Redis.from_url(redis_url(app), socket_connect_timeout=2, health_check_interval=30)
        app.extensions["portal_redis"] = conn
    return conn


def queue(name: str = QUEUE_DEFAULT) -> Queue:
    """A named RQ queue on the shared connection."""
    return Queue(name, connection=redis())


def new_job_id() -> str:
    """A job id that is also the primary key of its row in ``background_jobs``."""
    return uuid.uuid4().hex
