"""Batched writes to a CRM: lanes in parallel, batches of up to 1,000, halving and backing off on Server Busy.

The writer knows nothing of the portal: it takes a function that gives the calling thread its service (anything
with ``execute_multiple(requests) -> list[BatchItemResult]``; ``create``, ``update`` and ``set_state`` only for the
one-request-per-record mode), so another program, or another protocol's service, can write with it alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .errors import (
    AuthFailedError,
    ClaimsAuthError,
    DynamicsError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    UnreachableError,
)
from .soap import BatchItemResult, CreateRequest, UpdateRequest

BATCH_SIZE = 1000  # ExecuteMultiple's limit
BUSY_TRIES = 6  # Server Busy answers to one round of batches before its records are given back as failed
# Faults of one request that say nothing about the records in it: the request is tried again later.
TRANSIENT = (ServerBusyError, ServerError, RequestTimeoutError, UnreachableError)


class BatchService(Protocol):
    """What the writer needs of a service: one batch of requests in, one result per request out."""

    def execute_multiple(self, requests: Sequence[Any]) -> list[BatchItemResult]:
        """Send the requests as one batch that goes on after an item fails."""


class BatchWriter:
    """Sends requests in batches over ``parallel`` lanes, each lane with the service its thread is given."""

    def __init__(self, service: Callable[[], Any], *, parallel: int = 2, batch_size: int = BATCH_SIZE,
                 one_per_record: bool = False, sleep: Callable[[float], None] = time.sleep, backoff: float = 0.25):
        self.service = service
        self.backoff = backoff  # seconds before the first resend after Server Busy; doubled each round, at most 8
        self.parallel = max(1, parallel)
        self.batch_size = batch_size
        self.one_per_record = one_per_record
        self.sleep = sleep
        self.busy_events = 0
        self._pool: ThreadPoolExecutor | None = None  # kept: its threads keep their authenticated sessions
        self._lock = threading.Lock()

    def close(self, wait: bool = True) -> None:
        """Stop the lanes' threads (``wait=False``: do not wait for a lane stuck in a request; it ends on its own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
            self._pool = None

    def write(self, requests: Sequence) -> list[BatchItemResult]:
        """Send requests in batches, several at once; on Server Busy halve the lanes and retry.

        One bad record never sinks its batch (ContinueOnError): it comes back as a failed item. A batch that meets
        a transient fault as a whole (HTTP 500, a dropped connection, a timeout, or Server Busy after six tries)
        comes back as failed items marked retryable and ``outcome_unknown`` (the CRM may have written them): the
        caller records them for a later run, which finds what was written. Authentication and other run-level
        faults are raised.
        """
        if self.one_per_record:
            return [self._write_one(i, r) for i, r in enumerate(requests)]
        size = self.batch_size
        batches = [list(requests[i:i + size]) for i in range(0, len(requests), size)]
        results: list[list[BatchItemResult] | None] = [None] * len(batches)
        lanes = self.parallel
        pending = list(range(len(batches)))
        attempt = 0
        while pending:
            failed_busy: list[int] = []

            def send(index: int) -> tuple[int, list[BatchItemResult] | DynamicsError | None]:
                try:
                    return index, self.service().execute_multiple(batches[index])
                except ServerBusyError:
                    return index, None
                except TRANSIENT as exc:
                    return index, exc

            if lanes == 1 or len(pending) == 1:
                outcomes = [send(i) for i in pending]
            else:
                with self._lock:
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="crm-lane")
                outcomes = []
                for start in range(0, len(pending), lanes):  # at most `lanes` batches in flight
                    outcomes += list(self._pool.map(send, pending[start:start + lanes]))
            for index, outcome in outcomes:
                if outcome is None:
                    failed_busy.append(index)
                elif isinstance(outcome, DynamicsError):
                    results[index] = batch_failed(batches[index], outcome)
                else:
                    results[index] = outcome
            if failed_busy:
                self.busy_events += 1
                attempt += 1
                if attempt > BUSY_TRIES:
                    busy = ServerBusyError("The CRM stayed busy after six tries.")
                    for index in failed_busy:
                        results[index] = batch_failed(batches[index], busy, unknown=False)
                    break
                lanes = max(1, lanes // 2)  # the server asks us to slow down
                self.sleep(min(8.0, self.backoff * 2 ** attempt))
            pending = failed_busy
        flat: list[BatchItemResult] = []
        for offset, batch_results in enumerate(results):
            for item in batch_results or []:
                flat.append(BatchItemResult(offset * size + item.index, item.ok, item.id, item.error, item.skipped))
        return flat

    def _write_one(self, index: int, request) -> BatchItemResult:
        """One request on its own (the one-request-per-record mode)."""
        svc = self.service()
        try:
            if isinstance(request, CreateRequest):
                return BatchItemResult(index, True, svc.create(request.entity, request.attributes))
            if isinstance(request, UpdateRequest):
                svc.update(request.entity, request.id, request.attributes)
            else:
                svc.set_state(request.entity, request.id, request.state, request.status)
            return BatchItemResult(index, True, getattr(request, "id", None))
        except (AuthFailedError, ClaimsAuthError):
            raise
        except DynamicsError as exc:
            return BatchItemResult(index, False, None, exc)


def batch_failed(batch: Sequence, exc: DynamicsError, unknown: bool = True) -> list[BatchItemResult]:
    """Every item of a batch that failed as a whole, as a retryable failure."""
    error = exc
    if not exc.retryable:
        error = DynamicsError(exc.message, action="Nothing to change: the portal tries again later.",
                              detail=exc.detail, retryable=True)
        error.code = exc.code
    error.outcome_unknown = unknown  # the CRM may have written them before the fault
    return [BatchItemResult(i, False, None, error) for i in range(len(batch))]
