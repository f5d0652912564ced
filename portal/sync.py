"""The sync engine: the only module that touches both the portal's data and the CRM connector.

Jobs and the command line call ``run_push``, ``run_nightly``, ``run_retry`` and ``push_acceptance``; every run is
recorded in the ledger (``SyncRun`` with its steps and ``SyncFailure`` rows).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flask import current_app
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import aliased

from . import catalog
from .connection import config_for
from .connectors.dynamics import DynamicsError, OrganizationService, Transport
from .connectors.dynamics.errors import (
    AuthFailedError,
    ClaimsAuthError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    UnreachableError,
)
from .connectors.dynamics.factory import open_service
from .connectors.dynamics.soap import BatchItemResult, CreateRequest, UpdateRequest, fetch_xml
from .connectors.dynamics.webapi import WebApiService
from .connectors.dynamics.xml import EntityReference, Money, OptionSetValue
from .extensions import db
from .health import record_failure, record_success
from .models import CrmIntegration, utcnow
from .platform_models import (
    Acceptance,
    Campaign,
    ContactList,
    ContactListMember,
    CrmActivity,
    CrmLink,
    Lead,
    LeadOrigin,
    MarketingEvent,
    Opportunity,
    RunStatus,
    SyncFailure,
    SyncRun,
    normalize_email,
)

log = logging.getLogger(__name__)

BATCH = 1000  # ExecuteMultiple's limit
LOOKUP_CHUNK = 1000  # emails per FetchXML `in` lookup
DB_CHUNK = 1000  # local rows handled at once, so memory stays flat
PAGE = 5000  # FetchXML page size when reading
LEAD_CHUNK_FOR_EVENTS = 500  # linked leads whose events are gathered per query
READ_TRIES = 4  # a read that meets a transient fault is tried again (reads change nothing)
# Faults of one request that say nothing about the records in it: the request is tried again later.
TRANSIENT = (ServerBusyError, ServerError, RequestTimeoutError, UnreachableError)

# Platform field -> CRM attribute, for leads; contacts have no company name.
LEAD_ATTRS = {
    "first_name": "firstname", "last_name": "lastname", "company": "companyname", "job_title": "jobtitle",
    "phone": "telephone1", "mobile_phone": "mobilephone", "website": "websiteurl",
    "address_line1": "address1_line1", "address_line2": "address1_line2", "city": "address1_city",
    "state": "address1_stateorprovince", "postal_code": "address1_postalcode", "country": "address1_country",
    "description": "description",
}
CONTACT_ATTRS = {k: v for k, v in LEAD_ATTRS.items() if k != "company"}

NIGHTLY_STEPS = [
    "pull_records", "contact_lists", "push_marketing_leads", "push_distributed_leads", "push_events",
    "pull_activities", "pull_status", "pull_opportunities", "push_campaigns",
]
STEP_TITLES = {
    "pull_records": "Pull leads and contacts with an email",
    "contact_lists": "Marketing lists as contact lists",
    "push_marketing_leads": "Push marketing-automation leads over the threshold",
    "push_distributed_leads": "Push distributed leads",
    "push_events": "Write marketing events as notes",
    "pull_activities": "Pull CRM activities on our leads",
    "pull_status": "Pull lead status",
    "pull_opportunities": "Pull opportunities",
    "push_campaigns": "Push campaigns",
    "push": "Push distributed leads",
    "retry": "Retry failed records",
    "acceptance": "Accept or reject in the CRM",
}
LEAD_STATE = {0: "Open", 1: "Qualified", 2: "Disqualified"}
REF = "[ref:E{id}]"


def backoff(attempts: int) -> timedelta:
    """How long a transient failure waits before its next try: 1, 5, 30 minutes, then 2 hours."""
    return timedelta(minutes=[1, 5, 30, 120][min(attempts, 4) - 1])


# --------------------------------------------------------------------------------------------------------------
# The CRM side: batched writes (in parallel, slowing down on Server Busy) and batched look-ups.


class CrmGateway:
    """The sync's use of the connector: one NTLM session per parallel lane, batches of up to 1000."""

    def __init__(self, integration: CrmIntegration, parallel: int = 2, one_per_record: bool | None = None):
        self.config = config_for(integration)
        self.parallel = max(1, parallel)
        # What most integrations do (one look-up and one write per record): kept to measure against (bench/).
        self.one_per_record = (current_app.config.get("SYNC_ONE_REQUEST_PER_RECORD", False)
                               if one_per_record is None else one_per_record)
        self._local = threading.local()
        self._transports: list[Transport] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # kept: its threads keep their authenticated sessions
        self.busy_events = 0

    def service(self) -> OrganizationService | WebApiService:
        """This thread's service, of the connection's kind (NTLM authenticates a connection: one per lane)."""
        svc = getattr(self._local, "svc", None)
        if svc is None:
            svc, transport = open_service(self.config)
            with self._lock:
                self._transports.append(transport)
            self._local.svc = svc
        return svc

    @property
    def http_requests(self) -> int:
        """Requests sent so far, all lanes together."""
        return sum(t.requests_sent for t in self._transports)

    def close(self) -> None:
        """Close every session."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for t in self._transports:
            t.close()

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
            except TRANSIENT:
                tries += 1
                if tries >= READ_TRIES:
                    raise
                self.busy_events += 1
                time.sleep(0.2 * 2 ** tries)

    def find_by_email(self, entity: str, emails: Sequence[str]) -> dict[str, str]:
        """Existing CRM records by normalised email (emailaddress1), looked up in chunks."""
        found: dict[str, str] = {}
        primary = f"{entity}id"
        step = 1 if self.one_per_record else LOOKUP_CHUNK
        for i in range(0, len(emails), step):
            chunk = list(emails[i:i + step])
            query = fetch_xml(entity, [primary, "emailaddress1"], [("emailaddress1", "in", chunk)],
                              order=[primary])
            for rec in self.fetch(query):
                email = normalize_email(rec.attributes.get("emailaddress1"))
                found.setdefault(email, rec.id)
        return found

    def write(self, requests: Sequence) -> list[BatchItemResult]:
        """Send requests in ExecuteMultiple batches, several at once; on Server Busy halve the lanes and retry.

        One bad record never sinks its batch (ContinueOnError): it comes back as a failed item. A batch that meets
        a transient fault as a whole (HTTP 500, a dropped connection, a timeout, or Server Busy after six tries)
        comes back as failed items marked retryable and ``outcome_unknown`` (the CRM may have written them): the
        caller records them for a later run, which finds what was written (leads by email, notes by reference).
        Authentication and other run-level faults still stop the run.
        """
        if self.one_per_record:
            return [self._write_one(i, r) for i, r in enumerate(requests)]
        batches = [list(requests[i:i + BATCH]) for i in range(0, len(requests), BATCH)]
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
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="crm-lane")
                outcomes = []
                for start in range(0, len(pending), lanes):  # at most `lanes` batches in flight
                    outcomes += list(self._pool.map(send, pending[start:start + lanes]))
            for index, outcome in outcomes:
                if outcome is None:
                    failed_busy.append(index)
                elif isinstance(outcome, DynamicsError):
                    results[index] = self._batch_failed(batches[index], outcome)
                else:
                    results[index] = outcome
            if failed_busy:
                self.busy_events += 1
                attempt += 1
                if attempt > 6:
                    busy = ServerBusyError("The CRM stayed busy after six tries.")
                    for index in failed_busy:
                        results[index] = self._batch_failed(batches[index], busy, unknown=False)
                    break
                lanes = max(1, lanes // 2)  # the server asks us to slow down
                time.sleep(min(8.0, 0.25 * 2 ** attempt))
            pending = failed_busy
        flat: list[BatchItemResult] = []
        for offset, batch_results in enumerate(results):
            for item in batch_results or []:
                flat.append(BatchItemResult(offset * BATCH + item.index, item.ok, item.id, item.error, item.skipped))
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

    @staticmethod
    def _batch_failed(batch: list, exc: DynamicsError, unknown: bool = True) -> list[BatchItemResult]:
        """Every item of a batch that failed as a whole, as a retryable failure."""
        error = exc
        if not exc.retryable:
            error = DynamicsError(exc.message, action="Nothing to change: the portal tries again later.",
                                  detail=exc.detail, retryable=True)
            error.code = exc.code
        error.outcome_unknown = unknown  # the CRM may have written them before the fault
        return [BatchItemResult(i, False, None, error) for i in range(len(batch))]


# --------------------------------------------------------------------------------------------------------------
# The run: steps, counts, progress and failures, written to the ledger as it goes.


@dataclass
class StepCounts:
    """What one step did."""

    name: str
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    read: int = 0
    note: str = ""
    samples: list[str] = field(default_factory=list)


class Runner:
    """Runs sync steps for one integration and records them in a ``SyncRun``."""

    def __init__(self, integration: CrmIntegration, run: SyncRun, gateway: CrmGateway | None = None):
        self.integration = integration
        self.run = run
        self.dry_run = run.dry_run
        self.platform = current_app.config["PLATFORM_NAME"]
        self.gateway = gateway or CrmGateway(integration, current_app.config.get("SYNC_PARALLEL_BATCHES", 2))
        self.org_id = integration.organization_id
        self.entity = "contact" if integration.record_leads_as == "contact" else "lead"
        self.counts: StepCounts | None = None
        self._last_progress = 0.0
        self._pending_links: list[dict] = []
        self._writer: ThreadPoolExecutor | None = None  # sends a chunk while the next one is prepared

    # -- ledger helpers

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepCounts]:
        """Run a step: mark it current, then store its counts."""
        self.counts = StepCounts(name)
        self.run.current_step = name
        self.commit()
        started = utcnow()
        status = "finished"
        try:
            yield self.counts
        except Exception:
            status = "failed"
            raise
        finally:
            c = self.counts
            steps = self.run.steps
            steps.append({"name": name, "title": STEP_TITLES.get(name, name), "status": status,
                          "created": c.created, "updated": c.updated, "skipped": c.skipped, "failed": c.failed,
                          "read": c.read, "note": c.note, "samples": c.samples[:5],
                          "seconds": round((utcnow() - started).total_seconds(), 2)})
            self.run.steps_json = json.dumps(steps)
            self.run.created_count += c.created
            self.run.updated_count += c.updated
            self.run.skipped_count += c.skipped
            self.run.failed_count += c.failed
            self.commit()

    def progress(self, done: int, total: int, force: bool = False) -> None:
        """Store progress at most twice a second, so the page's bar moves without a write per record."""
        now = time.monotonic()
        if force or now - self._last_progress > 0.5:
            self.run.progress_done, self.run.progress_total = done, total
            self.commit()
            self._last_progress = now

    def fail(self, operation: str, entity: str, error: DynamicsError | str, *, local_type: str = "",
             local_id: int | None = None, crm_id: str = "") -> None:
        """Record one failed record with a message a person can act on and the raw fault."""
        if isinstance(error, DynamicsError):
            code, message, action = error.code, error.message, error.action
            raw, retryable = str(error.detail or ""), bool(error.retryable)
        else:
            code, message, action, raw, retryable = "invalid", error, "Correct the record and retry it.", "", False
        if self.counts:
            self.counts.failed += 1
        previous = db.session.scalar(
            select(SyncFailure).where(
                SyncFailure.integration_id == self.integration.id, SyncFailure.status == "pending",
                SyncFailure.local_type == local_type, SyncFailure.local_id == local_id,
                SyncFailure.operation == operation,
            ).limit(1)
        ) if local_id is not None else None
        attempts = (previous.attempts + 1) if previous else 1
        if previous:
            previous.status = "superseded"
        db.session.add(SyncFailure(
            run_id=self.run.id, integration_id=self.integration.id, step=self.counts.name if self.counts else "",
            operation=operation, entity=entity, local_type=local_type, local_id=local_id, crm_id=crm_id or "",
            code=code, message=message, action=action, raw=raw[:20000], retryable=retryable, attempts=attempts,
            next_attempt_at=utcnow() + backoff(attempts) if retryable else None,
        ))

    def resolve_failures(self, local_type: str, local_ids: Iterable[int]) -> None:
        """Records that went through: their earlier failures are resolved."""
        ids = list(local_ids)
        for i in range(0, len(ids), DB_CHUNK):
            db.session.execute(
                update(SyncFailure)
                .where(SyncFailure.integration_id == self.integration.id, SyncFailure.status == "pending",
                       SyncFailure.local_type == local_type, SyncFailure.local_id.in_(ids[i:i + DB_CHUNK]))
                .values(status="resolved")
            )

    # -- links

    def links(self, local_type: str, ids: Sequence[int]) -> dict[int, CrmLink]:
        """Existing links of these local records."""
        out: dict[int, CrmLink] = {}
        for i in range(0, len(ids), DB_CHUNK):
            for link in db.session.scalars(select(CrmLink).where(
                CrmLink.integration_id == self.integration.id, CrmLink.local_type == local_type,
                CrmLink.local_id.in_(ids[i:i + DB_CHUNK]),
            )):
                out[link.local_id] = link
        return out

    def link(self, local_type: str, local_id: int, entity: str, crm_id: str) -> None:
        """Remember which CRM record a local record is (written in bulk at the next ``commit``)."""
        self._pending_links.append({"integration_id": self.integration.id, "local_type": local_type,
                                    "local_id": local_id, "entity": entity, "crm_id": crm_id,
                                    "last_synced_at": utcnow()})

    def close(self) -> None:
        """Wait for a chunk still being sent (after a failure nobody reads its outcome: its notes stay in flight)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def commit(self) -> None:
        """Write buffered links in one statement, then commit."""
        if self._pending_links:
            db.session.execute(insert(CrmLink), self._pending_links)
            self._pending_links = []
        db.session.commit()

    # -- leads

    def lead_attributes(self, lead: Lead, entity: str, *, creating: bool) -> dict:
        """The CRM attributes of a lead: all standard fields; lead source on new leads (C1)."""
        mapping = LEAD_ATTRS if entity == "lead" else CONTACT_ATTRS
        attrs = {crm: getattr(lead, ours) for ours, crm in mapping.items() if getattr(lead, ours)}
        if creating:
            attrs["emailaddress1"] = lead.email
            if not attrs.get("lastname"):
                attrs["lastname"] = lead.email.split("@", 1)[0]  # lastname is required by Dynamics
            if entity == "lead":
                attrs["subject"] = f"{self.platform}: {lead.company or lead.full_name}"
                if self.integration.lead_source_value is not None:
                    attrs["leadsourcecode"] = OptionSetValue(self.integration.lead_source_value)
        return attrs

    def push_leads(self, leads: list[Lead], *, allow_updates: bool) -> list[int]:
        """Create leads in the CRM or link them to the record with their email (S3); ids now linked."""
        c = self.counts
        if not leads:
            return []
        existing = self.links("lead", [ld.id for ld in leads])
        todo = [ld for ld in leads if ld.id not in existing]
        c.skipped += len(leads) - len(todo)
        if allow_updates:
            # Standard fields change in the CRM only when allowed, and only if they changed since the last sync.
            stale = [ld for ld in leads if ld.id in existing and ld.fields_changed_at
                     and ld.fields_changed_at > existing[ld.id].last_synced_at]
            self._send([UpdateRequest(existing[ld.id].entity, existing[ld.id].crm_id,
                                      self.lead_attributes(ld, existing[ld.id].entity, creating=False))
                        for ld in stale], [ld.id for ld in stale], "update", "lead")
        if not todo:
            return [ld.id for ld in leads]
        found = self.gateway.find_by_email(self.entity, [ld.email_normalized for ld in todo])
        creates, create_leads, linked = [], [], [ld.id for ld in leads if ld.id in existing]
        update_reqs, update_ids = [], []
        for ld in todo:
            crm_id = found.get(ld.email_normalized)
            if crm_id:
                c.skipped += 1  # matched an existing CRM record by email: linked, fields untouched (S3)
                if not self.dry_run:
                    self.link("lead", ld.id, self.entity, crm_id)
                linked.append(ld.id)
                if allow_updates:
                    update_reqs.append(UpdateRequest(self.entity, crm_id,
                                                     self.lead_attributes(ld, self.entity, creating=False)))
                    update_ids.append(ld.id)
            else:
                creates.append(CreateRequest(self.entity, self.lead_attributes(ld, self.entity, creating=True)))
                create_leads.append(ld)
        if self.dry_run:
            c.created += len(creates)
            c.updated += len(update_reqs)
            c.samples.extend(f"create {self.entity} {ld.email}" for ld in create_leads[:5])
            return linked
        self.commit()
        self._send(update_reqs, update_ids, "update", "lead")
        results = self.gateway.write(creates) if creates else []
        ok_ids = []
        for item in results:
            ld = create_leads[item.index]
            if item.ok and item.id:
                self.link("lead", ld.id, self.entity, item.id)
                ok_ids.append(ld.id)
                c.created += 1
            else:
                self.fail("create", self.entity, item.error or "Not processed: an earlier item of the batch failed.",
                          local_type="lead", local_id=ld.id)
        self.resolve_failures("lead", ok_ids + linked)
        self.commit()
        return linked + ok_ids

    def _send(self, requests: list, local_ids: list[int], operation: str, local_type: str) -> None:
        """Send updates and record their outcome."""
        if not requests:
            return
        if self.dry_run:
            self.counts.updated += len(requests)
            return
        for item in self.gateway.write(requests):
            if item.ok:
                self.counts.updated += 1
            else:
                self.fail(operation, requests[item.index].entity, item.error or "Not processed.",
                          local_type=local_type, local_id=local_ids[item.index])
        now = utcnow()
        db.session.execute(update(CrmLink).where(
            CrmLink.integration_id == self.integration.id, CrmLink.local_type == local_type,
            CrmLink.local_id.in_(local_ids)).values(last_synced_at=now))
        self.commit()

    def iter_lead_chunks(self, query) -> Iterator[list[Lead]]:
        """Leads of a query in id order, a batch per lane at a time (keyset paging: memory stays flat)."""
        last, size = 0, BATCH * self.gateway.parallel
        while True:
            chunk = db.session.scalars(query.where(Lead.id > last).order_by(Lead.id).limit(size)).all()
            if not chunk:
                return
            yield list(chunk)
            last = chunk[-1].id

    # -- events

    def push_events(self, lead_ids: Sequence[int] | None = None, all_types: bool = False) -> None:
        """Write the selected event types as notes on linked leads (S6); each note carries a reference.

        Distributed leads carry all their events (``all_types``).
        """
        c = self.counts
        types = catalog.EVENT_TYPE_KEYS if all_types else self.integration.event_types
        if not types:
            c.note = "No lead event types are selected (Advanced General Options): only distributed leads' events."
        labels = dict(catalog.EVENT_TYPES)
        self.reconcile_inflight_events()
        # Walk the linked leads in chunks and take each chunk's unsent events: every query is bounded and uses
        # an index (events by lead, links by local id), whatever the table sizes and statistics.
        leads_q = (select(CrmLink.local_id, CrmLink.entity, CrmLink.crm_id, Lead.origin)
                   .join(Lead, Lead.id == CrmLink.local_id)
                   .where(CrmLink.integration_id == self.integration.id, CrmLink.local_type == "lead",
                          CrmLink.crm_id != "", Lead.organization_id == self.org_id))
        if lead_ids is not None:
            leads_q = leads_q.where(CrmLink.local_id.in_(list(lead_ids)))
        sent = aliased(CrmLink)
        unsent = ~select(sent.id).where(sent.integration_id == self.integration.id, sent.local_type == "event",
                                        sent.local_id == MarketingEvent.id).exists()
        total = len(lead_ids) if lead_ids is not None else db.session.scalar(
            select(func.count()).select_from(CrmLink).where(CrmLink.integration_id == self.integration.id,
                                                            CrmLink.local_type == "lead"))
        chunk_size = BATCH * max(1, self.gateway.parallel)
        done, last, buffer, pending = 0, 0, [], None
        while True:
            leads = db.session.execute(leads_q.where(CrmLink.local_id > last).order_by(CrmLink.local_id)
                                       .limit(LEAD_CHUNK_FOR_EVENTS)).all()
            if leads:
                last = leads[-1].local_id
                target = {row.local_id: row for row in leads}
                found = db.session.execute(
                    select(MarketingEvent.id, MarketingEvent.lead_id, MarketingEvent.event_type,
                           MarketingEvent.occurred_at, MarketingEvent.details)
                    .where(MarketingEvent.lead_id.in_(list(target)), unsent).order_by(MarketingEvent.id)).all()
                # Distributed leads carry all their events (G3, S6); the others the selected types (G4).
                buffer += [(ev, target[ev.lead_id]) for ev in found
                           if ev.event_type in types or target[ev.lead_id].origin == LeadOrigin.distributed]
                done += len(leads)
            # Send every full chunk now (and the rest at the end): the buffer never holds more than a chunk
            # plus one group of leads' events, whatever the number of leads.
            # While one chunk is on its way to the CRM, the next is read and prepared, and the one before is
            # recorded: the database work and the CRM's work overlap instead of taking turns.
            while len(buffer) >= chunk_size or (not leads and buffer):
                rows, buffer = buffer[:chunk_size], buffer[chunk_size:]
                started = self._start_notes(rows, labels)
                if pending is not None:
                    self._finish_notes(*pending)
                pending = started
            self.progress(done, total)
            if not leads:
                break
        if pending is not None:
            self._finish_notes(*pending)

    def _start_notes(self, rows: list, labels: dict):
        """Mark one chunk of notes in flight, then send it in the background; (rows, future), or None."""
        c = self.counts
        if self.dry_run:
            c.created += len(rows)
            return None
        requests = []
        for event, lead in rows:
            entity, crm_id = lead.entity, lead.crm_id
            when = event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            requests.append(CreateRequest("annotation", {
                "subject": f"{self.platform}: {labels.get(event.event_type, event.event_type)} "
                           f"{REF.format(id=event.id)}",
                "notetext": f"{labels.get(event.event_type, event.event_type)} on {when}."
                            + (f"\n{event.details}" if event.details else ""),
                "objectid": EntityReference(crm_id, entity),
                "objecttypecode": entity,
            }))
            # In flight: a crash after the CRM wrote the note but before we saved its id is reconciled.
            self.link("event", event.id, "annotation", "")
        self.commit()
        if self.gateway.parallel <= 1:
            # A push (one lane, a kept session) writes in this thread: a new thread would need a new NTLM session.
            now: Future = Future()
            try:
                now.set_result(self.gateway.write(requests))
            except Exception as exc:  # noqa: BLE001 - handed over to _finish_notes, which raises it
                now.set_exception(exc)
            return rows, now
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-writer")
        return rows, self._writer.submit(self.gateway.write, requests)

    def _finish_notes(self, rows: list, future) -> None:
        """Record the outcome of a chunk of notes: link those written, record those that failed."""
        c = self.counts
        results = future.result()
        ok = []
        for item in results:
            event = rows[item.index][0]
            if item.ok and item.id:
                ok.append((event.id, item.id))
            else:
                if not getattr(item.error, "outcome_unknown", False):
                    # Refused for certain: no note was written. Otherwise the in-flight marker stays, and the
                    # next run finds the note by its reference or sends it again.
                    db.session.execute(delete(CrmLink).where(
                        CrmLink.integration_id == self.integration.id, CrmLink.local_type == "event",
                        CrmLink.local_id == event.id))
                self.fail("create", "annotation", item.error or "Not processed.", local_type="event",
                          local_id=event.id)
        if ok:
            table = CrmLink.__table__
            db.session.execute(
                table.update().where(table.c.integration_id == self.integration.id,
                                     table.c.local_type == "event", table.c.local_id == bindparam("lid"))
                .values(crm_id=bindparam("cid")),
                [{"lid": event_id, "cid": crm_id} for event_id, crm_id in ok])
        c.created += len(ok)
        self.resolve_failures("event", [e for e, _ in ok])
        self.commit()

    def push_custom_notes(self, lead_ids: Sequence[int]) -> None:
        """G3 *send custom fields into the Notes*: a distributed lead's custom fields as one note on its record."""
        if not self.integration.ld_custom_fields_in_notes or not lead_ids:
            return
        c = self.counts
        rows = db.session.execute(select(Lead.id, Lead.custom_fields_json).where(
            Lead.id.in_(list(lead_ids)), Lead.origin == LeadOrigin.distributed,
            Lead.custom_fields_json.notin_(["", "{}"]))).all()
        already = self.links("custom-note", [r.id for r in rows])
        targets = self.links("lead", [r.id for r in rows if r.id not in already])
        todo = [(r.id, json.loads(r.custom_fields_json)) for r in rows if r.id in targets and r.id not in already]
        if not todo:
            return
        if self.dry_run:
            c.created += len(todo)
            return
        requests = [CreateRequest("annotation", {
            "subject": f"{self.platform}: custom fields [ref:C{lead_id}]",
            "notetext": "\n".join(f"{name}: {value}" for name, value in sorted(fields.items())),
            "objectid": EntityReference(targets[lead_id].crm_id, targets[lead_id].entity),
            "objecttypecode": targets[lead_id].entity,
        }) for lead_id, fields in todo]
        for item in self.gateway.write(requests):
            lead_id = todo[item.index][0]
            if item.ok and item.id:
                self.link("custom-note", lead_id, "annotation", item.id)
                c.created += 1
            else:
                self.fail("create", "annotation", item.error or "Not processed.", local_type="lead", local_id=lead_id)
        self.commit()

    def reconcile_inflight_events(self) -> None:
        """Notes sent by a run that died before saving their ids: find them by reference, or send again."""
        pending = db.session.execute(
            select(CrmLink.local_id, MarketingEvent.lead_id)
            .join(MarketingEvent, MarketingEvent.id == CrmLink.local_id)
            .where(CrmLink.integration_id == self.integration.id, CrmLink.local_type == "event", CrmLink.crm_id == "")
        ).all()
        if not pending:
            return
        others = db.session.scalars(select(SyncRun).where(
            SyncRun.integration_id == self.integration.id, SyncRun.id != self.run.id,
            SyncRun.status == RunStatus.running)).all()
        if any(run_alive(r) for r in others):
            return  # another live run may have these notes in flight: they are left to a later run
        lead_guids = {link.local_id: link.crm_id for link in
                      self.links("lead", list({lead_id for _, lead_id in pending})).values()}
        wanted = {event_id for event_id, _ in pending}
        found: dict[int, str] = {}
        guids = sorted(set(lead_guids.values()))
        for i in range(0, len(guids), LOOKUP_CHUNK):
            query = fetch_xml("annotation", ["annotationid", "subject"],
                              [("objectid", "in", guids[i:i + LOOKUP_CHUNK]), ("subject", "like", "%[ref:E%")],
                              order=["annotationid"])
            for note in self.gateway.fetch(query):
                subject = note.attributes.get("subject") or ""
                start = subject.rfind("[ref:E")
                if start >= 0 and subject.endswith("]"):
                    with contextlib.suppress(ValueError):
                        event_id = int(subject[start + 6:-1])
                        if event_id in wanted:
                            found[event_id] = note.id
        for event_id in wanted:
            query = update(CrmLink).where(CrmLink.integration_id == self.integration.id,
                                          CrmLink.local_type == "event", CrmLink.local_id == event_id)
            if event_id in found:
                db.session.execute(query.values(crm_id=found[event_id]))
            else:
                db.session.execute(delete(CrmLink).where(
                    CrmLink.integration_id == self.integration.id, CrmLink.local_type == "event",
                    CrmLink.local_id == event_id))
        self.resolve_failures("event", list(found))
        self.commit()
        log.info("reconciled %d in-flight notes (%d found in the CRM)", len(wanted), len(found))

    # -- nightly steps

    def step_pull_records(self) -> None:
        """S7: every CRM lead and contact with an email becomes (or updates) a platform lead."""
        integ = self.integration
        c = self.counts
        if not (integ.marketing_automation and integ.ma_pull_contacts) or integ.record_leads_as == "contact":
            c.note = "Off: Pull Contacts is not selected (Usage Profile)."
            return
        for entity in ("lead", "contact"):
            self._import_people(entity, fetch_xml(entity, [f"{entity}id", "emailaddress1", *CONTACT_ATTRS.values(),
                                                           *(["companyname"] if entity == "lead" else [])],
                                                  order=[f"{entity}id"]))

    def _import_people(self, entity: str, query: str, into_list: ContactList | None = None) -> int:
        """Import CRM people with an email as platform leads; records without email are skipped and counted."""
        c = self.counts
        mapping = LEAD_ATTRS if entity == "lead" else CONTACT_ATTRS
        batch: list = []
        imported = 0

        postgres = db.session.get_bind().dialect.name == "postgresql"

        def among(column, values: list):
            """``column IN values``; on PostgreSQL as one array parameter (one plan, whatever the count)."""
            if not postgres:
                return column.in_(values)
            from sqlalchemy import any_
            from sqlalchemy.dialects.postgresql import ARRAY

            return column == any_(bindparam("among", values, type_=ARRAY(column.type), unique=True))

        def flush() -> None:
            nonlocal imported
            emails = {normalize_email(r.attributes["emailaddress1"]): r for r in batch}
            known = {ld.email_normalized: ld for ld in db.session.scalars(select(Lead).where(
                Lead.organization_id == self.org_id, among(Lead.email_normalized, list(emails))))}
            linked = set(db.session.scalars(select(CrmLink.local_id).where(
                CrmLink.integration_id == self.integration.id, CrmLink.local_type == "lead",
                among(CrmLink.local_id, [ld.id for ld in known.values()])))) if known else set()
            fresh: list = []  # new leads, inserted together by one flush below
            members: list[int] = []
            for email, rec in emails.items():
                lead = known.get(email)
                values = {ours: rec.attributes.get(crm) or "" for ours, crm in mapping.items()}
                if lead is None:
                    c.created += 1
                    if self.dry_run:
                        continue
                    lead = Lead(organization_id=self.org_id, email=rec.attributes["emailaddress1"],
                                email_normalized=email, origin=LeadOrigin.crm, **values)
                    db.session.add(lead)
                    fresh.append((lead, rec))
                else:
                    if lead.origin == LeadOrigin.crm:
                        changed = {k: v for k, v in values.items() if v and getattr(lead, k) != v}
                        if changed:
                            c.updated += 1
                            if not self.dry_run:
                                for k, v in changed.items():
                                    setattr(lead, k, v)
                    if lead.id not in linked and not self.dry_run:
                        self.link("lead", lead.id, entity, rec.id)
                    members.append(lead.id)
                imported += 1
            if fresh:
                db.session.flush()
                for lead, rec in fresh:
                    self.link("lead", lead.id, entity, rec.id)
                    members.append(lead.id)
            if into_list is not None and not self.dry_run and members:
                present = set(db.session.scalars(select(ContactListMember.lead_id).where(
                    ContactListMember.list_id == into_list.id, among(ContactListMember.lead_id, members))))
                db.session.add_all(ContactListMember(list_id=into_list.id, lead_id=lead_id)
                                   for lead_id in members if lead_id not in present)
            if not self.dry_run:
                self.commit()
            batch.clear()

        for rec in self.gateway.fetch(query):
            c.read += 1
            if not normalize_email(rec.attributes.get("emailaddress1")):
                c.skipped += 1  # every member needs an email (S7, S8)
                continue
            batch.append(rec)
            if len(batch) >= DB_CHUNK:
                flush()
                self.progress(c.read, 0)
        if batch:
            flush()
        return imported

    def step_contact_lists(self) -> None:
        """S8: CRM marketing lists of leads or contacts (never accounts) become platform contact lists."""
        integ = self.integration
        c = self.counts
        if not (integ.marketing_automation and integ.ma_pull_contacts) or integ.record_leads_as == "contact":
            c.note = "Off: Pull Contacts is not selected (Usage Profile)."
            return
        query = fetch_xml("list", ["listid", "listname", "type", "createdfromcode", "query"],
                          [("createdfromcode", "in", [2, 4]), ("statecode", "eq", 0)], order=["listid"])
        for crm_list in list(self.gateway.fetch(query)):
            attrs = crm_list.attributes
            code = attrs.get("createdfromcode")
            code = code.value if isinstance(code, OptionSetValue) else code
            member = {2: "contact", 4: "lead"}.get(code)
            if member is None:
                continue
            dynamic = bool(attrs.get("type"))
            local = db.session.scalar(select(ContactList).where(
                ContactList.organization_id == self.org_id, ContactList.crm_list_id == crm_list.id))
            if local is not None and local.last_synced_at and dynamic and not local.keep_in_sync:
                c.skipped += 1
                continue
            if self.dry_run:
                c.created += local is None
                continue
            if local is None:
                local = ContactList(organization_id=self.org_id, crm_list_id=crm_list.id, dynamic=dynamic,
                                    member_type=member, name=attrs.get("listname") or "CRM list")
                db.session.add(local)
                c.created += 1
            else:
                local.name = attrs.get("listname") or local.name
                c.updated += 1
            db.session.flush()
            db.session.execute(delete(ContactListMember).where(ContactListMember.list_id == local.id))
            self.commit()
            list_id = local.id
            skipped_before = c.skipped
            columns = [f"{member}id", "emailaddress1", *CONTACT_ATTRS.values(),
                       *(["companyname"] if member == "lead" else [])]
            if dynamic and attrs.get("query"):
                members_query = _with_columns(attrs["query"], member, columns)
            else:
                members_query = fetch_xml(member, columns, order=[f"{member}id"], links=[{
                    "name": "listmember", "from": "entityid", "to": f"{member}id", "intersect": True,
                    "conditions": [("listid", "eq", crm_list.id)]}])
            local = db.session.get(ContactList, list_id)
            count = self._import_people(member, members_query, into_list=local)
            local = db.session.get(ContactList, list_id)
            local.member_count = count
            local.skipped_without_email = c.skipped - skipped_before
            local.last_synced_at = utcnow()
            self.commit()

    def step_push_marketing_leads(self) -> None:
        """S5: marketing leads whose score exceeds the threshold."""
        integ = self.integration
        if not (integ.marketing_automation and integ.ma_sync_leads):
            self.counts.note = "Off: Synchronize Marketing Automation Leads is not selected."
            return
        query = select(Lead).where(Lead.organization_id == self.org_id, Lead.origin == LeadOrigin.marketing,
                                   Lead.score > integ.ma_score_threshold)
        self._push_query(query, allow_updates=integ.ma_allow_field_updates)

    def step_push_distributed_leads(self) -> None:
        """S1 catch-up: distributed leads not yet in the CRM (a push that failed or was missed)."""
        integ = self.integration
        if not (integ.lead_distribution and integ.ld_sync_supplier_leads):
            self.counts.note = "Off: Synchronize Supplier Leads is not selected."
            return
        query = select(Lead).where(Lead.organization_id == self.org_id, Lead.origin == LeadOrigin.distributed)
        self._push_query(query, allow_updates=integ.ld_allow_field_updates, custom_notes=True)

    def _push_query(self, query, *, allow_updates: bool, custom_notes: bool = False) -> None:
        total = db.session.scalar(select(func.count()).select_from(query.subquery()))
        done = 0
        for chunk in self.iter_lead_chunks(query):
            linked = self.push_leads(chunk, allow_updates=allow_updates)
            if custom_notes:
                self.push_custom_notes(linked)
            done += len(chunk)
            self.progress(done, total)

    def step_push_events(self) -> None:
        """S6: the selected event types as notes."""
        self.push_events()

    def _linked_guids(self, entity: str | None = None) -> dict[str, int]:
        """CRM id -> local lead id, for every linked lead of this integration."""
        query = select(CrmLink.crm_id, CrmLink.local_id).where(
            CrmLink.integration_id == self.integration.id, CrmLink.local_type == "lead", CrmLink.crm_id != "")
        if entity:
            query = query.where(CrmLink.entity == entity)
        return {crm_id.lower(): local for crm_id, local in db.session.execute(query)}

    def step_pull_activities(self) -> None:
        """S6 back: tasks and phone calls on our leads, with subject, type, status, priority and due date."""
        c = self.counts
        guids = self._linked_guids()
        keys = sorted(guids)
        for i in range(0, len(keys), LOOKUP_CHUNK):
            query = fetch_xml("activitypointer", ["activityid", "activitytypecode", "subject", "statecode",
                                                  "statuscode", "prioritycode", "scheduledend", "regardingobjectid"],
                              [("regardingobjectid", "in", keys[i:i + LOOKUP_CHUNK])], order=["activityid"])
            for act in self.gateway.fetch(query):
                c.read += 1
                a = act.attributes
                regarding = a.get("regardingobjectid")
                lead_id = guids.get(regarding.id.lower()) if isinstance(regarding, EntityReference) else None
                if lead_id is None:
                    continue
                values = {
                    "activity_type": str(a.get("activitytypecode") or ""),
                    "subject": (a.get("subject") or "")[:400],
                    "status": act.formatted_values.get("statuscode") or act.formatted_values.get("statecode") or "",
                    "priority": act.formatted_values.get("prioritycode") or "",
                    "due_at": a.get("scheduledend"),
                }
                if self.dry_run:
                    c.created += 1
                    continue
                row = db.session.scalar(select(CrmActivity).where(
                    CrmActivity.organization_id == self.org_id, CrmActivity.crm_id == act.id))
                if row is None:
                    db.session.add(CrmActivity(organization_id=self.org_id, lead_id=lead_id, crm_id=act.id, **values))
                    c.created += 1
                elif any(getattr(row, k) != v for k, v in values.items()):
                    for k, v in values.items():
                        setattr(row, k, v)
                    c.updated += 1
            if not self.dry_run:
                self.commit()

    def step_pull_status(self) -> None:
        """S9: lead status from the CRM; qualify means accepted and disqualify rejected, everywhere (S12)."""
        c = self.counts
        guids = self._linked_guids("lead")
        keys = sorted(guids)
        for i in range(0, len(keys), LOOKUP_CHUNK):
            query = fetch_xml("lead", ["leadid", "statecode", "statuscode"],
                              [("leadid", "in", keys[i:i + LOOKUP_CHUNK])], order=["leadid"])
            changes = []
            for rec in self.gateway.fetch(query):
                c.read += 1
                state = _option(rec.attributes.get("statecode"))
                status = _option(rec.attributes.get("statuscode"))
                label = rec.formatted_values.get("statuscode") or LEAD_STATE.get(state, "")
                changes.append((guids[rec.id.lower()], state, status, label))
            leads = {ld.id: ld for ld in db.session.scalars(select(Lead).where(Lead.id.in_([x[0] for x in changes])))}
            for lead_id, state, status, label in changes:
                lead = leads.get(lead_id)
                if lead is None or (lead.crm_state_code, lead.crm_status_code) == (state, status):
                    continue
                c.updated += 1
                if self.dry_run:
                    continue
                lead.crm_state_code, lead.crm_status_code = state, status
                lead.crm_status = f"{LEAD_STATE.get(state, state)} · {label}" if label else LEAD_STATE.get(state, "")
                if lead.origin == LeadOrigin.distributed and state in (1, 2):
                    wanted = Acceptance.accepted if state == 1 else Acceptance.rejected
                    if lead.acceptance != wanted:
                        lead.acceptance, lead.acceptance_via, lead.acceptance_at = wanted, "crm", utcnow()
            if not self.dry_run:
                self.commit()

    def step_pull_opportunities(self) -> None:
        """S10: opportunities from our leads (marketing) and those whose contact's email matches (distribution)."""
        integ = self.integration
        c = self.counts
        cols = ["opportunityid", "name", "statecode", "estimatedvalue", "actualvalue", "estimatedclosedate",
                "originatingleadid", "parentcontactid"]
        if integ.marketing_automation and integ.ma_pull_opportunities:
            guids = self._linked_guids("lead")
            keys = sorted(guids)
            for i in range(0, len(keys), LOOKUP_CHUNK):
                query = fetch_xml("opportunity", cols, [("originatingleadid", "in", keys[i:i + LOOKUP_CHUNK])],
                                  order=["opportunityid"])
                for opp in self.gateway.fetch(query):
                    ref = opp.attributes.get("originatingleadid")
                    self._keep_opportunity(opp, guids.get(ref.id.lower()) if ref else None, "originating-lead")
        if integ.lead_distribution and integ.ld_pull_opportunities:
            emails = dict(db.session.execute(select(Lead.email_normalized, Lead.id).where(
                Lead.organization_id == self.org_id, Lead.origin == LeadOrigin.distributed)).all())
            keys = sorted(emails)
            for i in range(0, len(keys), LOOKUP_CHUNK):
                contacts = {rec.id.lower(): emails.get(normalize_email(rec.attributes.get("emailaddress1")))
                            for rec in self.gateway.fetch(fetch_xml(
                                "contact", ["contactid", "emailaddress1"],
                                [("emailaddress1", "in", keys[i:i + LOOKUP_CHUNK])], order=["contactid"]))}
                ids = sorted(contacts)
                for j in range(0, len(ids), LOOKUP_CHUNK):
                    query = fetch_xml("opportunity", cols, [("parentcontactid", "in", ids[j:j + LOOKUP_CHUNK])],
                                      order=["opportunityid"])
                    for opp in self.gateway.fetch(query):
                        ref = opp.attributes.get("parentcontactid")
                        self._keep_opportunity(opp, contacts.get(ref.id.lower()) if ref else None, "contact-email")
        if not self.dry_run:
            self.commit()
        if not (integ.marketing_automation and integ.ma_pull_opportunities) and not (
                integ.lead_distribution and integ.ld_pull_opportunities):
            c.note = "Off: no opportunity option is selected (Usage Profile)."

    def _keep_opportunity(self, opp, lead_id: int | None, rule: str) -> None:
        c = self.counts
        c.read += 1
        a = opp.attributes
        values = {
            "name": (a.get("name") or "")[:300], "rule": rule, "lead_id": lead_id,
            "state": {0: "Open", 1: "Won", 2: "Lost"}.get(_option(a.get("statecode")), "Open"),
            "estimated_value": _money(a.get("estimatedvalue")), "actual_value": _money(a.get("actualvalue")),
            "estimated_close": a.get("estimatedclosedate"),
        }
        if self.dry_run:
            c.created += 1
            return
        row = db.session.scalar(select(Opportunity).where(Opportunity.organization_id == self.org_id,
                                                          Opportunity.crm_id == opp.id))
        if row is None:
            db.session.add(Opportunity(organization_id=self.org_id, crm_id=opp.id, **values))
            c.created += 1
        elif any(getattr(row, k) != v for k, v in values.items() if k != "estimated_value"):
            for k, v in values.items():
                setattr(row, k, v)
            c.updated += 1

    def step_push_campaigns(self) -> None:
        """S11: campaigns to the CRM at the chosen data level; later changes follow."""
        integ = self.integration
        c = self.counts
        if not integ.create_campaigns:
            c.note = "Off: Create Campaigns in CRM is not selected."
            return
        campaigns = db.session.scalars(select(Campaign).where(Campaign.organization_id == self.org_id)
                                       .order_by(Campaign.id)).all()
        links = self.links("campaign", [cp.id for cp in campaigns])
        creates, create_ids, updates, update_ids = [], [], [], []
        for cp in campaigns:
            attrs = campaign_attributes(cp, integ.campaign_data_level, self.platform)
            link = links.get(cp.id)
            if link is None:
                creates.append(CreateRequest("campaign", attrs))
                create_ids.append(cp.id)
            elif cp.updated_at > link.last_synced_at:
                updates.append(UpdateRequest("campaign", link.crm_id, attrs))
                update_ids.append(cp.id)
            else:
                c.skipped += 1
        if creates and not self.dry_run:
            # A campaign's code names it in the CRM: one made by a run that died is found, not made twice.
            codes = {f"{self.platform}-{cid}": cid for cid in create_ids}
            query = fetch_xml("campaign", ["campaignid", "codename"], [("codename", "in", list(codes))],
                              order=["campaignid"])
            for rec in self.gateway.fetch(query):
                cid = codes.get(rec.attributes.get("codename"))
                if cid is not None:
                    self.link("campaign", cid, "campaign", rec.id)
                    idx = create_ids.index(cid)
                    create_ids.pop(idx)
                    creates.pop(idx)
                    c.skipped += 1
            self.commit()
        if self.dry_run:
            c.created += len(creates)
            c.updated += len(updates)
            return
        for item in self.gateway.write(creates):
            if item.ok and item.id:
                self.link("campaign", create_ids[item.index], "campaign", item.id)
                c.created += 1
            else:
                self.fail("create", "campaign", item.error or "Not processed.", local_type="campaign",
                          local_id=create_ids[item.index])
        self.commit()
        self._send(updates, update_ids, "update", "campaign")


def campaign_attributes(cp: Campaign, level: str, platform: str) -> dict:
    """A campaign's CRM attributes at the chosen data level (G4)."""
    attrs: dict = {"name": cp.name, "codename": f"{platform}-{cp.id}", "typecode": OptionSetValue(cp.type_code)}
    if cp.starts_on:
        attrs["proposedstart"] = cp.starts_on
    if cp.ends_on:
        attrs["proposedend"] = cp.ends_on
    if level in ("standard", "full"):
        if cp.description:
            attrs["description"] = cp.description
        if cp.objective:
            attrs["objective"] = cp.objective
        if cp.budget is not None:
            attrs["budgetedcost"] = Money(Decimal(str(cp.budget)))
    if level == "full":
        if cp.expected_revenue is not None:
            attrs["expectedrevenue"] = Money(Decimal(str(cp.expected_revenue)))
        if cp.expected_response is not None:
            attrs["expectedresponse"] = int(cp.expected_response)
        if cp.promotion_code:
            attrs["promotioncodename"] = cp.promotion_code
    return attrs


def _option(value) -> int | None:
    if isinstance(value, OptionSetValue):
        return value.value
    return int(value) if isinstance(value, int | str) and str(value).lstrip("-").isdigit() else None


def _money(value) -> Decimal | None:
    if isinstance(value, Money):
        return value.value
    if value is None:
        return None
    return Decimal(str(value))


def _with_columns(query: str, entity: str, columns: list[str]) -> str:
    """A dynamic list's own FetchXML, with the columns we need and a stable order for paging."""
    from .connectors.dynamics.xml import parse_xml

    root = parse_xml(query.encode())
    ent = root.find("entity")
    if ent is None or ent.get("name") != entity:
        raise DynamicsError(f"The dynamic list's query is not about {entity} records.")
    for el in list(ent):
        if el.tag in ("attribute", "all-attributes", "order"):
            ent.remove(el)
    from lxml import etree

    for index, name in enumerate(columns):
        ent.insert(index, etree.Element("attribute", name=name))
    ent.insert(len(columns), etree.Element("order", attribute=f"{entity}id", descending="false"))
    for attr in ("count", "page", "paging-cookie"):
        root.attrib.pop(attr, None)
    return etree.tostring(root, encoding="unicode")


# --------------------------------------------------------------------------------------------------------------
# Entry points: each makes a run, holds the integration's lock, records the outcome and the banner.


def new_run(integration: CrmIntegration, kind: str, *, dry_run: bool = False, trigger: str = "",
            job_id: str | None = None) -> SyncRun:
    """A queued run row (made before the job is enqueued, so the page can show it at once)."""
    run = SyncRun(integration_id=integration.id, kind=kind, dry_run=dry_run, trigger=trigger, job_id=job_id)
    db.session.add(run)
    db.session.commit()
    return run


def lock_name(integration_id: int, kind: str) -> str:
    """The Redis lock of a run kind: pushes have their own, every other run shares one per integration."""
    return f"portal:sync-lock:{integration_id}:{'push' if kind in ('push', 'acceptance') else 'run'}"


def lock_seconds() -> int:
    """How long a lock outlives its holder: its holder extends it while alive, so a killed worker's lock expires.

    Longer than the connector's read timeout, so that a dead holder's last request is over when another run starts.
    """
    return int(current_app.config.get("SYNC_LOCK_SECONDS") or 90)


@contextlib.contextmanager
def integration_lock(integration_id: int, kind: str, run_id: int | None = None) -> Iterator[bool]:
    """One nightly/manual run per integration at a time (pushes have their own short lock).

    The lock's value names the run holding it, and a thread extends it while the run is alive; a worker killed
    mid-run leaves a lock that expires after ``lock_seconds`` instead of blocking the integration for hours.
    """
    from . import queues

    ttl = lock_seconds()
    lock = queues.redis().lock(lock_name(integration_id, kind), timeout=ttl,
                               blocking_timeout=30 if kind == "push" else 0, thread_local=False)
    got = lock.acquire(token=f"run-{run_id}" if run_id is not None else None)
    stop = threading.Event()
    beat = None
    if got:
        def extend() -> None:
            while not stop.wait(ttl / 3):
                with contextlib.suppress(Exception):
                    lock.reacquire()

        beat = threading.Thread(target=extend, name=f"sync-lock-{integration_id}", daemon=True)
        beat.start()
    try:
        yield bool(got)
    finally:
        stop.set()
        if beat is not None:
            beat.join(timeout=5)
        if got:
            with contextlib.suppress(Exception):
                lock.release()


def run_alive(run: SyncRun) -> bool:
    """True while a run is running and still holds its lock (its worker is alive)."""
    from . import queues

    if run.status != RunStatus.running:
        return False
    held = queues.redis().get(lock_name(run.integration_id, run.kind))
    return held is not None and held.decode() == f"run-{run.id}"


def close_stopped_runs(integration_id: int, current_id: int) -> int:
    """Runs left "running" by a worker that died (their lock is gone): marked failed, saying why."""
    rows = db.session.scalars(select(SyncRun).where(
        SyncRun.integration_id == integration_id, SyncRun.id != current_id,
        SyncRun.status == RunStatus.running)).all()
    stopped = [r for r in rows if not run_alive(r)]
    for row in stopped:
        row.status = RunStatus.failed
        row.finished_at = utcnow()
        row.message = ("The worker stopped before this run finished (it was killed or restarted). Nothing is lost: "
                       "the records it did not finish are picked up by the next run.")
    if stopped:
        db.session.commit()
    return len(stopped)


def execute(run_id: int, steps: Sequence[str] | None = None, lead_ids: Sequence[int] | None = None,
            failure_ids: Sequence[int] | None = None, gateway: CrmGateway | None = None) -> SyncRun:
    """Carry out a run: the steps of a nightly run, a push of given leads, or a retry of failures."""
    session = db.session()
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        return _execute(run_id, steps, lead_ids, failure_ids, gateway)
    finally:
        session.expire_on_commit = expire


def _execute(run_id: int, steps: Sequence[str] | None, lead_ids: Sequence[int] | None,
             failure_ids: Sequence[int] | None, gateway: CrmGateway | None) -> SyncRun:
    # A run commits after every batch; without expiring, the rows it holds are not reloaded one by one after
    # each commit (a run writes its own rows, so what it holds stays right).
    run = db.session.get(SyncRun, run_id)
    integration = db.session.get(CrmIntegration, run.integration_id)
    with integration_lock(integration.id, run.kind, run.id) as got:
        if not got:
            run.status = RunStatus.failed
            run.message = "Another run of this integration is in progress: this one was not started."
            run.finished_at = utcnow()
            db.session.commit()
            return run
        run.status, run.started_at = RunStatus.running, utcnow()
        db.session.commit()
        close_stopped_runs(integration.id, run.id)
        runner = None
        if gateway is None and run.kind in ("push", "acceptance"):
            gateway = kept_gateway(integration)
        try:
            runner = Runner(integration, run, gateway)
            if run.kind == "push":
                with runner.step("push"):
                    leads = db.session.scalars(select(Lead).where(Lead.id.in_(list(lead_ids or ())),
                                                                  Lead.organization_id == integration.organization_id)
                                               ).all()
                    linked = runner.push_leads(list(leads), allow_updates=integration.ld_allow_field_updates)
                    if linked:
                        runner.push_events(linked, all_types=True)
                        runner.push_custom_notes(linked)
            elif run.kind == "retry":
                _retry(runner, failure_ids)
            else:
                for name in steps or NIGHTLY_STEPS:
                    with runner.step(name):
                        getattr(runner, f"step_{name}")()
            run = db.session.get(SyncRun, run_id)
            run.status = RunStatus.partial if run.failed_count else RunStatus.finished
            run.message = summary(run)
            if not run.dry_run:
                record_success(db.session.get(CrmIntegration, integration.id))
        except DynamicsError as exc:
            _abort(run_id, integration.id, exc,
                   pending_leads=list(lead_ids or ()) if run.kind == "push" and exc.retryable else ())
        except Exception as exc:
            log.exception("sync run %s crashed", run_id)
            _abort(run_id, integration.id, DynamicsError(f"The run stopped on an internal error: {exc}",
                                                         action="Retry the run; if it fails again, report it."))
        finally:
            run = db.session.get(SyncRun, run_id)
            run.finished_at = utcnow()
            run.progress_done = run.progress_total
            if runner is not None:
                runner.close()
                if gateway is None:
                    runner.gateway.close()
            db.session.commit()
    return run


_KEPT: dict[int, tuple[str, CrmGateway, float]] = {}
KEEP_SECONDS = 300


def kept_gateway(integration: CrmIntegration) -> CrmGateway:
    """A gateway kept between pushes of one integration in this worker: the NTLM handshake is done once.

    It is replaced when the connection settings change, and dropped after five idle minutes.
    """
    now = time.monotonic()
    for key, (_, gw, used) in list(_KEPT.items()):
        if now - used > KEEP_SECONDS:
            gw.close()
            del _KEPT[key]
    fingerprint = integration.connection_fingerprint()
    kept = _KEPT.get(integration.id)
    if kept is None or kept[0] != fingerprint:
        if kept is not None:
            kept[1].close()
        kept = (fingerprint, CrmGateway(integration, 1), now)
    _KEPT[integration.id] = (kept[0], kept[1], now)
    return kept[1]


def _abort(run_id: int, integration_id: int, exc: DynamicsError, pending_leads: Sequence[int] = ()) -> None:
    db.session.rollback()
    run = db.session.get(SyncRun, run_id)
    run.status = RunStatus.failed
    run.message = f"{exc.message} What to do: {exc.action}"
    # A push stopped by a transient fault: its leads wait as retryable failures, so the retry comes soon
    # (not only with the nightly catch-up).
    linked = set(db.session.scalars(select(CrmLink.local_id).where(
        CrmLink.integration_id == integration_id, CrmLink.local_type == "lead",
        CrmLink.local_id.in_(list(pending_leads) or [-1]))))
    entity = db.session.get(CrmIntegration, integration_id).record_leads_as
    for lead_id in [i for i in pending_leads if i not in linked]:
        previous = db.session.scalar(select(SyncFailure).where(
            SyncFailure.integration_id == integration_id, SyncFailure.status == "pending",
            SyncFailure.local_type == "lead", SyncFailure.local_id == lead_id).limit(1))
        attempts = previous.attempts + 1 if previous else 1
        if previous:
            previous.status = "superseded"
        db.session.add(SyncFailure(
            run_id=run_id, integration_id=integration_id, step="push", operation="create", entity=entity,
            local_type="lead", local_id=lead_id, code=exc.code, message=exc.message, action=exc.action,
            raw=str(exc.detail or "")[:20000], retryable=True, attempts=attempts,
            next_attempt_at=utcnow() + backoff(attempts)))
        run.failed_count += 1
    if not run.dry_run:
        record_failure(db.session.get(CrmIntegration, integration_id), exc.code, exc.message, exc.action)
    db.session.commit()


def summary(run: SyncRun) -> str:
    """One line for the ledger."""
    verb = "would create" if run.dry_run else "created"
    return (f"{verb} {run.created_count}, updated {run.updated_count}, skipped {run.skipped_count}, "
            f"failed {run.failed_count}")


def _retry(runner: Runner, failure_ids: Sequence[int] | None) -> None:
    """Retry failed records: their leads and events are pushed again; campaigns by the campaign step."""
    query = select(SyncFailure).where(SyncFailure.integration_id == runner.integration.id,
                                      SyncFailure.status == "pending")
    if failure_ids:
        query = query.where(SyncFailure.id.in_(list(failure_ids)))
    failures = db.session.scalars(query).all()
    lead_ids = {f.local_id for f in failures if f.local_type == "lead" and f.local_id}
    event_leads = set(db.session.scalars(select(MarketingEvent.lead_id).where(MarketingEvent.id.in_(
        [f.local_id for f in failures if f.local_type == "event" and f.local_id] or [-1]))))
    has_campaigns = any(f.local_type == "campaign" for f in failures)
    with runner.step("retry"):
        if lead_ids:
            leads = db.session.scalars(select(Lead).where(Lead.id.in_(lead_ids))).all()
            runner.push_leads(list(leads), allow_updates=False)
        if lead_ids or event_leads:
            runner.push_events(sorted(lead_ids | event_leads))
        if has_campaigns:
            runner.step_push_campaigns()


def push_acceptance(lead: Lead, integration: CrmIntegration) -> None:
    """Accepted or rejected in the portal or by email: qualify or disqualify the CRM lead too (S12)."""
    link = db.session.scalar(select(CrmLink).where(CrmLink.integration_id == integration.id,
                                                   CrmLink.local_type == "lead", CrmLink.local_id == lead.id))
    if link is None or link.entity != "lead" or lead.acceptance == Acceptance.pending:
        return
    state, status = (1, 3) if lead.acceptance == Acceptance.accepted else (2, 6)
    gateway = CrmGateway(integration, 1)
    try:
        gateway.service().set_state("lead", link.crm_id, state, status)
    finally:
        gateway.close()
    lead.crm_state_code, lead.crm_status_code = state, status
    lead.crm_status = "Qualified" if state == 1 else "Disqualified · No Longer Interested"
    db.session.commit()


def running_run(integration_id: int) -> SyncRun | None:
    """A nightly or manual run of this integration that is queued or running."""
    return db.session.scalar(select(SyncRun).where(
        SyncRun.integration_id == integration_id, SyncRun.kind.in_(["nightly", "manual"]),
        SyncRun.status.in_([RunStatus.queued, RunStatus.running])).order_by(SyncRun.id.desc()).limit(1))


def nightly_slot(integration_id: int, day: datetime) -> datetime:
    """When an integration's nightly run starts: spread between 01:00 and 05:00 UTC, stable per integration."""
    minutes = (integration_id * 7919) % (4 * 60)
    base = datetime(day.year, day.month, day.day, 1, 0, tzinfo=UTC)
    return base + timedelta(minutes=minutes)
