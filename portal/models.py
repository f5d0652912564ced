"""The portal's data: organizations, users, CRM integrations, background jobs and the audit log."""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import UTC, datetime
from typing import NamedTuple

from flask_login import UserMixin
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    case,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import CTE
from werkzeug.security import check_password_hash, generate_password_hash

from . import catalog
from .extensions import db


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC that always comes back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: D102 - SQLAlchemy hook
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):  # noqa: D102 - SQLAlchemy hook
        # In UTC whatever the database session's time zone: the pages write these as UTC wall times.
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


class utc_moment(FunctionElement):  # noqa: N801 - an SQL function's name
    """A stored moment read as its UTC wall time (PostgreSQL: ``timezone('UTC', …)``; elsewhere as stored), which
    the driver reads much faster than a zoned timestamp and no session time zone moves; zone-aware again."""

    type = UTCDateTime()
    inherit_cache = True


class utc_wall_time(utc_moment):  # noqa: N801 - an SQL function's name
    """As :class:`utc_moment`, left naive: for a page that writes the time with "UTC" after it."""

    type = DateTime()
    inherit_cache = True


@compiles(utc_moment)
def _as_stored(element: utc_moment, compiler, **kw) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(utc_moment, "postgresql")
def _utc_wall_time(element: utc_moment, compiler, **kw) -> str:
    return f"timezone('UTC', {compiler.process(element.clauses, **kw)})"


class values_text(FunctionElement):  # noqa: N801 - an SQL function's name
    """A row's values as one text that no other row's values make: a JSON array (PostgreSQL ``json_build_array``,
    SQLite ``json_array``), each value as the database writes its type, NULL as null. Not for floating-point
    values: SQLite writes 15 digits, so two close floats write the same text (no model has a float column)."""

    type = Text()
    inherit_cache = True


@compiles(values_text)
def _json_array(element: values_text, compiler, **kw) -> str:
    return f"json_array({compiler.process(element.clauses, **kw)})"


@compiles(values_text, "postgresql")
def _json_build_array(element: values_text, compiler, **kw) -> str:
    return f"CAST(json_build_array({compiler.process(element.clauses, **kw)}) AS TEXT)"


class PageKey(NamedTuple):
    """A page's key for the statement that reads the page's rows only when the caller does not have them (see
    :func:`page_key`)."""

    keyed: CTE  # one row: the key (``page_key``) and the first row's position (``first``)
    unread: ColumnElement[bool]  # the page's rows join on it: true when the key is not the caller's ``known``
    key_once: ColumnElement[str]  # the key, in the page's first row only (or the row that stands for none)


def page_key(page: CTE, position: str, first=func.min, ready: str | None = None, text: str = "line") -> PageKey:
    """The key of PAGE (a CTE of a page's rows, each row's values in its TEXT column, see :func:`values_text`):
    every row's text as one, or NULL when there are none or (READY named) a row is not ready (that column is not
    1). Written by the database, so an unchanged page need not be read: compared with the ``known`` parameter (the
    key the caller last drew), and given once, in the row whose POSITION is the FIRST (func.min or func.max).

    The rows' order in the key is the database's: an order that changes makes a different key, never the same key
    for different rows.
    """
    # The separator is written in the SQL: given as a value, SQLAlchemy would write it in on every request.
    joined = func.aggregate_strings(page.c[text], literal_column("','"))
    key = joined if ready is None else case((func.min(page.c[ready]) == literal_column("1"), joined), else_=null())
    keyed = select(select(key).scalar_subquery().label("page_key"),
                   select(first(page.c[position])).scalar_subquery().label("first")).cte("keyed")
    keyed = keyed.prefix_with("MATERIALIZED", dialect="postgresql")  # worked out once, however often it is read
    unread = or_(keyed.c.page_key.is_(None), keyed.c.page_key != bindparam("known"))
    key_once = case((or_(page.c[position].is_(None), page.c[position] == keyed.c.first), keyed.c.page_key))
    return PageKey(keyed, unread, key_once)


def render_item(type_: str, obj, autogen_context):
    """Alembic hook: write ``UTCDateTime`` columns as plain ``sa.DateTime`` so migrations import nothing of ours."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


class OrgKind(enum.StrEnum):
    """Suppliers run channel programs; partners resell (P1)."""

    supplier = "supplier"
    partner = "partner"


class Role(enum.StrEnum):
    """Administrators reach Settings; members do not (P2)."""

    admin = "admin"
    member = "member"


partner_suppliers = Table(
    "partner_suppliers",
    db.metadata,
    Column("partner_id", ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    Column("supplier_id", ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True),
    # A supplier's partners (its page and counts, a supplier deleted): the key leads with the partner.
    Index("ix_partner_suppliers_supplier", "supplier_id", "partner_id"),
)


class Organization(db.Model):
    """A supplier or a partner: the unit of tenancy."""

    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[OrgKind] = mapped_column(Enum(OrgKind, name="org_kind", native_enum=False, length=20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    suppliers: Mapped[list[Organization]] = relationship(
        secondary=partner_suppliers,
        primaryjoin=lambda: Organization.id == partner_suppliers.c.partner_id,
        secondaryjoin=lambda: Organization.id == partner_suppliers.c.supplier_id,
        back_populates="partners",
        order_by=lambda: Organization.name,
    )
    partners: Mapped[list[Organization]] = relationship(
        secondary=partner_suppliers,
        primaryjoin=lambda: Organization.id == partner_suppliers.c.supplier_id,
        secondaryjoin=lambda: Organization.id == partner_suppliers.c.partner_id,
        back_populates="suppliers",
        order_by=lambda: Organization.name,
    )

    @property
    def is_supplier(self) -> bool:
        """True for suppliers."""
        return self.kind == OrgKind.supplier


class User(UserMixin, db.Model):
    """A person who signs in; belongs to one organization."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(Enum(Role, name="user_role", native_enum=False, length=20))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # Part of every session's identity (get_id): bumping it ends all of the user's sessions at once, on every
    # server, with no session store to search. Chosen over server-side sessions in Redis because the session
    # cookie then stays the only session state, and a Redis restart does not sign everyone out.
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    organization: Mapped[Organization] = relationship(lazy="joined")

    def set_password(self, password: str) -> None:
        """Hash the password with scrypt (Werkzeug's default KDF); a changed password ends every session."""
        if self.password_hash:
            self.end_sessions()
        self.password_hash = generate_password_hash(password, method="scrypt")

    def end_sessions(self) -> None:
        """Make every session cookie issued so far worthless (sign-out, password change, disabling)."""
        self.session_version = (self.session_version or 1) + 1

    def disable(self) -> None:
        """Refuse the user's sign-ins from now on and end the sessions they have."""
        self.disabled = True
        self.end_sessions()

    @property
    def is_active(self) -> bool:
        """Flask-Login refuses inactive users; a disabled user is one."""
        return not self.disabled

    def get_id(self) -> str:
        """The session's user id: the row id and the session version, checked on every request."""
        return f"{self.id}:{self.session_version or 1}"

    def check_password(self, password: str) -> bool:
        """True when the password matches the stored hash."""
        return check_password_hash(self.password_hash, password)

    @property
    def is_admin(self) -> bool:
        """True for administrators."""
        return self.role == Role.admin


class LoginThrottle(db.Model):
    """Failed sign-ins for one email from one client address, and how long that pair is locked out.

    Kept per (email, address) and for unknown emails too, so a lockout neither reveals which emails have
    accounts nor lets a stranger lock an owner out from elsewhere.
    """

    __tablename__ = "login_throttles"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    client: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("email", "client", name="uq_login_throttles_email_client"),)


class IntegrationState(enum.StrEnum):
    """What the listing shows for an integration."""

    off = "Off"
    on = "On"
    error = "Error"


class CrmIntegration(db.Model):
    """One organization's connection to one CRM, with every setting of G1–G4 and its health."""

    __tablename__ = "crm_integrations"
    __table_args__ = (UniqueConstraint("organization_id", "kind", name="uq_crm_integrations_org_kind"),)

    # Fields whose change needs a new passing connection test before the integration may stay On.
    CONNECTION_FIELDS = ("username", "org_url", "odata_url", "domain", "organization_name", "password_encrypted",
                         "connection_kind", "environment_url", "tenant_id", "client_id", "client_secret_encrypted",
                         "client_certificate_encrypted")
    # The secrets: stored encrypted, never drawn in a page (a page may say only whether one is saved).
    SECRET_FIELDS = ("password_encrypted", "client_secret_encrypted", "client_certificate_encrypted")

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(40), default=catalog.DYNAMICS)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)

    # G1 General Settings
    supplier_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="SET NULL"))
    record_leads_as: Mapped[str] = mapped_column(String(20), default="lead")

    # G2 CRM Connection Settings
    username: Mapped[str] = mapped_column(String(200), default="")
    password_encrypted: Mapped[str | None] = mapped_column(Text)
    org_url: Mapped[str] = mapped_column(String(500), default="")
    odata_url: Mapped[str] = mapped_column(String(500), default="")
    domain: Mapped[str] = mapped_column(String(200), default="")
    organization_name: Mapped[str] = mapped_column(String(200), default="")
    connection_saved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # On-premises (Windows sign-in, the fields above) or Dynamics 365 online (OAuth client credentials, below).
    # Each kind keeps its own values, so switching back and forth loses nothing.
    connection_kind: Mapped[str] = mapped_column(String(20), default="onprem", server_default="onprem")
    environment_url: Mapped[str] = mapped_column(String(500), default="", server_default="")
    tenant_id: Mapped[str] = mapped_column(String(200), default="", server_default="")
    client_id: Mapped[str] = mapped_column(String(100), default="", server_default="")
    client_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    client_certificate_encrypted: Mapped[str | None] = mapped_column(Text)

    # G3 Usage Profile: Marketing Automation
    marketing_automation: Mapped[bool] = mapped_column(Boolean, default=False)
    ma_pull_contacts: Mapped[bool] = mapped_column(Boolean, default=False)
    ma_sync_leads: Mapped[bool] = mapped_column(Boolean, default=True)
    ma_score_threshold: Mapped[int] = mapped_column(Integer, default=50)
    ma_allow_field_updates: Mapped[bool] = mapped_column(Boolean, default=False)
    ma_pull_opportunities: Mapped[bool] = mapped_column(Boolean, default=True)
    # G3 Usage Profile: Lead Distribution
    lead_distribution: Mapped[bool] = mapped_column(Boolean, default=False)
    ld_sync_supplier_leads: Mapped[bool] = mapped_column(Boolean, default=True)
    ld_allow_field_updates: Mapped[bool] = mapped_column(Boolean, default=False)
    ld_pull_opportunities: Mapped[bool] = mapped_column(Boolean, default=True)
    ld_custom_fields_in_notes: Mapped[bool] = mapped_column(Boolean, default=False)

    # G4 Advanced General Options
    event_types_json: Mapped[str] = mapped_column(Text, default=lambda: json.dumps(catalog.DEFAULT_EVENT_TYPES))
    create_campaigns: Mapped[bool] = mapped_column(Boolean, default=False)
    campaign_data_level: Mapped[str] = mapped_column(String(20), default="basic")
    # A value longer than the CRM accepts is cut to the CRM's limit (with a note in the run's log) instead of
    # failing its record.
    cut_long_values: Mapped[bool] = mapped_column(Boolean, default=False)

    # Health: the last connection test, the banner and the authentication-failure count (L2, L3)
    last_test_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_test_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_test_message: Mapped[str] = mapped_column(Text, default="")
    last_test_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    error_code: Mapped[str] = mapped_column(String(40), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    error_action: Mapped[str] = mapped_column(Text, default="")
    error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    auth_failures: Mapped[int] = mapped_column(Integer, default=0)
    auth_failure_limit: Mapped[int] = mapped_column(Integer, default=3)
    lead_source_value: Mapped[int | None] = mapped_column(Integer)
    # What the CRM told us about itself: the MaxLength of the text attributes the sync writes (read by the
    # connection test, as JSON {entity: {attribute: length}}) and a batch limit lowered by its administrator.
    max_lengths_json: Mapped[str] = mapped_column(Text, default="")
    batch_size_limit: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    organization: Mapped[Organization] = relationship(foreign_keys=[organization_id])
    supplier: Mapped[Organization | None] = relationship(foreign_keys=[supplier_id])

    @property
    def label(self) -> str:
        """The CRM's name as the listing shows it."""
        if self.kind == catalog.DYNAMICS and self.is_online:
            return "Microsoft Dynamics 365 (online)"
        return catalog.CRM_KINDS.get(self.kind, self.kind)

    @property
    def event_types(self) -> list[str]:
        """The selected lead event types (G4)."""
        try:
            return [k for k in json.loads(self.event_types_json or "[]") if k in catalog.EVENT_TYPE_KEYS]
        except ValueError:
            return []

    @event_types.setter
    def event_types(self, keys: list[str]) -> None:
        self.event_types_json = json.dumps([k for k in catalog.EVENT_TYPE_KEYS if k in set(keys)])

    @property
    def max_lengths(self) -> dict[str, dict[str, int]]:
        """MaxLength of the CRM's text attributes the sync writes, by entity and attribute, as last read."""
        try:
            data = json.loads(self.max_lengths_json or "{}")
        except ValueError:
            return {}
        return {str(e): {str(a): int(n) for a, n in attrs.items()} for e, attrs in data.items()
                if isinstance(attrs, dict)} if isinstance(data, dict) else {}

    @max_lengths.setter
    def max_lengths(self, value: dict[str, dict[str, int]]) -> None:
        self.max_lengths_json = json.dumps(value, sort_keys=True) if value else ""

    @property
    def has_password(self) -> bool:
        """True when a CRM password is stored."""
        return bool(self.password_encrypted)

    @property
    def is_online(self) -> bool:
        """True for Dynamics 365 online (OAuth), False for on-premises (Windows sign-in)."""
        return self.connection_kind == "online"

    @property
    def has_client_credential(self) -> bool:
        """True when a client secret or a certificate is stored (online)."""
        return bool(self.client_secret_encrypted or self.client_certificate_encrypted)

    @property
    def connection_complete(self) -> bool:
        """True when every required connection setting of the chosen kind is saved."""
        if self.is_online:
            return bool(self.environment_url and self.tenant_id and self.client_id and self.has_client_credential)
        return bool(self.username and self.has_password and self.org_url)

    def connection_fingerprint(self) -> str:
        """A digest of the saved connection settings, to tell whether a test passed on these settings."""
        parts = [str(getattr(self, f) or "") for f in self.CONNECTION_FIELDS]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    @property
    def test_passed_on_saved_settings(self) -> bool:
        """True when the last connection test passed on the settings as they are saved now (L2)."""
        return bool(self.last_test_ok) and self.last_test_fingerprint == self.connection_fingerprint()

    def switch_on_refusal(self) -> str | None:
        """Why the integration cannot be switched On now, or None when it can (L2, and something to sync)."""
        problem = self.connection_refusal()
        if problem:
            return problem
        missing = self.setup_missing
        if missing:
            # On with no supplier or no profile would sync nothing at all.
            named = [title if anchor == "general" else f"the {title}" for anchor, title, _ in missing]
            return f"Save {' and '.join(named)} first: {'; '.join(why for _, _, why in missing)}."
        return None

    def connection_refusal(self) -> str | None:
        """Why the saved connection cannot be used yet (not saved, not tested, or changed since), or None."""
        if not self.connection_complete:
            needed = ("environment URL, tenant id, application (client) id and a client secret or certificate"
                      if self.is_online else "username, password and Organization Web Service URL")
            return f"Save the CRM Connection Settings first ({needed}), then use Save and Test CRM Connection."
        if self.last_test_ok is None:
            return "Test the connection first: open Edit Settings and use Save and Test CRM Connection."
        if not self.last_test_ok:
            return "The last connection test failed: fix the settings and run Save and Test CRM Connection again."
        if not self.test_passed_on_saved_settings:
            return (
                "The connection settings changed since the last passing test: "
                "run Save and Test CRM Connection again."
            )
        return None

    @property
    def setup_missing(self) -> list[tuple[str, str, str]]:
        """The Edit Settings sections still to save before On makes sense: (anchor, title, why)."""
        missing = []
        if not self.supplier_id:
            missing.append(("general", "General Settings",
                            "choose the supplier whose program this CRM connection serves"))
        if not (self.marketing_automation or self.lead_distribution):
            missing.append(("usage", "Usage Profile",
                            "choose Marketing Automation, Lead Distribution or both, or nothing would be synced"))
        return missing

    @property
    def state(self) -> IntegrationState:
        """Off, On or Error, as the listing shows it."""
        if self.error_code:
            return IntegrationState.error
        return IntegrationState.on if self.enabled else IntegrationState.off

    @property
    def error_from_sync(self) -> bool:
        """True when the banner's error came from a sync: the last connection test had passed."""
        return bool(self.error_code) and bool(self.last_test_ok)

    def set_error(self, code: str, message: str, action: str) -> None:
        """Raise the banner under the listing row (L3)."""
        self.error_code, self.error_message, self.error_action = code, message, action
        self.error_at = utcnow()

    def clear_error(self) -> None:
        """Lower the banner after a success."""
        self.error_code = self.error_message = self.error_action = ""
        self.error_at = None


class JobStatus(enum.StrEnum):
    """Where a background job is."""

    queued = "queued"
    started = "started"
    finished = "finished"
    failed = "failed"


class BackgroundJob(db.Model):
    """A row per RQ job, keyed by its id, so pages ask SQL, not Redis, what is running."""

    __tablename__ = "background_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    integration_id: Mapped[int | None] = mapped_column(
        ForeignKey("crm_integrations.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=20), default=JobStatus.queued
    )
    steps_json: Mapped[str] = mapped_column(Text, default="[]")
    result_json: Mapped[str] = mapped_column(Text, default="{}")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def steps(self) -> list[dict]:
        """Steps reported so far, in order."""
        return json.loads(self.steps_json or "[]")

    @property
    def result(self) -> dict:
        """The job's result once finished."""
        return json.loads(self.result_json or "{}")

    @property
    def done(self) -> bool:
        """True once the job finished or failed."""
        return self.status in (JobStatus.finished, JobStatus.failed)


class AuditLog(db.Model):
    """Who changed which settings and when; never the value of a secret."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    integration_id: Mapped[int | None] = mapped_column(ForeignKey("crm_integrations.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(80))
    fields_json: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)

    user: Mapped[User | None] = relationship()

    @property
    def fields(self) -> list[str]:
        """Names of the fields changed."""
        return json.loads(self.fields_json or "[]")


class Notice(db.Model):
    """An in-portal notice for an organization's administrators (e.g. an integration switched Off)."""

    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    dismissed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


def audit(user: User | None, org_id: int, action: str, fields: list[str], integration_id: int | None = None) -> None:
    """Record a settings change (field names only; never values)."""
    db.session.add(
        AuditLog(
            organization_id=org_id,
            user_id=user.id if user else None,
            integration_id=integration_id,
            action=action,
            fields_json=json.dumps(sorted(fields)),
        )
    )


# The tenancy rule of every statement that reads an integration for a signed-in user: this id, and only if it is this
# organization's (parameters integration_id and organization_id). Another tenant's integration reads as none (P3).
OWN_INTEGRATION = (CrmIntegration.id == bindparam("integration_id"),
                   CrmIntegration.organization_id == bindparam("organization_id"))

_INTEGRATION_FOR = select(CrmIntegration).where(  # built once (see portal.access)
    CrmIntegration.organization_id == bindparam("organization_id"), CrmIntegration.kind == bindparam("kind"))


def integration_for(org: Organization, kind: str = catalog.DYNAMICS) -> CrmIntegration:
    """The organization's integration of this kind, created with defaults on first use."""
    found = db.session.scalar(_INTEGRATION_FOR, {"organization_id": org.id, "kind": kind})
    if found is None:
        found = CrmIntegration(organization_id=org.id, kind=kind)
        db.session.add(found)
        db.session.flush()
        db.session.info["uncommitted_integration"] = True  # the caller decides when to commit
    return found
