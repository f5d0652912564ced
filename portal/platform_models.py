"""What the platform holds for each organization, the link to CRM records, and the sync ledger."""

from __future__ import annotations

import enum
import json
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db
from .models import UTCDateTime, utcnow


def normalize_email(email: str | None) -> str:
    """Emails are matched without regard to case or surrounding blanks (S3)."""
    return (email or "").strip().lower()


class LeadOrigin(enum.StrEnum):
    """Where a lead came from."""

    marketing = "marketing"  # the platform's marketing activity (S5)
    distributed = "distributed"  # a supplier distributed it to the partner (S1)
    crm = "crm"  # pulled from the partner's CRM (S7)


class Acceptance(enum.StrEnum):
    """A distributed lead's acceptance, the same in email, portal and CRM (S12)."""

    pending = "pending"
    accepted = "accepted"
    rejected = "rejected"


STANDARD_FIELDS = (
    "first_name", "last_name", "company", "job_title", "phone", "mobile_phone", "website", "address_line1",
    "address_line2", "city", "state", "postal_code", "country", "description",
)


class Lead(db.Model):
    """A person the platform knows for one partner organization."""

    __tablename__ = "leads"
    __table_args__ = (
        UniqueConstraint("organization_id", "email_normalized", name="uq_leads_org_email"),
        Index("ix_leads_org_origin_score", "organization_id", "origin", "score"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    email_normalized: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    company: Mapped[str] = mapped_column(String(200), default="")
    job_title: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(60), default="")
    mobile_phone: Mapped[str] = mapped_column(String(60), default="")
    website: Mapped[str] = mapped_column(String(300), default="")
    address_line1: Mapped[str] = mapped_column(String(250), default="")
    address_line2: Mapped[str] = mapped_column(String(250), default="")
    city: Mapped[str] = mapped_column(String(100), default="")
    state: Mapped[str] = mapped_column(String(100), default="")
    postal_code: Mapped[str] = mapped_column(String(40), default="")
    country: Mapped[str] = mapped_column(String(100), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    custom_fields_json: Mapped[str] = mapped_column(Text, default="{}")
    score: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[LeadOrigin] = mapped_column(Enum(LeadOrigin, name="lead_origin", native_enum=False, length=20))
    supplier_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="SET NULL"), index=True)
    distributed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acceptance: Mapped[Acceptance] = mapped_column(
        Enum(Acceptance, name="lead_acceptance", native_enum=False, length=20), default=Acceptance.pending
    )
    acceptance_via: Mapped[str] = mapped_column(String(20), default="")
    acceptance_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    accept_token: Mapped[str | None] = mapped_column(String(64), unique=True)
    crm_status: Mapped[str] = mapped_column(String(100), default="")
    crm_state_code: Mapped[int | None] = mapped_column(Integer)
    crm_status_code: Mapped[int | None] = mapped_column(Integer)
    fields_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @property
    def custom_fields(self) -> dict:
        """Custom fields beyond the standard contact fields."""
        return json.loads(self.custom_fields_json or "{}")

    @property
    def full_name(self) -> str:
        """First and last name."""
        return " ".join(p for p in (self.first_name, self.last_name) if p) or self.email


class MarketingEvent(db.Model):
    """A marketing event on a lead: one of the eleven types (G4)."""

    __tablename__ = "marketing_events"
    __table_args__ = (Index("ix_marketing_events_lead", "lead_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    details: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Campaign(db.Model):
    """A campaign the platform runs for an organization (S11)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    type_code: Mapped[int] = mapped_column(Integer, default=2)  # Direct Marketing
    status: Mapped[str] = mapped_column(String(40), default="proposed")
    starts_on: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ends_on: Mapped[datetime | None] = mapped_column(UTCDateTime())
    description: Mapped[str] = mapped_column(Text, default="")
    objective: Mapped[str] = mapped_column(Text, default="")
    budget: Mapped[float | None] = mapped_column(Numeric(14, 2))
    expected_revenue: Mapped[float | None] = mapped_column(Numeric(14, 2))
    expected_response: Mapped[int | None] = mapped_column(Integer)
    promotion_code: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ContactList(db.Model):
    """A contact list; from the CRM, a marketing list of leads or contacts (S8)."""

    __tablename__ = "contact_lists"
    __table_args__ = (UniqueConstraint("organization_id", "crm_list_id", name="uq_contact_lists_org_crm"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    crm_list_id: Mapped[str | None] = mapped_column(String(36))
    dynamic: Mapped[bool] = mapped_column(Boolean, default=False)
    member_type: Mapped[str] = mapped_column(String(20), default="lead")
    keep_in_sync: Mapped[bool] = mapped_column(Boolean, default=True)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_without_email: Mapped[int] = mapped_column(Integer, default=0)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The CRM list's own name (the contact list may be named otherwise) and when it was found deleted there.
    crm_list_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    crm_missing_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=utcnow)


class ContactListMember(db.Model):
    """A lead in a contact list."""

    __tablename__ = "contact_list_members"

    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True)


class Opportunity(db.Model):
    """An opportunity pulled from the CRM (S10), tied to the lead it came from."""

    __tablename__ = "opportunities"
    __table_args__ = (UniqueConstraint("organization_id", "crm_id", name="uq_opportunities_org_crm"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id", ondelete="SET NULL"), index=True)
    crm_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(300), default="")
    rule: Mapped[str] = mapped_column(String(30), default="")  # originating-lead or contact-email
    state: Mapped[str] = mapped_column(String(20), default="Open")
    estimated_value: Mapped[float | None] = mapped_column(Numeric(14, 2))
    actual_value: Mapped[float | None] = mapped_column(Numeric(14, 2))
    estimated_close: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class CrmActivity(db.Model):
    """Follow-up done in the CRM on a lead, pulled back (S6)."""

    __tablename__ = "crm_activities"
    __table_args__ = (UniqueConstraint("organization_id", "crm_id", name="uq_crm_activities_org_crm"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    crm_id: Mapped[str] = mapped_column(String(36))
    activity_type: Mapped[str] = mapped_column(String(40), default="")
    subject: Mapped[str] = mapped_column(String(400), default="")
    status: Mapped[str] = mapped_column(String(60), default="")
    priority: Mapped[str] = mapped_column(String(20), default="")
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class CrmLink(db.Model):
    """The link between a local record and its CRM record: nothing is created twice."""

    __tablename__ = "crm_links"
    __table_args__ = (
        UniqueConstraint("integration_id", "local_type", "local_id", name="uq_crm_links_local"),
        Index("ix_crm_links_crm", "integration_id", "entity", "crm_id"),
        # The CRM id is the identity: one local record per CRM record (in-flight notes wait with an empty id).
        Index("uq_crm_links_crm_id", "integration_id", "entity", "crm_id", unique=True,
              sqlite_where=text("crm_id <> ''"), postgresql_where=text("crm_id <> ''")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("crm_integrations.id", ondelete="CASCADE"))
    local_type: Mapped[str] = mapped_column(String(20))  # lead, event, campaign, custom-note
    local_id: Mapped[int] = mapped_column(Integer)
    entity: Mapped[str] = mapped_column(String(40))  # lead, contact, annotation, task, campaign
    crm_id: Mapped[str] = mapped_column(String(36))
    last_synced_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RunStatus(enum.StrEnum):
    """Where a sync run is."""

    queued = "queued"
    running = "running"
    finished = "finished"
    partial = "partial"  # finished, with records that failed
    failed = "failed"


class SyncWatermark(db.Model):
    """How far a pull has read an integration's CRM: the newest ``modifiedon`` read, its last read and full read."""

    __tablename__ = "sync_watermarks"
    __table_args__ = (UniqueConstraint("integration_id", "name", name="uq_sync_watermarks_integration_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("crm_integrations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(60))  # the step and entity: "pull_records:lead"
    modified_on: Mapped[datetime | None] = mapped_column(UTCDateTime())
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    link_id: Mapped[int | None] = mapped_column(Integer)  # the newest CRM link when the last read began
    link_window: Mapped[int | None] = mapped_column(Integer)  # links numbered just before it, counted then
    full_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SyncRun(db.Model):
    """One run of the sync (push, nightly, on demand, retry) with its steps and counts: the ledger."""

    __tablename__ = "sync_runs"
    # By integration and id: Sync history reads an integration's newest runs a page at a time.
    __table_args__ = (Index("ix_sync_runs_integration_started", "integration_id", "created_at"),
                      Index("ix_sync_runs_integration_newest", "integration_id", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("crm_integrations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # push, nightly, manual, retry
    trigger: Mapped[str] = mapped_column(String(100), default="")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    full: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # read everything again
    status: Mapped[RunStatus] = mapped_column(
        Enum(RunStatus, name="run_status", native_enum=False, length=20), default=RunStatus.queued
    )
    job_id: Mapped[str | None] = mapped_column(String(64))
    current_step: Mapped[str] = mapped_column(String(40), default="")
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    steps_json: Mapped[str] = mapped_column(Text, default="[]")
    created_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    failures: Mapped[list[SyncFailure]] = relationship(back_populates="run", lazy="raise")

    @property
    def steps(self) -> list[dict]:
        """Each step with its counts."""
        return json.loads(self.steps_json or "[]")

    @property
    def done(self) -> bool:
        """True once the run ended."""
        return self.status in (RunStatus.finished, RunStatus.partial, RunStatus.failed)

    @property
    def percent(self) -> int:
        """Progress in percent, for the progress bar."""
        if self.done:
            return 100
        if not self.progress_total:
            return 0
        return min(99, int(100 * self.progress_done / self.progress_total))


class SyncFailure(db.Model):
    """A record that failed in a run: what, where, a message a person can act on, and the raw fault."""

    __tablename__ = "sync_failures"
    __table_args__ = (
        Index("ix_sync_failures_run", "run_id"),
        Index("ix_sync_failures_pending", "integration_id", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"))
    integration_id: Mapped[int] = mapped_column(ForeignKey("crm_integrations.id", ondelete="CASCADE"))
    step: Mapped[str] = mapped_column(String(40))
    operation: Mapped[str] = mapped_column(String(20))  # create, update, set-state, link, read
    entity: Mapped[str] = mapped_column(String(40))
    local_type: Mapped[str] = mapped_column(String(20), default="")
    local_id: Mapped[int | None] = mapped_column(Integer)
    crm_id: Mapped[str] = mapped_column(String(36), default="")
    code: Mapped[str] = mapped_column(String(40), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    action: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[str] = mapped_column(Text, default="")
    retryable: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending, resolved, given-up
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    run: Mapped[SyncRun] = relationship(back_populates="failures")


class ApiToken(db.Model):
    """A per-organization token for the JSON API; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(12))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OutboxEmail(db.Model):
    """Every email the portal sends (or would send, in the embedded setup without SMTP)."""

    __tablename__ = "outbox_emails"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"),
                                                        index=True)
    to: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    sent: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
