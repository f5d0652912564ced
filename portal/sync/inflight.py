"""Batches in flight per CRM, across every worker: a semaphore in Redis, and Server Busy halving that lasts.

Nightly runs, pushes and retries of one integration go through ``slot``, connection tests through ``Turn``: at most
``SYNC_PARALLEL_BATCHES`` requests are in the CRM's hands at once, whichever process sends them. Each holder's
entry expires on its own, so a killed worker frees its slot. When the CRM answers Server Busy, the limit of the
whole integration halves (kept in Redis) and climbs back one step after a run of good answers.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from flask import current_app

from .. import queues
from ..connectors.dynamics.errors import CrmInUseError

SLOT_SECONDS = 600  # an entry outlives the longest exchange (its holder removes it when done)
CLIMB_AFTER = 20  # good answers in a row before a halved limit goes up by one
LIMIT_SECONDS = 3600  # a halved limit is forgotten after an hour without Server Busy

WAITER_SECONDS = 5  # a connection test waiting for a slot is forgotten this long after it last asked
# A connection test's slot, should its worker be killed: its job ends within 60 s (views/integrations), so an entry
# this old belongs to no one, and the integration's sync gets its slot back soon, not after SLOT_SECONDS.
TEST_SLOT_SECONDS = 120

# Take a slot if fewer than ARGV[1] live entries are held (expired entries are dropped first); the entry lives
# ARGV[7] seconds, the set at least ARGV[3]. Connection tests (ARGV[5] = 1) go first: while one waits, batches do
# not take a slot that comes free, so a person waiting for the result of a test never waits for more than the
# batches in flight.
_ACQUIRE = """
local now = tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
redis.call('zremrangebyscore', KEYS[2], '-inf', now)
local first = ARGV[5] == '1'
local taken = redis.call('zcard', KEYS[1])
if not first then
  taken = taken + redis.call('zcard', KEYS[2])
end
if taken < tonumber(ARGV[1]) then
  redis.call('zadd', KEYS[1], now + tonumber(ARGV[7]), ARGV[4])
  redis.call('expire', KEYS[1], tonumber(ARGV[3]))
  redis.call('zrem', KEYS[2], ARGV[4])
  return 1
end
if first then
  redis.call('zadd', KEYS[2], now + tonumber(ARGV[6]), ARGV[4])
  redis.call('expire', KEYS[2], tonumber(ARGV[6]))
end
return 0
"""


class NoSlot(Exception):
    """No slot came free within the wait: the CRM already has as many requests of ours as it may."""


def _key(integration_id: int) -> str:
    return f"portal:inflight:{integration_id}"


def _waiting_key(integration_id: int) -> str:
    return f"portal:inflight-first:{integration_id}"


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

    def held(self) -> int:
        """How many slots are held now, by every worker together."""
        return int(self.conn.zcount(_key(self.integration_id), time.time(), "+inf"))

    def _take(self, token: str, first: bool, lifetime: float) -> bool:
        return bool(self._acquire(keys=[_key(self.integration_id), _waiting_key(self.integration_id)],
                                  args=[self.limit(), time.time(), SLOT_SECONDS, token, int(first),
                                        WAITER_SECONDS, min(lifetime, SLOT_SECONDS)]))

    def acquire(self, wait: float | None = None, *, first: bool = False,
                on_wait: Callable[[], None] | None = None, lifetime: float = SLOT_SECONDS) -> str:
        """Take one slot, waiting for one to come free (``NoSlot`` after ``wait``); the token gives it back.

        ``first``: a connection test, which takes the next slot that comes free before any batch does.
        ``on_wait`` is called once, when the slot is not free at the first ask. ``lifetime``: how long the slot
        stays taken should its holder never give it back (a killed worker).
        """
        token = uuid.uuid4().hex
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.01
        while not self._take(token, first, lifetime):
            if on_wait is not None:
                on_wait()
                on_wait = None
            if deadline is not None and time.monotonic() >= deadline:
                if first:
                    self.conn.zrem(_waiting_key(self.integration_id), token)
                raise NoSlot(f"{self.limit()} requests are already in flight to this CRM.")
            time.sleep(delay)
            delay = min(0.2, delay * 1.5)
        return token

    def release(self, token: str) -> None:
        """Give a slot back."""
        self.conn.zrem(_key(self.integration_id), token)

    @contextlib.contextmanager
    def slot(self, wait: float | None = None) -> Iterator[None]:
        """Hold one slot while the body talks to the CRM; wait for one to come free (``NoSlot`` after ``wait``)."""
        token = self.acquire(wait)
        try:
            yield
        finally:
            self.release(token)

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


class Turn:
    """A connection test's turn of the CRM: one slot, taken at its first request and kept until ``close``.

    Every request the test sends holds it (the transport's gate), so a test counts as one request in flight,
    queues ahead of the batches of runs, and a Server Busy or 429 it meets lowers the integration's limit.
    """

    def __init__(self, integration_id: int, wait: float, on_wait: Callable[[str], None] | None = None):
        self.slots = Slots(integration_id)
        self.wait = wait
        self.on_wait = on_wait  # told, in words, that the test waits for the sync's batches
        self._token: str | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait(f"The CRM already has {self.slots.held()} requests of this integration's sync in hand, "
                         f"the most it is given at once; the test goes next, as soon as one is answered.")

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Take the turn if not yet taken (``CrmInUseError`` when none comes free within the wait)."""
        over = "The connection test was over before this request could be sent."
        with self._lock:
            if self._closed:
                raise CrmInUseError(over)
            taken = self._token is not None
        if not taken:  # the test's requests come one after another: only the first one waits
            try:
                token = self.slots.acquire(self.wait, first=True, on_wait=self._waiting, lifetime=TEST_SLOT_SECONDS)
            except NoSlot as exc:
                raise CrmInUseError(
                    f"The CRM is busy with this integration's sync: {self.slots.limit()} requests were in its "
                    f"hands for the {self.wait:.0f} s the test waited for one of them to be answered.",
                    detail=str(exc)) from exc
            with self._lock:
                if self._closed:  # closed while waiting (the job's time is up): give the slot straight back
                    self.slots.release(token)
                    raise CrmInUseError(over)
                self._token = token
        yield

    def busy(self) -> None:
        """The CRM said Server Busy (or 429) to the test: halve the integration's limit, as a run would."""
        self.slots.busy()

    def close(self) -> None:
        """Give the slot back; a request sent after this (a test thread past its deadline) is refused."""
        with self._lock:
            self._closed = True
            if self._token is not None:
                self.slots.release(self._token)
                self._token = None
