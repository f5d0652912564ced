"""CRM leads and contacts with an email become platform leads (S7), optionally members of a contact list (S8)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, select

from ..extensions import db
from ..platform_models import ContactList, ContactListMember, CrmLink, Lead, LeadOrigin, normalize_email
from . import mapping
from .context import Context
from .recorder import DB_CHUNK


def _among(column, values: list):
    """``column IN values``; on PostgreSQL as one array parameter (one plan, whatever the count)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return column.in_(values)
    from sqlalchemy import any_
    from sqlalchemy.dialects.postgresql import ARRAY

    return column == any_(bindparam("among", values, type_=ARRAY(column.type), unique=True))


def import_people(ctx: Context, entity: str, records: Iterable, into_list: ContactList | None = None) -> int:
    """Import CRM people with an email as platform leads; records without email are skipped and counted."""
    c = ctx.counts
    batch: list = []
    imported = 0

    def flush() -> None:
        nonlocal imported
        emails = {normalize_email(r.attributes["emailaddress1"]): r for r in batch}
        known = {ld.email_normalized: ld for ld in db.session.scalars(select(Lead).where(
            Lead.organization_id == ctx.org_id, _among(Lead.email_normalized, list(emails))))}
        linked = set(db.session.scalars(select(CrmLink.local_id).where(
            CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "lead",
            _among(CrmLink.local_id, [ld.id for ld in known.values()])))) if known else set()
        fresh: list = []  # new leads, inserted together by one flush below
        members: list[int] = []
        for email, rec in emails.items():
            lead = known.get(email)
            values = mapping.person_values(rec.attributes, entity)
            if lead is None and not ctx.writes:
                # A Preview creates nothing, so it remembers whom it would have created: met again (a contact
                # with a lead's email, a list member pulled by the step before), that person is known, as in
                # the real run.
                if email not in ctx.would_create:
                    ctx.would_create.add(email)
                    c.created += 1
                imported += 1
                continue
            if lead is None:
                c.created += 1
                lead = Lead(organization_id=ctx.org_id, email=rec.attributes["emailaddress1"],
                            email_normalized=email, origin=LeadOrigin.crm, **values)
                ctx.add(lead)
                fresh.append((lead, rec))
            else:
                if lead.origin == LeadOrigin.crm:
                    changed = {k: v for k, v in values.items() if v and getattr(lead, k) != v}
                    if changed:
                        c.updated += 1
                        ctx.assign(lead, changed)
                if lead.id not in linked:
                    ctx.link("lead", lead.id, entity, rec.id)
                members.append(lead.id)
            imported += 1
        if fresh and ctx.writes:
            db.session.flush()
            for lead, rec in fresh:
                ctx.link("lead", lead.id, entity, rec.id)
                members.append(lead.id)
        if into_list is not None and ctx.writes and members:
            present = set(db.session.scalars(select(ContactListMember.lead_id).where(
                ContactListMember.list_id == into_list.id, _among(ContactListMember.lead_id, members))))
            db.session.add_all(ContactListMember(list_id=into_list.id, lead_id=lead_id)
                               for lead_id in members if lead_id not in present)
        ctx.commit()
        batch.clear()

    for rec in records:
        c.read += 1
        if not normalize_email(rec.attributes.get("emailaddress1")):
            c.skipped += 1  # every member needs an email (S7, S8)
            continue
        batch.append(rec)
        if len(batch) >= DB_CHUNK:
            flush()
            ctx.rec.progress(c.read, 0)
    if batch:
        flush()
    return imported
