"""The Dynamics 365 tokens shared in Redis: encrypted, kept per key only, and a bad value is a miss, not a failure."""

from __future__ import annotations

import time
import uuid

import pytest
from cryptography.fernet import Fernet, MultiFernet
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from portal.crm_tokens import PREFIX, RedisTokenCache

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-access-token"


@pytest.fixture
def conn(redis_url):
    conn = Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def keys(conn):
    """Keys of this test only, removed afterwards."""
    made = [f"test-{uuid.uuid4().hex}" for _ in range(2)]
    yield made
    conn.delete(*[PREFIX + k for k in made], *[PREFIX + "lock:" + k for k in made])


def cache(conn, **kw) -> RedisTokenCache:
    return RedisTokenCache(conn, MultiFernet([Fernet(Fernet.generate_key())]), **kw)


def test_the_token_is_kept_encrypted_until_shortly_before_it_expires(conn, keys):
    tokens = cache(conn)
    tokens.put(keys[0], TOKEN, time.time() + 3600)
    raw = conn.get(PREFIX + keys[0])
    assert raw is not None and TOKEN.encode() not in raw and b"secret" not in raw
    assert 3200 <= conn.ttl(PREFIX + keys[0]) <= 3300
    assert tokens.get(keys[0])[0] == TOKEN


@pytest.mark.parametrize("garbage", [b"", b"garbage", "d\u00e9j\u00e0".encode(), b"gAAAAA" + b"A" * 100])
def test_garbage_in_redis_is_a_miss(conn, keys, garbage):
    tokens = cache(conn)
    conn.set(PREFIX + keys[0], garbage)
    assert tokens.get(keys[0]) is None
    tokens.drop(keys[0], TOKEN)  # nor does forgetting it fail


def test_a_value_encrypted_with_another_key_is_a_miss(conn, keys):
    cache(conn).put(keys[0], TOKEN, time.time() + 3600)
    assert cache(conn).get(keys[0]) is None


def test_another_integrations_value_moved_under_this_key_is_a_miss(conn, keys):
    """A value copied from one key to another (by anyone who can write to Redis) is not served as the other's."""
    tokens = cache(conn)
    tokens.put(keys[0], TOKEN, time.time() + 3600)
    conn.set(PREFIX + keys[1], conn.get(PREFIX + keys[0]), ex=3000)
    assert tokens.get(keys[0])[0] == TOKEN
    assert tokens.get(keys[1]) is None


def test_an_unreachable_redis_is_a_miss():
    # Asked once per call: the client's own retries (about 3 s each, with backoff) say nothing of the cache.
    tokens = cache(Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)))
    assert tokens.get("k") is None
    tokens.put("k", TOKEN, time.time() + 3600)
    tokens.drop("k", TOKEN)
    with tokens.lock("k"):
        pass


def test_a_lock_left_by_a_dead_holder_is_waited_for_at_most_the_wait(conn, keys):
    conn.set(PREFIX + "lock:" + keys[0], "a worker killed while asking Entra", ex=30)
    started = time.monotonic()
    with cache(conn, wait_seconds=0.5).lock(keys[0]):
        pass
    assert time.monotonic() - started < 3
