"""Pushing platform leads to the CRM: create or match by email, update when allowed, custom fields as a note."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, select, update

from ..connectors.dynamics.soap import CreateRequest, UpdateRequest
from ..extensions import db
from ..models import utcnow
from ..platform_models import CrmLink, Lead, LeadOrigin
from . import claims, mapping
from .context import Context


def lead_attributes(ctx: Context, lead: Lead, entity: str, *, creating: bool) -> dict:
    """A lead's CRM attributes for this integration."""
    return mapping.lead_attributes(lead, entity, creating=creating, platform=ctx.platform,
                                   lead_source_value=ctx.integration.lead_source_value)


def push_leads(ctx: Context, leads: list[Lead], *, allow_updates: bool) -> list[int]:
    """Create leads in the CRM or link them to the record with their email (S3); ids now linked."""
    if not leads:
        return []
    existing = ctx.links("lead", [ld.id for ld in leads])
    todo = [ld for ld in leads if ld.id not in existing]
    held = []
    if todo and ctx.writes:
        # One writer at a time per lead: a push, the nightly catch-up and a retry may all hold it now.
        # A push does not wait for a lead another run is sending (that run links it and sends its events);
        # the other runs wait a little for a push to finish with it.
        held = claims.claim(ctx.integration.id, "lead", [ld.id for ld in todo], ctx.owner,
                            wait=0 if ctx.run.kind == "push" else None)
        existing.update(ctx.links("lead", held))  # linked by another writer while we waited: already done
        todo = [ld for ld in todo if ld.id in set(held) and ld.id not in existing]
    try:
        return _push_claimed(ctx, leads, existing, todo, allow_updates=allow_updates)
    finally:
        claims.release(ctx.integration.id, "lead", held, ctx.owner)


def _push_claimed(ctx: Context, leads: list[Lead], existing: dict, todo: list[Lead], *,
                  allow_updates: bool) -> list[int]:
    """``push_leads`` once the leads to create are this writer's alone."""
    c = ctx.counts
    c.skipped += len(leads) - len(todo)
    if allow_updates:
        # Standard fields change in the CRM only when allowed, and only if they changed since the last sync.
        stale = [ld for ld in leads if ld.id in existing and ld.fields_changed_at
                 and ld.fields_changed_at > existing[ld.id].last_synced_at]
        send_updates(ctx, [UpdateRequest(existing[ld.id].entity, existing[ld.id].crm_id,
                                         lead_attributes(ctx, ld, existing[ld.id].entity, creating=False))
                           for ld in stale], [ld.id for ld in stale], "lead")
    if not todo:
        return [ld.id for ld in leads]
    found = ctx.gateway.find_by_email(ctx.entity, [ld.email_normalized for ld in todo])
    creates, create_ids, linked = [], [], [ld.id for ld in leads if ld.id in existing]
    update_reqs, update_ids = [], []
    for ld in todo:
        crm_id = found.get(ld.email_normalized)
        if crm_id:
            c.skipped += 1  # matched an existing CRM record by email: linked, fields untouched (S3)
            ctx.link("lead", ld.id, ctx.entity, crm_id)
            linked.append(ld.id)
            if allow_updates:
                update_reqs.append(UpdateRequest(ctx.entity, crm_id,
                                                 lead_attributes(ctx, ld, ctx.entity, creating=False)))
                update_ids.append(ld.id)
        else:
            creates.append(CreateRequest(ctx.entity, lead_attributes(ctx, ld, ctx.entity, creating=True)))
            create_ids.append(ld.id)
            if len(c.samples) < 5:
                c.samples.append(f"create {ctx.entity} {ld.email}")
    ctx.commit()
    send_updates(ctx, update_reqs, update_ids, "lead")
    ok_ids = ctx.write_then_link(creates, create_ids, local_type="lead", operation="create", link_as=ctx.entity)
    ctx.rec.resolve_failures("lead", ok_ids + linked)
    ctx.commit()
    return linked + ok_ids


def send_updates(ctx: Context, requests: list, local_ids: list[int], local_type: str) -> None:
    """Send updates, record their outcome, and mark the links synced."""
    if not requests:
        return
    ctx.write_then_link(requests, local_ids, local_type=local_type, operation="update")
    ctx.execute(update(CrmLink).where(
        CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == local_type,
        CrmLink.local_id.in_(local_ids)).values(last_synced_at=utcnow()))
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
    """G3 *send custom fields into the Notes*: a distributed lead's custom fields as one note on its record."""
    if not ctx.integration.ld_custom_fields_in_notes or not lead_ids:
        return
    rows = db.session.execute(select(Lead.id, Lead.custom_fields_json).where(
        Lead.id.in_(list(lead_ids)), Lead.origin == LeadOrigin.distributed,
        Lead.custom_fields_json.notin_(["", "{}"]))).all()
    already = ctx.links("custom-note", [r.id for r in rows])
    targets = ctx.links("lead", [r.id for r in rows if r.id not in already])
    todo = [(r.id, json.loads(r.custom_fields_json)) for r in rows if r.id in targets and r.id not in already]
    if not todo:
        return
    requests = [mapping.custom_fields_note(lead_id, fields, targets[lead_id].entity, targets[lead_id].crm_id,
                                           ctx.platform) for lead_id, fields in todo]
    ctx.write_then_link(requests, [lead_id for lead_id, _ in todo], local_type="custom-note", operation="create",
                        link_as="annotation", failure_type="lead")
    ctx.commit()
