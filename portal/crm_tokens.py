"""Dynamics 365 access tokens shared by every worker through Redis, encrypted with the portal's secret keys."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from cryptography.fernet import InvalidToken, MultiFernet
from flask import current_app
from redis import Redis
from redis.exceptions import LockError, RedisError

from .connectors.dynamics.auth import REFRESH_MARGIN
from .crypto import fernet
from .queues import redis

log = logging.getLogger(__name__)

PREFIX = "portal:crm-token:"


class RedisTokenCache:
    """The connector's token cache on Redis: per integration key, the token and its expiry, encrypted with the key.

    The value expires REFRESH_MARGIN before the token does, so no worker is handed a token about to lapse. The
    key is a digest (of tenant, client id, authority, scope and a hash of the secret), never the secret itself.
    When Redis cannot be reached, every call acts as a miss: each worker then asks Entra for its own token.
    """

    def __init__(self, conn: Redis, cipher: MultiFernet, lock_seconds: float = 30.0, wait_seconds: float = 15.0):
        self.conn = conn
        self.cipher = cipher
        self.lock_seconds = lock_seconds
        self.wait_seconds = wait_seconds

    def get(self, key: str) -> tuple[str, float] | None:
        """The token kept for key while it is fresh."""
        try:
            raw = self.conn.get(PREFIX + key)
        except RedisError as exc:
            log.warning("shared token cache unavailable: %s", type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            data = json.loads(self.cipher.decrypt(raw))
            token, expires_at = str(data["token"]), float(data["expires_at"])
            if data["key"] != key:  # another integration's value, moved under this key: never served here
                return None
        except (InvalidToken, ValueError, KeyError, TypeError, RecursionError):
            return None  # written under a key since retired, or not ours: ask for a new token
        if expires_at - REFRESH_MARGIN <= time.time():
            return None
        return token, expires_at

    def put(self, key: str, token: str, expires_at: float) -> None:
        """Keep the token, encrypted, until REFRESH_MARGIN before it expires."""
        ttl = int(expires_at - REFRESH_MARGIN - time.time())
        if ttl <= 0:
            return
        value = self.cipher.encrypt(json.dumps({"key": key, "token": token, "expires_at": expires_at}).encode())
        try:
            self.conn.set(PREFIX + key, value, ex=ttl)
        except RedisError as exc:
            log.warning("shared token cache unavailable: %s", type(exc).__name__)

    def drop(self, key: str, token: str) -> None:
        """Forget the token the service refused, unless another worker has already put a new one."""
        found = self.get(key)
        if found is not None and found[0] == token:
            try:
                self.conn.delete(PREFIX + key)
            except RedisError as exc:
                log.warning("shared token cache unavailable: %s", type(exc).__name__)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """One worker at a time asks Entra for this key's token; past ``wait_seconds`` the others ask too."""
        lock = self.conn.lock(PREFIX + "lock:" + key, timeout=self.lock_seconds, blocking_timeout=self.wait_seconds)
        try:
            held = bool(lock.acquire())
        except RedisError:
            held = False
        try:
            yield
        finally:
            if held:
                with suppress(LockError, RedisError):  # it expired meanwhile: nothing left to release
                    lock.release()


def shared_token_cache() -> RedisTokenCache:
    """The app's shared token cache (made once per app, usable from threads outside the app context)."""
    cache = current_app.extensions.get("portal_crm_tokens")
    if cache is None:
        cache = current_app.extensions["portal_crm_tokens"] = RedisTokenCache(redis(), fernet())
    return cache
