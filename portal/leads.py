"""Leads on the platform: distribution by a supplier (S1, S12), acceptance in any place, notification emails."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app, url_for
from sqlalchemy import case, select
from sqlalchemy.orm import aliased

from . import catalog, notify, queues
from .extensions import db
from .models import CrmIntegration, Organization, OrgKind, Role, User, partner_suppliers, utcnow
from .platform_models import (
    STANDARD_FIELDS,
    Acceptance,
    CrmActivity,
    Lead,
    LeadOrigin,
    MarketingEvent,
    Opportunity,
    OutboxEmail,
    normalize_email,
)
from .validation import ROW_ID_MAX, email_problem

log = logging.getLogger(__name__)


class LeadError(ValueError):
    """Input that cannot become a lead, with a message saying what to fix."""


def clean_fields(data: dict) -> dict:
    """The standard contact fields from input, trimmed and length-checked."""
    out = {}
    for name in STANDARD_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str | int | float):
            raise LeadError(f"{name} must be text.")
        value = str(value).strip()
        limit = Lead.__table__.c[name].type.length or 10000
        if len(value) > limit:
            raise LeadError(f"{name} is too long (at most {limit} characters).")
        out[name] = value
    return out


def valid_email(email: str) -> str:
    """The email, or a LeadError saying why it is not one."""
    email = (email if isinstance(email, str) else "").strip()
    problem = email_problem(email)
    if problem:
        raise LeadError(f"A lead needs a valid email address: {problem}")
    return email


def upsert_lead(org: Organization, data: dict, origin: LeadOrigin, *, supplier: Organization | None = None) -> Lead:
    """Create or update a lead of an organization, matched by email (S3)."""
    email = valid_email(data.get("email", ""))
    fields = clean_fields(data)
    score = data.get("score")
    if score is not None:
        try:
            score = int(score)
        except (TypeError, ValueError) as exc:
            raise LeadError("score must be a whole number.") from exc
        if not 0 <= score <= 100:
            raise LeadError("score must be from 0 to 100.")
    custom = data.get("custom_fields") or {}
    if not isinstance(custom, dict):
        raise LeadError("custom_fields must be an object of names and values.")
    lead = db.session.scalar(select(Lead).where(Lead.organization_id == org.id,
                                                Lead.email_normalized == normalize_email(email)))
    if lead is None:
        lead = Lead(organization_id=org.id, email=email, email_normalized=normalize_email(email), origin=origin,
                    score=score or 0, **fields)
        db.session.add(lead)
    else:
        changed = {k: v for k, v in fields.items() if getattr(lead, k) != v}
        for key, value in changed.items():
            setattr(lead, key, value)
        if changed:
            lead.fields_changed_at = utcnow()
        if score is not None:
            lead.score = score
        if origin == LeadOrigin.distributed:
            lead.origin = origin
    if custom:
        import json

        lead.custom_fields_json = json.dumps({**lead.custom_fields, **{str(k): str(v) for k, v in custom.items()}})
    if supplier is not None:
        lead.supplier_id = supplier.id
    db.session.flush()
    return lead


def add_events(lead: Lead, events: list[dict]) -> list[MarketingEvent]:
    """Marketing events of a lead; each one of the eleven types (G4)."""
    made = []
    if events is not None and not isinstance(events, list):
        raise LeadError("events must be a list of objects, each with a type and an occurred_at time.")
    for item in events or []:
        if not isinstance(item, dict):
            raise LeadError("Each event must be an object with a type and an occurred_at time.")
        kind = item.get("type") or item.get("event_type")
        if kind not in catalog.EVENT_TYPE_KEYS:
            raise LeadError(f"Unknown event type {kind!r}: use one of {', '.join(catalog.EVENT_TYPE_KEYS)}.")
        when = item.get("occurred_at")
        try:
            occurred = datetime.fromisoformat(when.replace("Z", "+00:00")) if when else utcnow()
        except (AttributeError, ValueError) as exc:
            raise LeadError("occurred_at must be an ISO 8601 time, e.g. 2026-11-26T10:00:00Z.") from exc
        if occurred.tzinfo is None:
            raise LeadError("occurred_at needs a time zone, e.g. 2026-11-26T10:00:00Z.")
        event = MarketingEvent(organization_id=lead.organization_id, lead_id=lead.id, event_type=kind,
                               occurred_at=occurred, details=str(item.get("details") or "")[:4000])
        db.session.add(event)
        made.append(event)
    return made


def dynamics_of(org_id: int) -> CrmIntegration | None:
    """The organization's Dynamics integration, if it has one."""
    return db.session.scalar(select(CrmIntegration).where(CrmIntegration.organization_id == org_id,
                                                          CrmIntegration.kind == catalog.DYNAMICS))


def distribute_lead(supplier: Organization, partner: Organization, data: dict) -> Lead:
    """A supplier gives a lead to one of its partners: stored, the partner's owners notified, pushed at once."""
    if supplier.kind != OrgKind.supplier:
        raise LeadError("Only suppliers distribute leads.")
    if supplier not in partner.suppliers:
        raise LeadError(f"{partner.name} is not one of your partners.")
    lead = upsert_lead(partner, data, LeadOrigin.distributed, supplier=supplier)
    lead.distributed_at = utcnow()
    lead.acceptance = Acceptance.pending
    lead.acceptance_via = ""
    lead.accept_token = secrets.token_urlsafe(32)
    add_events(lead, data.get("events") or [])
    db.session.commit()
    notify_lead_owners(lead, supplier, partner)
    push_now(lead)
    return lead


def push_name(lead: Lead) -> str:
    """How Sync history names the push of a distributed lead: by the person, as a failed record is named."""
    who = lead.full_name.strip()
    return (f"Push of lead {who} <{lead.email}>" if who else f"Push of lead {lead.email}")[:100]


def push_now(lead: Lead) -> None:
    """Queue the push of a distributed lead when the partner's integration is On with Synchronize Supplier Leads."""
    integration = dynamics_of(lead.organization_id)
    if integration is None or not integration.enabled or not (
            integration.lead_distribution and integration.ld_sync_supplier_leads):
        return
    from redis.exceptions import RedisError

    from .schedule import start_run

    try:
        start_run(integration, "push", lead_ids=[lead.id], trigger=push_name(lead))
    except (RedisError, OSError):
        # The lead and its email are saved; the nightly catch-up pushes it if the queue cannot be reached now.
        log.exception("could not queue the push of lead %s; the nightly run will push it", lead.id)


def set_acceptance(lead: Lead, accepted: bool, via: str) -> bool:
    """Accept or reject a distributed lead (portal, email or CRM); the same state everywhere. True if changed."""
    wanted = Acceptance.accepted if accepted else Acceptance.rejected
    if lead.origin != LeadOrigin.distributed:
        raise LeadError("Only distributed leads are accepted or rejected.")
    if lead.acceptance == wanted:
        return False
    lead.acceptance, lead.acceptance_via, lead.acceptance_at = wanted, via, utcnow()
    db.session.commit()
    integration = dynamics_of(lead.organization_id)
    if via != "crm" and integration is not None and integration.enabled:
        queues.queue(queues.QUEUE_PUSH).enqueue("jobs.sync.acceptance", lead.id, integration.id, job_timeout=300)
    return True


def notify_lead_owners(lead: Lead, supplier: Organization, partner: Organization) -> OutboxEmail | None:
    """Email the partner's default lead owners (its administrators) with accept and reject links (S12)."""
    owners = db.session.scalars(select(User.email).where(User.organization_id == partner.id,
                                                         User.role == Role.admin).order_by(User.email)).all()
    if not owners:
        return None
    platform = current_app.config["PLATFORM_NAME"]
    accept = url_for("leads.respond", token=lead.accept_token, answer="accept", _external=True)
    reject = url_for("leads.respond", token=lead.accept_token, answer="reject", _external=True)
    body = (
        f"{supplier.name} sent you a new lead on {platform}:\n\n"
        f"  {lead.full_name} <{lead.email}>\n  {lead.company} {lead.job_title}\n\n"
        f"Accept it: {accept}\nReject it: {reject}\n\n"
        "You can also accept or reject it in the portal, or by qualifying or disqualifying it in your CRM. "
        "We recommend choosing one of these places to manage leads."
    )
    mail = notify.email(partner.id, list(owners), f"{platform}: new lead from {supplier.name}", body)
    db.session.commit()
    return mail


# --------------------------------------------------------------------------------------------------------------
# Reading and answering: the API, the partner's and the supplier's lead pages share these.


def save_marketing_lead(org: Organization, data: dict) -> tuple[Lead, bool]:
    """Create or update one of the organization's own marketing leads with its events; True when created."""
    if not isinstance(data, dict):
        raise LeadError("A lead must be a JSON object of fields.")
    existed = db.session.scalar(select(Lead.id).where(
        Lead.organization_id == org.id, Lead.email_normalized == normalize_email(valid_email(data.get("email")))))
    lead = upsert_lead(org, data, LeadOrigin.marketing)
    add_events(lead, data.get("events"))
    db.session.commit()
    return lead, existed is None


def partner_by_ref(supplier: Organization, ref: object) -> Organization | None:
    """One of the supplier's partners, named by id or by name; None for anyone else (no hint they exist)."""
    query = (select(Organization).join(partner_suppliers, partner_suppliers.c.partner_id == Organization.id)
             .where(partner_suppliers.c.supplier_id == supplier.id))
    if isinstance(ref, str) and re.fullmatch(r"[0-9]{1,10}", ref.strip()):
        ref = int(ref.strip())
    if isinstance(ref, int) and not isinstance(ref, bool):
        if not 1 <= ref <= ROW_ID_MAX:  # no row has it, and the database would refuse to compare it
            return None
        query = query.where(Organization.id == ref)
    elif isinstance(ref, str) and ref.strip():
        query = query.where(Organization.name == ref.strip())
    else:
        return None
    return db.session.scalar(query)


def partners_of(supplier_id: int) -> list[Organization]:
    """The supplier's partners, by name (one query)."""
    return list(db.session.scalars(
        select(Organization).join(partner_suppliers, partner_suppliers.c.partner_id == Organization.id)
        .where(partner_suppliers.c.supplier_id == supplier_id).order_by(Organization.name)))


@dataclass
class DistributedLead:
    """A lead a supplier distributed, with what the partner's CRM reported back (S13)."""

    lead: Lead
    partner_name: str
    activities: list[CrmActivity] = field(default_factory=list)
    opportunities: list[Opportunity] = field(default_factory=list)


def distributed_by(supplier_id: int, *, limit: int = 100, offset: int = 0,
                   partner_id: int | None = None) -> list[DistributedLead]:
    """The supplier's distributed leads, newest first, with activities and opportunities: three queries in all."""
    partner = aliased(Organization)
    query = (select(Lead, partner.name).join(partner, partner.id == Lead.organization_id)
             .where(Lead.supplier_id == supplier_id, Lead.origin == LeadOrigin.distributed))
    if partner_id is not None:
        query = query.where(Lead.organization_id == partner_id)
    rows = db.session.execute(query.order_by(Lead.distributed_at.desc(), Lead.id.desc())
                              .limit(limit).offset(offset)).all()
    out = {lead.id: DistributedLead(lead, name) for lead, name in rows}
    if out:
        ids = list(out)
        for act in db.session.scalars(select(CrmActivity).where(CrmActivity.lead_id.in_(ids))
                                      .order_by(CrmActivity.due_at.desc(), CrmActivity.id.desc())):
            out[act.lead_id].activities.append(act)
        for opp in db.session.scalars(select(Opportunity).where(Opportunity.lead_id.in_(ids))
                                      .order_by(Opportunity.id.desc())):
            out[opp.lead_id].opportunities.append(opp)
    return list(out.values())


def leads_of(org_id: int, *, limit: int = 100, offset: int = 0) -> list[tuple[Lead, str | None]]:
    """A partner's leads with their supplier's name: distributed ones first, newest first (one query)."""
    supplier = aliased(Organization)
    distributed_first = case((Lead.origin == LeadOrigin.distributed, 0), else_=1)
    return [tuple(row) for row in db.session.execute(
        select(Lead, supplier.name).outerjoin(supplier, supplier.id == Lead.supplier_id)
        .where(Lead.organization_id == org_id)
        .order_by(distributed_first, Lead.distributed_at.desc().nulls_last(), Lead.created_at.desc(), Lead.id.desc())
        .limit(limit).offset(offset))]


def own_lead(org_id: int, lead_id: int) -> Lead | None:
    """The organization's lead, or None — never another organization's (P3)."""
    return db.session.scalar(select(Lead).where(Lead.id == lead_id, Lead.organization_id == org_id))


def lead_by_token(token: str) -> Lead | None:
    """The distributed lead an email's accept/reject link names, or None."""
    if not token or len(token) > 64:
        return None
    return db.session.scalar(select(Lead).where(Lead.accept_token == token,
                                                Lead.origin == LeadOrigin.distributed))
