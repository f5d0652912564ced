"""Marketing events as notes on the CRM records of linked leads, sent a chunk ahead while the last is recorded."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import aliased

from .. import catalog
from ..connectors.dynamics.errors import NotFoundError
from ..connectors.dynamics.soap import like_contains
from ..extensions import db
from ..platform_models import CrmLink, Lead, LeadOrigin, MarketingEvent
from . import mapping
from .context import BATCH, Context
from .locks import other_live_run
from .pushing import forget_deleted

log = logging.getLogger(__name__)

LEAD_CHUNK_FOR_EVENTS = 500  # linked leads whose events are gathered per query


def push_events(ctx: Context, lead_ids: Sequence[int] | None = None, all_types: bool = False) -> None:
    """Write the selected event types as notes on linked leads (S6); each note carries a reference.

    Distributed leads carry all their events (``all_types``).
    """
    c = ctx.counts
    types = catalog.EVENT_TYPE_KEYS if all_types else ctx.integration.event_types
    if not types:
        c.note = "No lead event types are selected (Advanced General Options): only distributed leads' events."
    labels = dict(catalog.EVENT_TYPES)
    reconcile_inflight_events(ctx)
    # Walk the linked leads in chunks and take each chunk's unsent events: every query is bounded and uses
    # an index (events by lead, links by local id), whatever the table sizes and statistics.
    leads_q = (select(CrmLink.local_id, CrmLink.entity, CrmLink.crm_id, Lead.origin)
               .join(Lead, Lead.id == CrmLink.local_id)
               .where(CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "lead",
                      CrmLink.crm_id != "", Lead.organization_id == ctx.org_id))
    if lead_ids is not None:
        leads_q = leads_q.where(CrmLink.local_id.in_(list(lead_ids)))
    sent = aliased(CrmLink)
    unsent = ~select(sent.id).where(sent.integration_id == ctx.integration.id, sent.local_type == "event",
                                    sent.local_id == MarketingEvent.id).exists()
    total = len(lead_ids) if lead_ids is not None else db.session.scalar(
        select(func.count()).select_from(CrmLink).where(CrmLink.integration_id == ctx.integration.id,
                                                        CrmLink.local_type == "lead"))
    chunk_size = BATCH * max(1, ctx.gateway.parallel)
    writer = NoteWriter(ctx, labels)
    done, last, buffer, pending = 0, 0, [], None
    try:
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
                started = writer.start(rows)
                if pending is not None:
                    writer.finish(*pending)
                pending = started
            ctx.rec.progress(done, total)
            if not leads:
                break
        if pending is not None:
            writer.finish(*pending)
    except BaseException:
        # After a failure nobody reads a chunk's outcome: its notes stay in flight and are reconciled later.
        # Nor is a chunk still on its way waited for (the run may have met its time limit with the CRM hung).
        writer.close(wait=False)
        raise
    writer.close()


class NoteWriter:
    """Sends a chunk of notes in the background and records the one before."""

    def __init__(self, ctx: Context, labels: dict):
        self.ctx = ctx
        self.labels = labels
        self._pool: ThreadPoolExecutor | None = None

    def close(self, wait: bool = True) -> None:
        """Wait for a chunk still being sent (or, ``wait=False``, leave it to end on its own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None

    def start(self, rows: list) -> tuple[list, Future]:
        """Mark one chunk of notes in flight, then send it (in the background when there are lanes to spare)."""
        ctx = self.ctx
        # In flight: a crash after the CRM wrote the note but before we saved its id is reconciled. The marker
        # is also the claim: an event another run has in flight or has sent is not sent again.
        held = ctx.mark_in_flight("event", [event.id for event, _ in rows], "annotation")
        rows[:] = [(event, lead) for event, lead in rows if event.id in held]
        requests = []
        for event, lead in rows:
            label = self.labels.get(event.event_type, event.event_type)
            requests.append(mapping.event_note(event, label, lead.entity, lead.crm_id, ctx.platform))
        if ctx.gateway.parallel <= 1 or not ctx.writes:
            # A push (one lane, a kept session) writes in this thread: a new thread would need a new NTLM session.
            now: Future = Future()
            try:
                now.set_result(ctx.write(requests))
            except Exception as exc:  # noqa: BLE001 - handed over to finish, which raises it
                now.set_exception(exc)
            return rows, now
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-writer")
        return rows, self._pool.submit(ctx.write, requests)

    def finish(self, rows: list, future: Future) -> None:
        """Record the outcome of a chunk of notes: link those written, record those that failed."""
        ctx = self.ctx
        ok = []
        deleted: set[int] = set()
        for item in future.result():
            event = rows[item.index][0]
            if item.ok and (item.id or not ctx.writes):
                ok.append((event.id, item.id))
            else:
                if isinstance(item.error, NotFoundError):
                    deleted.add(rows[item.index][1].local_id)  # the lead's CRM record is gone
                if not getattr(item.error, "outcome_unknown", False):
                    # Refused for certain: no note was written. Otherwise the in-flight marker stays, and the
                    # next run finds the note by its reference or sends it again.
                    ctx.execute(delete(CrmLink).where(
                        CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "event",
                        CrmLink.local_id == event.id))
                ctx.rec.fail("create", "annotation", item.error or "Not processed.", local_type="event",
                             local_id=event.id)
        if ok:
            table = CrmLink.__table__
            ctx.execute(
                table.update().where(table.c.integration_id == ctx.integration.id,
                                     table.c.local_type == "event", table.c.local_id == bindparam("lid"))
                .values(crm_id=bindparam("cid")),
                [{"lid": event_id, "cid": crm_id} for event_id, crm_id in ok])
        ctx.counts.created += len(ok)
        ctx.rec.resolve_failures("event", [e for e, _ in ok])
        ctx.commit()
        if deleted:
            # Not failed again every night: the lead is created again by the next push, with its events.
            forget_deleted(ctx, sorted(deleted))


def reconcile_inflight_events(ctx: Context) -> None:
    """Notes sent by a run that died before saving their ids: find them by reference, or send again."""
    integration_id = ctx.integration.id
    pending = db.session.execute(
        select(CrmLink.local_id, MarketingEvent.lead_id)
        .join(MarketingEvent, MarketingEvent.id == CrmLink.local_id)
        .where(CrmLink.integration_id == integration_id, CrmLink.local_type == "event", CrmLink.crm_id == "")
    ).all()
    if not pending or not ctx.writes:
        return
    if other_live_run(integration_id, ctx.run.id):
        return  # another live run may have these notes in flight: they are left to a later run
    lead_guids = {link.local_id: link.crm_id for link in
                  ctx.links("lead", list({lead_id for _, lead_id in pending})).values()}
    wanted = {event_id for event_id, _ in pending}
    found: dict[int, str] = {}
    # The reference is escaped for SQL Server's LIKE, where "[" opens a set of characters.
    for note in ctx.gateway.fetch_in("annotation", ["annotationid", "subject"], "objectid",
                                     sorted(set(lead_guids.values())),
                                     extra=[("subject", "like", like_contains("[ref:E"))]):
        event_id = mapping.event_of_note(note.attributes.get("subject") or "")
        if event_id in wanted:
            found[event_id] = note.id
    for event_id in wanted:
        query = update(CrmLink).where(CrmLink.integration_id == integration_id,
                                      CrmLink.local_type == "event", CrmLink.local_id == event_id)
        if event_id in found:
            db.session.execute(query.values(crm_id=found[event_id]))
        else:
            db.session.execute(delete(CrmLink).where(
                CrmLink.integration_id == integration_id, CrmLink.local_type == "event",
                CrmLink.local_id == event_id))
    ctx.rec.resolve_failures("event", list(found))
    ctx.commit()
    log.info("reconciled %d in-flight notes (%d found in the CRM)", len(wanted), len(found))
