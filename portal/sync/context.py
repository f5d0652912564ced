"""What a step works with: the integration, the CRM, the run's recorder, links, and writes that Preview turns off.

Every write of a run, to the CRM or to the portal's data, goes through here; a Preview is the same run with
``writes`` off, so it reads, matches and counts exactly as the real run would, and changes nothing.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flask import current_app
from sqlalchemy import select

from ..connectors.dynamics import DynamicsError
from ..connectors.dynamics.soap import BatchItemResult
from ..extensions import db
from ..models import CrmIntegration, utcnow
from ..platform_models import CrmLink, Lead, SyncRun
from . import limits
from .gateway import CrmGateway
from .recorder import DB_CHUNK, Recorder, StepCounts
from .watermarks import Watermarks

BATCH = 1000  # requests per ExecuteMultiple batch
log = logging.getLogger(__name__)


def chunked(values: Sequence, size: int) -> Iterator[list]:
    """The values, ``size`` at a time."""
    for i in range(0, len(values), size):
        yield list(values[i:i + size])


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Any iterable, ``size`` items at a time (a stream of records stays a page in memory)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def insert_ignoring_duplicates(model):
    """An INSERT that skips rows whose unique key exists (PostgreSQL and SQLite say it the same way)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(model).on_conflict_do_nothing()


class Context:
    """One run of one integration, as its steps see it."""

    def __init__(self, integration: CrmIntegration, run: SyncRun, gateway: CrmGateway):
        self.integration = integration
        self.run = run
        self.gateway = gateway
        self.writes = not run.dry_run
        self.platform = current_app.config["PLATFORM_NAME"]
        self.org_id = integration.organization_id
        self.entity = "contact" if integration.record_leads_as == "contact" else "lead"
        self._pending_links: list[dict] = []
        self.would_create: set[str] = set()  # in a Preview: emails of the people it would have created
        self.rec = Recorder(run, self.commit)
        self._thread = threading.get_ident()
        self.owner = f"run-{run.id}"  # whose claims these are (see ``claims``)
        self._watermarks: Watermarks | None = None

    @property
    def watermarks(self) -> Watermarks:
        """How far the pull steps have read this integration's CRM (loaded when a pull step first asks)."""
        if self._watermarks is None:
            self._watermarks = Watermarks(self.integration.id, full=bool(self.run.full), writes=self.writes)
        return self._watermarks

    @property
    def counts(self) -> StepCounts:
        """The current step's counts."""
        return self.rec.counts

    # -- the portal's data

    def commit(self) -> None:
        """Write buffered links in one statement, then commit (the ledger's rows always; data only when writing)."""
        self.learn_from_crm()
        if self._pending_links:
            # A link another writer saved meanwhile means the record is already done: kept, never a crash.
            db.session.execute(insert_ignoring_duplicates(CrmLink), self._pending_links)
            self._pending_links = []
        db.session.commit()

    def add(self, row: Any) -> None:
        """A new row of data (not in a Preview)."""
        if self.writes:
            db.session.add(row)

    def assign(self, row: Any, values: dict) -> None:
        """Change a row's fields (not in a Preview)."""
        if self.writes:
            for key, value in values.items():
                setattr(row, key, value)

    def execute(self, statement: Any, params: Any = None) -> None:
        """An UPDATE or DELETE of data (not in a Preview)."""
        if self.writes:
            db.session.execute(statement, params) if params is not None else db.session.execute(statement)

    # -- links between local records and CRM records

    def links(self, local_type: str, ids: Sequence[int]) -> dict[int, CrmLink]:
        """Existing links of these local records."""
        out: dict[int, CrmLink] = {}
        for chunk in chunked(ids, DB_CHUNK):
            for link in db.session.scalars(select(CrmLink).where(
                    CrmLink.integration_id == self.integration.id, CrmLink.local_type == local_type,
                    CrmLink.local_id.in_(chunk))):
                out[link.local_id] = link
        return out

    def mark_in_flight(self, local_type: str, ids: Sequence[int], entity: str) -> set[int]:
        """Save in-flight links (no CRM id yet) for these records; the ids this writer now holds.

        The link is the claim: a record another writer has in flight or has sent is left out.
        """
        if not self.writes or not ids:
            return set(ids)
        self.commit()
        rows = [{"integration_id": self.integration.id, "local_type": local_type, "local_id": i, "entity": entity,
                 "crm_id": "", "last_synced_at": utcnow()} for i in ids]
        held: set[int] = set()
        for chunk in chunked(rows, DB_CHUNK):
            held.update(db.session.scalars(insert_ignoring_duplicates(CrmLink).returning(CrmLink.local_id), chunk))
        db.session.commit()
        return held

    def link(self, local_type: str, local_id: int | None, entity: str, crm_id: str) -> None:
        """Remember which CRM record a local record is (written in bulk at the next ``commit``; not in a Preview)."""
        if self.writes and local_id is not None:
            self._pending_links.append({"integration_id": self.integration.id, "local_type": local_type,
                                        "local_id": local_id, "entity": entity, "crm_id": crm_id,
                                        "last_synced_at": utcnow()})

    def linked_guids(self, entity: str | None = None) -> dict[str, int]:
        """CRM id -> local lead id, for every linked lead of this integration."""
        query = select(CrmLink.crm_id, CrmLink.local_id).where(
            CrmLink.integration_id == self.integration.id, CrmLink.local_type == "lead", CrmLink.crm_id != "")
        if entity:
            query = query.where(CrmLink.entity == entity)
        return {crm_id.lower(): local for crm_id, local in db.session.execute(query)}

    # -- the CRM

    def write(self, requests: Sequence) -> list[BatchItemResult]:
        """Send writes to the CRM; in a Preview nothing is sent and each would-be write counts as done."""
        if not requests:
            return []
        if not self.writes:
            return [BatchItemResult(i, True, None) for i in range(len(requests))]
        try:
            return self.gateway.write(requests)
        finally:
            self.learn_from_crm()

    def learn_from_crm(self) -> None:
        """Keep what the CRM told the connector (a lowered batch limit) and say in the run's log what changed.

        Only the run's own thread touches its rows (notes are sent from a helper thread): the next commit
        stores what is learned.
        """
        if threading.get_ident() != self._thread:
            return
        for note in self.gateway.new_notes():
            self.note(note)
        limit = self.gateway.server_batch_limit
        if limit and limit != self.integration.batch_size_limit:
            self.integration.batch_size_limit = limit

    def note(self, text: str) -> None:
        """Add a sentence to the current step's note in the run's log (once)."""
        c = self.counts
        if c is not None and text not in c.note:
            c.note = f"{c.note} {text}".strip()

    def write_then_link(self, requests: Sequence, local_ids: Sequence[int], *, local_type: str, operation: str,
                        link_as: str | None = None, on_ok: Callable[[int, BatchItemResult], None] | None = None,
                        failure_type: str | None = None,
                        on_missing: Callable[[int, BatchItemResult], bool] | None = None) -> list[int]:
        """Write, then link each record written (or call ``on_ok``) and record each failure; the ids written.

        ``link_as`` is the CRM entity of created records, linked under ``local_type``; without it the records
        count as updated. ``on_missing`` may take a failure over (True: not recorded as failed).
        """
        c = self.counts
        ok_ids = []
        for item in self.write(requests):
            local_id = local_ids[item.index]
            if item.ok and (item.id or not self.writes or link_as is None):
                if on_ok is not None:
                    on_ok(local_id, item)
                elif link_as is not None:
                    self.link(local_type, local_id, link_as, item.id)
                if link_as is not None:
                    c.created += 1
                else:
                    c.updated += 1
                ok_ids.append(local_id)
            elif on_missing is not None and on_missing(local_id, item):
                continue
            else:
                self.rec.fail(operation, requests[item.index].entity,
                              item.error or "Not processed: an earlier item of the batch failed.",
                              local_type=failure_type or local_type, local_id=local_id)
        return ok_ids

    def build(self, make: Callable[[], Any], *, operation: str, entity: str, local_type: str,
              local_id: int | None) -> Any:
        """What ``make`` builds for one record, or None after recording why it could not be built.

        No record can stop a run: whatever goes wrong with one record's data becomes that record's failure,
        with a message, the raw detail and Retry.
        """
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 - one record's bad data must not stop the others
            log.warning("record %s %s could not be prepared: %r", local_type, local_id, exc)
            error = DynamicsError(
                f"This record could not be prepared for the CRM ({type(exc).__name__}: {exc}).",
                action="Correct the record and retry it; if it keeps failing, report it with the detail.",
                detail=traceback.format_exc()[-4000:], retryable=False)
            error.code = "invalid_record"
            self.rec.fail(operation, entity, error, local_type=local_type, local_id=local_id)
            return None

    def fit(self, entity: str, attributes: dict, local_type: str, local_id: int, operation: str,
            who: str) -> dict | None:
        """The attributes checked against the CRM's field lengths; None (a failed record) when one is too long.

        When the administrator chose it (Advanced General Options), a value too long is cut to the limit instead,
        and the run's log says so.
        """
        cut = bool(self.integration.cut_long_values)
        fitted, too_long = limits.fit(entity, attributes, limits.limits_for(entity, self.integration.max_lengths),
                                      cut=cut)
        if not too_long:
            return fitted
        if cut:
            first = too_long[0]
            label = limits.LABELS.get(first.attribute, first.attribute)
            self.note(f"Values too long for the CRM were cut to its limits (first: the {label} of {who}, "
                      f"{first.length} to {first.limit} characters).")
            return fitted
        error = DynamicsError(" ".join(t.describe() for t in too_long),
                              action="Shorten the value in the platform and retry the record, or choose to cut "
                                     "values too long for the CRM in Advanced General Options.",
                              detail="; ".join(f"{t.entity}.{t.attribute}: {t.length} > {t.limit}" for t in too_long),
                              retryable=False)
        error.code = "too_long"
        self.rec.fail(operation, entity, error, local_type=local_type, local_id=local_id)
        return None

    # -- walking local records

    def lead_chunks(self, query) -> Iterator[list[Lead]]:
        """Leads of a query in id order, a batch per lane at a time (keyset paging: memory stays flat)."""
        last, size = 0, BATCH * self.gateway.parallel
        while True:
            chunk = db.session.scalars(query.where(Lead.id > last).order_by(Lead.id).limit(size)).all()
            if not chunk:
                return
            yield list(chunk)
            last = chunk[-1].id
