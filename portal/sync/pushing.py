"""Pushing platform leads to the CRM: create or match by email, update when allowed, custom fields as a note."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import and_, delete, func, or_, select, update

from ..connectors.dynamics import DynamicsError
from ..connectors.dynamics.errors import NotFoundError
from ..connectors.dynamics.soap import CreateRequest, UpdateRequest, like_contains
from ..extensions import db
from ..models import utcnow
from ..platform_models import CrmLink, Lead, LeadOrigin, MarketingEvent
from . import claims, mapping
from .context import Context


def lead_attributes(ctx: Context, lead: Lead, entity: str, *, creating: bool) -> dict:
    """A lead's CRM attributes for this integration."""
    return mapping.lead_attributes(lead, entity, creating=creating, platform=ctx.platform,
                                   lead_source_value=ctx.integration.lead_source_value)


def prepared(ctx: Context, lead: Lead, entity: str, *, creating: bool) -> dict | None:
    """A lead's attributes, checked against the CRM's field lengths; None when the lead failed (recorded)."""
    operation = "create" if creating else "update"
    attrs = ctx.build(lambda: lead_attributes(ctx, lead, entity, creating=creating), operation=operation,
                      entity=entity, local_type="lead", local_id=lead.id)
    if attrs is None:
        return None
    return ctx.fit(entity, attrs, "lead", lead.id, operation, lead.email)


def push_leads(ctx: Context, leads: list[Lead], *, allow_updates: bool) -> list[int]:
    """Create leads in the CRM or link them to the record with their email (S3); ids now linked.

    A lead whose CRM record was deleted (the CRM says it does not exist) loses its link and is created again,
    with its events (the README's rule).
    """
    if not leads:
        return []
    existing = ctx.links("lead", [ld.id for ld in leads])
    unlinked = [ld.id for ld in leads if ld.id not in existing]
    held: list[int] = []
    if unlinked and ctx.writes:
        # One writer at a time per lead: a push, the nightly catch-up and a retry may all hold it now.
        # A push does not wait for a lead another run is sending (that run links it and sends its events);
        # the other runs wait a little for a push to finish with it.
        held = claims.claim(ctx.integration.id, "lead", unlinked, ctx.owner,
                            wait=0 if ctx.run.kind == "push" else None)
        existing.update(ctx.links("lead", held))  # linked by another writer while we waited: already done
    others = set(unlinked) - set(held) if ctx.writes else set()
    try:
        return _push_claimed(ctx, leads, existing, others, allow_updates=allow_updates)
    finally:
        claims.release(ctx.integration.id, "lead", held, ctx.owner)


def _push_claimed(ctx: Context, leads: list[Lead], existing: dict, others: set[int], *,
                  allow_updates: bool) -> list[int]:
    """``push_leads`` once the leads to create are this writer's alone (``others`` are another writer's)."""
    c = ctx.counts
    if allow_updates:
        # Standard fields change in the CRM only when allowed, and only if they changed since the last sync.
        stale = [ld for ld in leads if ld.id in existing and ld.fields_changed_at
                 and ld.fields_changed_at > existing[ld.id].last_synced_at]
        gone = send_updates(ctx, *_update_requests(ctx, stale, existing), "lead")
        if gone:
            forget_deleted(ctx, gone)
            existing = {k: v for k, v in existing.items() if k not in set(gone)}
    todo = [ld for ld in leads if ld.id not in existing and ld.id not in others]
    c.skipped += len(leads) - len(todo)
    if not todo:
        return [ld.id for ld in leads if ld.id not in others]
    found = ctx.gateway.find_by_email(ctx.entity, [ld.email_normalized for ld in todo])
    taken = _linked_elsewhere(ctx, set(found.values()))
    creates, create_ids, linked = [], [], [ld.id for ld in leads if ld.id in existing]
    update_reqs, update_ids = [], []
    for ld in todo:
        crm_id = found.get(ld.email_normalized)
        if crm_id and taken.get(crm_id.lower(), ld.id) != ld.id:
            # The CRM id is the identity: that record already is another platform lead's.
            ctx.rec.fail("create", ctx.entity, _already_linked(ld), local_type="lead", local_id=ld.id)
        elif crm_id:
            c.skipped += 1  # matched an existing CRM record by email: linked, fields untouched (S3)
            ctx.link("lead", ld.id, ctx.entity, crm_id)
            taken[crm_id.lower()] = ld.id
            linked.append(ld.id)
            attrs = prepared(ctx, ld, ctx.entity, creating=False) if allow_updates else None
            if attrs is not None:
                update_reqs.append(UpdateRequest(ctx.entity, crm_id, attrs))
                update_ids.append(ld.id)
        else:
            attrs = prepared(ctx, ld, ctx.entity, creating=True)
            if attrs is None:
                continue
            creates.append(CreateRequest(ctx.entity, attrs))
            create_ids.append(ld.id)
            if len(c.samples) < 5:
                c.samples.append(f"create {ctx.entity} {ld.email}")
    ctx.commit()
    send_updates(ctx, update_reqs, update_ids, "lead")
    ok_ids = ctx.write_then_link(creates, create_ids, local_type="lead", operation="create", link_as=ctx.entity)
    ctx.rec.resolve_failures("lead", ok_ids + linked)
    ctx.commit()
    return linked + ok_ids


def _update_requests(ctx: Context, leads: list[Lead], links: dict) -> tuple[list, list[int]]:
    requests, ids = [], []
    for ld in leads:
        attrs = prepared(ctx, ld, links[ld.id].entity, creating=False)
        if attrs is not None:
            requests.append(UpdateRequest(links[ld.id].entity, links[ld.id].crm_id, attrs))
            ids.append(ld.id)
    return requests, ids


def _linked_elsewhere(ctx: Context, crm_ids: set[str]) -> dict[str, int]:
    """CRM id -> the local lead already linked to it, among these CRM ids."""
    out: dict[str, int] = {}
    ids = sorted({i for crm_id in crm_ids for i in (crm_id, crm_id.lower())})
    for i in range(0, len(ids), 1000):
        for crm_id, local_id in db.session.execute(select(CrmLink.crm_id, CrmLink.local_id).where(
                CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "lead",
                CrmLink.entity == ctx.entity, CrmLink.crm_id.in_(ids[i:i + 1000]))):
            out[crm_id.lower()] = local_id
    return out


def _already_linked(lead: Lead) -> DynamicsError:
    error = DynamicsError(
        f"The CRM record with the email {lead.email} already belongs to another platform lead.",
        action="Merge the two leads in the platform, or give this lead its own email address.", retryable=False)
    error.code = "duplicate"
    return error


def send_updates(ctx: Context, requests: list, local_ids: list[int], local_type: str) -> list[int]:
    """Send updates, record their outcome, and mark the links synced; the ids whose CRM record no longer exists."""
    if not requests:
        return []
    gone: list[int] = []

    def deleted(local_id: int, item) -> bool:
        if isinstance(item.error, NotFoundError):
            gone.append(local_id)
            return True
        return False

    ctx.write_then_link(requests, local_ids, local_type=local_type, operation="update", on_missing=deleted)
    ctx.execute(update(CrmLink).where(
        CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == local_type,
        CrmLink.local_id.in_(local_ids)).values(last_synced_at=utcnow()))
    ctx.commit()
    return gone


def forget_deleted(ctx: Context, lead_ids: list[int]) -> None:
    """Leads whose CRM record was deleted: their links go (events and custom fields too), so they are made again."""
    if not ctx.writes or not lead_ids:
        return
    events = select(MarketingEvent.id).where(MarketingEvent.lead_id.in_(lead_ids))
    ctx.execute(delete(CrmLink).where(CrmLink.integration_id == ctx.integration.id, or_(
        and_(CrmLink.local_type.in_(["lead", "custom-note"]), CrmLink.local_id.in_(lead_ids)),
        and_(CrmLink.local_type == "event", CrmLink.local_id.in_(events)))))
    ctx.note(f"{len(lead_ids)} lead(s) had been deleted in the CRM: created again, with their events.")
    ctx.commit()


def push_query(ctx: Context, query, *, allow_updates: bool, custom_notes: bool = False) -> None:
    """Push every lead of a query, a chunk at a time, with progress."""
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    done = 0
    for chunk in ctx.lead_chunks(query):
        linked = push_leads(ctx, chunk, allow_updates=allow_updates)
        if custom_notes:
            push_custom_notes(ctx, linked)
        done += len(chunk)
        ctx.rec.progress(done, total)


def push_custom_notes(ctx: Context, lead_ids: Sequence[int]) -> None:
    """G3 *send custom fields into the Notes*: a distributed lead's custom fields as one note on its record.

    A note already in the CRM (its answer was lost) is found by its reference and linked, not written twice.
    """
    if not ctx.integration.ld_custom_fields_in_notes or not lead_ids:
        return
    rows = db.session.execute(select(Lead.id, Lead.custom_fields_json).where(
        Lead.id.in_(list(lead_ids)), Lead.origin == LeadOrigin.distributed,
        Lead.custom_fields_json.notin_(["", "{}"]))).all()
    already = ctx.links("custom-note", [r.id for r in rows])
    targets = ctx.links("lead", [r.id for r in rows if r.id not in already])
    todo = []
    for r in rows:
        if r.id in targets and r.id not in already:
            fields = ctx.build(lambda r=r: dict(json.loads(r.custom_fields_json)), operation="create",
                               entity="annotation", local_type="lead", local_id=r.id)
            if fields is not None:
                todo.append((r.id, fields))
    if not todo:
        return
    if ctx.writes:
        found = find_custom_notes(ctx, {lead_id: targets[lead_id].crm_id for lead_id, _ in todo})
        for lead_id, note_id in found.items():
            ctx.link("custom-note", lead_id, "annotation", note_id)
        todo = [(lead_id, fields) for lead_id, fields in todo if lead_id not in found]
    requests = [mapping.custom_fields_note(lead_id, fields, targets[lead_id].entity, targets[lead_id].crm_id,
                                           ctx.platform) for lead_id, fields in todo]
    ctx.write_then_link(requests, [lead_id for lead_id, _ in todo], local_type="custom-note", operation="create",
                        link_as="annotation", failure_type="lead")
    ctx.commit()


def find_custom_notes(ctx: Context, crm_ids: dict[int, str]) -> dict[int, str]:
    """Custom-fields notes already in the CRM on these leads' records, by lead id (found by their reference)."""
    wanted = {crm_id.lower(): lead_id for lead_id, crm_id in crm_ids.items()}
    found: dict[int, str] = {}
    for note in ctx.gateway.fetch_in("annotation", ["annotationid", "subject", "objectid"], "objectid",
                                     sorted(wanted), extra=[("subject", "like", like_contains("[ref:C"))]):
        lead_id = mapping.custom_note_lead(note.attributes.get("subject") or "")
        ref = note.attributes.get("objectid")
        owner = wanted.get(ref.id.lower()) if ref is not None else None
        if lead_id is not None and lead_id == owner:
            found[lead_id] = note.id
    return found
