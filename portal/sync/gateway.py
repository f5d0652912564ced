"""The sync's use of the connector: a session per lane, batched writes, paged reads tried again on faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from flask import current_app

from ..connection import config_for
from ..connectors.dynamics import OrganizationService, ServerBusyError, Transport
from ..connectors.dynamics.batch import BATCH_SIZE, TRANSIENT, BatchWriter
from ..connectors.dynamics.factory import open_service
from ..connectors.dynamics.soap import BatchItemResult, fetch_in
from ..connectors.dynamics.webapi import ThrottledError, WebApiService
from ..models import CrmIntegration
from ..platform_models import normalize_email
from .inflight import RunGate, Slots

LOOKUP_CHUNK = 1000  # values per FetchXML `in` condition
PAGE = 5000  # FetchXML page size when reading
READ_TRIES = 4  # a read that meets a transient fault is tried again (reads change nothing)


def told_busy(slots: Slots, exc: ServerBusyError) -> None:
    """A Server Busy met by the sync lowers the integration's limit (the 429s behind a ThrottledError already did,
    one by one, through the transport's gate)."""
    if not isinstance(exc, ThrottledError):
        slots.busy()


class Limited:
    """A service whose writes each hold an in-flight slot of the CRM, and report Server Busy to the integration."""

    def __init__(self, service: OrganizationService, slots: Slots):
        self.service = service
        self.slots = slots

    def _send(self, name: str, *args):
        with self.slots.slot(self.slots.wait):
            try:
                result = getattr(self.service, name)(*args)
            except ServerBusyError as exc:
                told_busy(self.slots, exc)
                raise
        self.slots.good()
        return result

    def execute_multiple(self, requests: Sequence) -> list[BatchItemResult]:
        """One batch, holding a slot."""
        return self._send("execute_multiple", requests)

    def create(self, entity: str, attributes: dict) -> str:
        """One create, holding a slot (the one-request-per-record mode)."""
        return self._send("create", entity, attributes)

    def update(self, entity: str, record_id: str, attributes: dict) -> None:
        """One update, holding a slot."""
        return self._send("update", entity, record_id, attributes)

    def set_state(self, entity: str, record_id: str, state: int, status: int) -> None:
        """One state change, holding a slot."""
        return self._send("set_state", entity, record_id, state, status)


class CrmGateway:
    """One integration's CRM: a service per lane (NTLM authenticates a connection), reads and batched writes."""

    def __init__(self, integration: CrmIntegration, parallel: int = 2, one_per_record: bool | None = None,
                 slot_wait: float | None = None):
        self.config = config_for(integration)
        # What most integrations do (one look-up and one write per record): kept to measure against (bench/).
        one = (current_app.config.get("SYNC_ONE_REQUEST_PER_RECORD", False)
               if one_per_record is None else one_per_record)
        self._local = threading.local()
        self._transports: list[Transport] = []
        self._services: list[OrganizationService] = []
        self._lock = threading.Lock()
        # Every write holds one of the CRM's in-flight slots, shared by all runs and workers (``inflight``).
        self.slots = Slots(integration.id, wait=slot_wait)
        self.writer = BatchWriter(lambda: Limited(self.service(), self.slots), parallel=parallel,
                                  one_per_record=bool(one),
                                  backoff=float(current_app.config.get("SYNC_BUSY_BACKOFF_SECONDS", 0.25)))
        self.read_retries = 0
        # Requests per batch: the limit the CRM's administrator set, once the CRM has named it.
        self.batch_limit = integration.batch_size_limit or BATCH_SIZE
        self.server_batch_limit: int | None = integration.batch_size_limit
        self._notes_seen: set[str] = set()

    @property
    def parallel(self) -> int:
        """How many batches are sent at once."""
        return self.writer.parallel

    @property
    def one_per_record(self) -> bool:
        """True in the one-request-per-record mode (benchmarks)."""
        return self.writer.one_per_record

    @property
    def busy_events(self) -> int:
        """Server Busy rounds and transient read faults met so far."""
        return self.writer.busy_events + self.read_retries

    def service(self) -> OrganizationService | WebApiService:
        """This thread's service, of the connection's kind (NTLM authenticates a connection: one per lane).

        On-premises it is the Organization Service over NTLM; online the Web API over OAuth, whose lanes share
        one token and one throttle. The batch writer above drives either through ``execute_multiple``.
        """
        svc = getattr(self._local, "svc", None)
        if svc is None:
            svc, transport = open_service(self.config, batch_limit=self.batch_limit)
            # Each 429 and recommended degree of parallelism the CRM sends reaches every worker's limit.
            transport.gate = RunGate(self.slots)
            with self._lock:
                self._transports.append(transport)
                self._services.append(svc)
            self._local.svc = svc
        return svc

    @property
    def http_requests(self) -> int:
        """Requests sent so far, all lanes together."""
        return sum(t.requests_sent for t in self._transports)

    def close(self, wait: bool = True) -> None:
        """Close every session (``wait=False``: leave a lane stuck in a request behind instead of waiting)."""
        self.writer.close(wait=wait)
        for t in self._transports:
            t.close()

    def write(self, requests: Sequence) -> list[BatchItemResult]:
        """Send requests in batches (see ``BatchWriter.write``); what one lane learns of the CRM, all lanes use."""
        try:
            return self.writer.write(requests)
        finally:
            self._share_limits()

    def _share_limits(self) -> None:
        with self._lock:
            services = list(self._services)
        if not services:
            return
        self.batch_limit = min([self.batch_limit, *(s.batch_limit for s in services)])
        named = [s.server_batch_limit for s in services if s.server_batch_limit]
        if named:
            self.server_batch_limit = min(named)
        for svc in services:
            svc.batch_limit = min(svc.batch_limit, self.batch_limit)

    def new_notes(self) -> list[str]:
        """What the connector changed on its own since the last call (smaller batches...), for the run's log."""
        with self._lock:
            notes = [note for svc in self._services for note in svc.notes]
        fresh = [note for note in dict.fromkeys(notes) if note not in self._notes_seen]
        self._notes_seen.update(fresh)
        return fresh

    def fetch(self, fetchxml: str) -> Iterator:
        """Every record of a FetchXML query, one page in memory.

        A transient fault (Server Busy, HTTP 500, a dropped connection, a timeout) makes the query start again,
        skipping the records already given: every query here is ordered by the primary id, so the order is stable.
        """
        given, tries = 0, 0
        while True:
            seen = 0
            try:
                for rec in self.service().iter_fetch(fetchxml, page_size=PAGE):
                    seen += 1
                    if seen > given:
                        given += 1
                        yield rec
                return
            except TRANSIENT as exc:
                if isinstance(exc, ServerBusyError):
                    told_busy(self.slots, exc)
                tries += 1
                if tries >= READ_TRIES:
                    raise
                self.read_retries += 1
                time.sleep(0.2 * 2 ** tries)

    def fetch_in(self, entity: str, columns: list[str], field: str, values: Sequence, *,
                 order: str | None = None, extra: list | None = None) -> Iterator:
        """Records whose ``field`` is one of ``values``: at most ``LOOKUP_CHUNK`` values a query, fewer when the
        connection carries queries in URLs of limited length (the Web API)."""
        step = 1 if self.one_per_record and field == "emailaddress1" else LOOKUP_CHUNK
        for query in fetch_in(entity, columns, field, values, fits=self.service().fetch_fits, max_values=step,
                              conditions=extra or (), order=[order or f"{entity}id"]):
            yield from self.fetch(query)

    def find_by_email(self, entity: str, emails: Sequence[str]) -> dict[str, str]:
        """Existing CRM records by normalised email (emailaddress1), looked up in chunks."""
        found: dict[str, str] = {}
        for rec in self.fetch_in(entity, [f"{entity}id", "emailaddress1"], "emailaddress1", emails):
            found.setdefault(normalize_email(rec.attributes.get("emailaddress1")), rec.id)
        return found
