"""Batches in flight per CRM, across every worker: a semaphore in Redis, and Server Busy halving that lasts.

Nightly runs, pushes, retries and connection tests of one integration all go through ``slot``: at most
``SYNC_PARALLEL_BATCHES`` requests are in the CRM's hands at once, whichever process sends them. Each holder's
entry expires on its own, so a killed worker frees its slot. When the CRM answers Server Busy, the limit of the
whole integration halves (kept in Redis) and climbs back one step after a run of good answers.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

from flask import current_app

from .. import queues

SLOT_SECONDS = 600  # an entry outlives the longest exchange (its holder removes it when done)
CLIMB_AFTER = 20  # good answers in a row before a halved limit goes up by one
LIMIT_SECONDS = 3600  # a halved limit is forgotten after an hour without Server Busy

# Take a slot if fewer than ARGV[1] live entries are held (expired entries are dropped first).
_ACQUIRE = """
local now = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
  redis.call('expire', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
"""


class NoSlot(Exception):
    """No slot came free within the wait: the CRM already has as many requests of ours as it may."""


def _key(integration_id: int) -> str:
    return f"portal:inflight:{integration_id}"


def _limit_key(integration_id: int) -> str:
    return f"portal:busy-limit:{integration_id}"


def configured() -> int:
    """The configured most batches in flight per CRM."""
    return max(1, int(current_app.config.get("SYNC_PARALLEL_BATCHES") or 2))


def current_limit(integration_id: int, conn=None) -> int:
    """The integration's limit now: the configured one, or less after Server Busy answers."""
    conn = conn or queues.redis()
    lowered = conn.hget(_limit_key(integration_id), "limit")
    top = configured()
    return max(1, min(top, int(lowered))) if lowered is not None else top


class Slots:
    """The in-flight slots of one integration's CRM (safe to use from the lanes' threads)."""

    def __init__(self, integration_id: int, limit: int | None = None, wait: float | None = None):
        self.integration_id = integration_id
        self.wait = wait  # how long a write waits for a slot (None: as long as its job may run)
        self.conn = queues.redis()
        self.top = limit or configured()
        self._acquire = self.conn.register_script(_ACQUIRE)

    def limit(self) -> int:
        """The limit now (the configured one, halved while the CRM says it is busy)."""
        lowered = self.conn.hget(_limit_key(self.integration_id), "limit")
        return max(1, min(self.top, int(lowered))) if lowered is not None else self.top

    @contextlib.contextmanager
    def slot(self, wait: float | None = None) -> Iterator[None]:
        """Hold one slot while the body talks to the CRM; wait for one to come free (``NoSlot`` after ``wait``)."""
        token = uuid.uuid4().hex
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.01
        while not self._acquire(keys=[_key(self.integration_id)],
                                args=[self.limit(), time.time(), SLOT_SECONDS, token]):
            if deadline is not None and time.monotonic() >= deadline:
                raise NoSlot(f"{self.limit()} requests are already in flight to this CRM.")
            time.sleep(delay)
            delay = min(0.2, delay * 1.5)
        try:
            yield
        finally:
            self.conn.zrem(_key(self.integration_id), token)

    def busy(self) -> None:
        """The CRM said Server Busy: halve the integration's limit, for every worker."""
        key = _limit_key(self.integration_id)
        halved = max(1, self.limit() // 2)
        pipe = self.conn.pipeline()
        pipe.hset(key, mapping={"limit": halved, "good": 0})
        pipe.expire(key, LIMIT_SECONDS)
        pipe.execute()

    def good(self) -> None:
        """A batch went through: after enough in a row, a halved limit climbs back by one."""
        key = _limit_key(self.integration_id)
        if not self.conn.exists(key):
            return
        if self.conn.hincrby(key, "good", 1) >= CLIMB_AFTER:
            raised = self.limit() + 1
            if raised >= self.top:
                self.conn.delete(key)
            else:
                self.conn.hset(key, mapping={"limit": raised, "good": 0})
