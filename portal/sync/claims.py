"""Per-record claims in Redis: a record is sent by one writer at a time, whatever runs overlap.

A push, the nightly catch-up, a retry and Sync now may all want the same lead at once. Before sending, a writer
claims each record (``SET NX`` with an expiry, so a killed worker's claims lapse); a record claimed by another
writer is waited for, and once that writer has linked it, it is already done here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from flask import current_app

from .. import queues

CLAIM_SECONDS = 900  # longer than any batch's deadline: a live writer releases its claims well before
_RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then redis.call('del', key) end
end
return 0
"""


def _key(integration_id: int, local_type: str, local_id: int) -> str:
    return f"portal:claim:{integration_id}:{local_type}:{local_id}"


def claim(integration_id: int, local_type: str, ids: Sequence[int], owner: str,
          wait: float | None = None) -> list[int]:
    """Claim these records for ``owner``; records held by another writer are waited for up to ``wait`` seconds.

    Returns the ids now claimed, in the order given; the others are still in another writer's hands.
    """
    if not ids:
        return []
    conn = queues.redis()
    if wait is None:
        wait = float(current_app.config.get("SYNC_CLAIM_WAIT_SECONDS") or 60)
    got: set[int] = set()
    todo = list(ids)
    deadline = time.monotonic() + wait
    delay = 0.02
    while True:
        pipe = conn.pipeline(transaction=False)
        for local_id in todo:
            pipe.set(_key(integration_id, local_type, local_id), owner, nx=True, ex=CLAIM_SECONDS)
        for local_id, ok in zip(todo, pipe.execute(), strict=True):
            if ok:
                got.add(local_id)
        todo = [i for i in todo if i not in got]
        if not todo or time.monotonic() >= deadline:
            break
        time.sleep(delay)  # another writer is sending these: its claim goes when it has linked them
        delay = min(0.25, delay * 1.5)
    return [i for i in ids if i in got]


def release(integration_id: int, local_type: str, ids: Sequence[int], owner: str) -> None:
    """Give back claims this owner holds (one held by another owner is left alone)."""
    if not ids:
        return
    conn = queues.redis()
    keys = [_key(integration_id, local_type, i) for i in ids]
    script = conn.register_script(_RELEASE)
    for start in range(0, len(keys), 1000):
        script(keys=keys[start:start + 1000], args=[owner])
