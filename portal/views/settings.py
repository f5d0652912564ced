"""Settings > CRM Settings: the listing, the On/Off switch and the worker health check."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from itertools import accumulate
from typing import NamedTuple

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import Integer, Select, bindparam, case, cast, func, null, or_, select, union_all

from .. import catalog, jobs_state, lifecycle
from ..access import admin_required, own_integration
from ..extensions import db
from ..forms import CsrfOnlyForm, ToggleForm
from ..models import (
    BackgroundJob,
    CrmIntegration,
    IntegrationState,
    JobStatus,
    Notice,
    Organization,
    integration_for,
    page_key,
    partner_suppliers,
    utc_wall_time,
    utcnow,
    values_text,
)
from ..page_cache import app_cache, drawn_pieces, kept_lines, with_token
from ..queues import QUEUE_DEFAULT
from . import page_arg
from .htmx import fragment, is_htmx, poll, require_csrf

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.route("/")
@admin_required
def home():
    """Settings opens on CRM Settings."""
    return redirect(url_for("settings.crm"))


class ListedIntegration(NamedTuple):
    """An integration as the listing shows it; ``label``, ``state`` and ``error_from_sync`` are CrmIntegration's own."""

    id: int
    organization_id: int
    kind: str
    connection_kind: str
    enabled: bool
    last_test_ok: bool | None
    last_test_at: datetime | None
    error_code: str
    error_message: str
    error_action: str
    error_at: datetime | None

    is_online = CrmIntegration.is_online
    label = CrmIntegration.label
    state = CrmIntegration.state
    error_from_sync = CrmIntegration.error_from_sync


class ListedHealth(NamedTuple):
    """The last worker health check as the listing shows it; ``done`` is BackgroundJob's own."""

    id: str
    status: JobStatus
    message: str
    created_at: datetime | None
    finished_at: datetime | None

    done = BackgroundJob.done


class ListedNotice(NamedTuple):
    """An open notice as the listing shows it."""

    id: int
    message: str


# Built once (see portal.access), with the organization as a parameter: the listing in one statement. The
# organization's row anchors it, so the last health job and the open notices come even before any integration
# exists; a row per integration and open notice (one kind, at most 20 notices). Plain rows of the columns the
# listing shows (ORM objects cost more than the rest of the page), which are also the kept page's key.
_LISTED = ((ListedIntegration, CrmIntegration), (ListedHealth, BackgroundJob), (ListedNotice, Notice))
_HEALTH = BackgroundJob.__table__.alias("last_health")
_OPEN = Notice.__table__.alias("open_notice")
_LISTING = (
    select(*(getattr(entity, name) for shape, entity in _LISTED for name in shape._fields))
    .select_from(Organization)
    # The kinds as "or": an IN list would be written into the SQL on every request (SQLAlchemy's expanding values).
    .outerjoin(CrmIntegration, (CrmIntegration.organization_id == Organization.id)
               & or_(*(CrmIntegration.kind == kind for kind in catalog.CRM_KINDS)))
    .outerjoin(BackgroundJob, BackgroundJob.id == (
        select(_HEALTH.c.id)
        .where(_HEALTH.c.kind == "health", _HEALTH.c.organization_id == bindparam("organization_id"))
        .order_by(_HEALTH.c.created_at.desc()).limit(1).scalar_subquery()))
    .outerjoin(Notice, Notice.id.in_(
        select(_OPEN.c.id)
        .where(_OPEN.c.organization_id == bindparam("organization_id"), _OPEN.c.dismissed_at.is_(None))
        .order_by(_OPEN.c.created_at.desc(), _OPEN.c.id.desc()).limit(20)))
    .where(Organization.id == bindparam("organization_id"))
    .order_by(Notice.created_at.desc(), Notice.id.desc())
)
_CUTS = list(accumulate([0, *(len(shape._fields) for shape, _ in _LISTED)]))


def _listed(row, at: int):
    """The AT-th part of a listing row (_LISTED: an integration, the health check, a notice) as its named tuple, or
    None where the outer join found none."""
    values = row[_CUTS[at]:_CUTS[at + 1]]
    return None if values[0] is None else _LISTED[at][0]._make(values)


def _listing() -> tuple[list[ListedIntegration], ListedHealth | None, list[ListedNotice]]:
    """The organization's integration of each kind, its last health job and its open notices: one statement.

    The first visit makes the missing integrations (``integration_for``) and commits them; later visits write nothing.
    """
    result = db.session.connection().execute(_LISTING, {"organization_id": current_user.organization_id}).all()
    found = {row.kind: row for row in (_listed(r, 0) for r in result) if row is not None}
    notices = {n.id: n for n in (_listed(r, 2) for r in result) if n is not None}  # in order, once each
    health = _listed(result[0], 1) if result else None
    for kind in catalog.CRM_KINDS:
        if kind not in found:
            integration = integration_for(current_user.organization, kind)
            found[kind] = ListedIntegration._make(getattr(integration, name) for name in ListedIntegration._fields)
    if db.session.info.pop("uncommitted_integration", False):
        db.session.commit()
    return [found[kind] for kind in catalog.CRM_KINDS], health, list(notices.values())


@bp.route("/crm")
@admin_required
def crm():
    """The listing of CRMs with their state, Edit Settings, On/Off and banners (L1–L3).

    Its body (settings/_crm_body.html) is kept per process, keyed by every value it shows, with its CSRF tokens put
    in per request (page_cache): nothing of a user or a session is kept. Its partials also draw ``refusal`` and
    ``stuck`` for the switch's and the health check's own answers: those are never passed here, so never kept.
    """
    rows, health, notices = _listing()
    is_supplier = current_user.organization.is_supplier
    key = (request.script_root, current_app.config["PLATFORM_NAME"], is_supplier, tuple(rows), health, tuple(notices))
    cache = app_cache("settings.crm")
    pieces = cache.get(key)
    if pieces is None:
        pieces = drawn_pieces("settings/_crm_body.html", rows=rows, health=health, notices=notices,
                              is_supplier=is_supplier)
        cache.put(key, pieces)
    return render_template("settings/crm.html", body=with_token(pieces))


@bp.route("/notices/<int:notice_id>/dismiss", methods=["POST"])
@admin_required
def dismiss_notice(notice_id: int):
    """Dismiss an in-portal notice of the signed-in user's organization."""
    notice = db.session.get(Notice, notice_id)
    if notice is None or notice.organization_id != current_user.organization_id:
        abort(404)
    require_csrf()
    notice.dismissed_at = utcnow()
    db.session.commit()
    if is_htmx():
        return "", 200
    return redirect(url_for("settings.crm"))


PARTNERS_PER_PAGE = 100


@functools.cache
def _partner_query(wanted: str) -> Select:
    """A page of a supplier's partners in one state ('' for all), then a row per state with its count: one statement.

    A partner's row has its line's values as one text (``line``: see _partner_line and models.values_text), its
    place on the page (``pos``) and ``partners`` NULL; the first one also has the page's key (``page_key``:
    models.page_key). Given the key the caller last drew (``known``), the lines come only when it changed: else
    one row holds the key alone. A state's row has the state and its number of partners in ``partners``, so an
    empty page still counts every state. Built once per state (see portal.access); the supplier, the page's size
    and its offset are parameters.
    """
    partner = Organization.__table__.alias("partner")
    state = case((CrmIntegration.error_code != "", "error"), (CrmIntegration.enabled.is_(True), "on"), else_="off")
    linked = partner_suppliers.c.supplier_id == bindparam("supplier_id")
    # The counts need no partner's name: each link's integration (a link always names an organization).
    every = (select(state.label("state")).select_from(partner_suppliers)
             .outerjoin(CrmIntegration, CrmIntegration.organization_id == partner_suppliers.c.partner_id)
             .where(linked).subquery())
    base = (select(state.label("state"))
            .select_from(partner_suppliers)
            .join(partner, partner.c.id == partner_suppliers.c.partner_id)
            .outerjoin(CrmIntegration, CrmIntegration.organization_id == partner.c.id)
            .where(linked))
    # The page's partners are chosen first, and only theirs are written as text. The dates are only written, as UTC
    # wall times: read so (naive, whatever the database session's time zone).
    chosen = ((base.where(state == wanted) if wanted else base)
              .with_only_columns(partner.c.name, state.label("state"), CrmIntegration.last_test_ok,
                                 utc_wall_time(CrmIntegration.last_test_at).label("last_test_at"),
                                 utc_wall_time(CrmIntegration.error_at).label("error_at"))
              .order_by(partner.c.name).limit(bindparam("limit", type_=Integer))
              .offset(bindparam("offset", type_=Integer)).subquery("chosen")).c
    page = select(values_text(chosen.name, chosen.state, chosen.last_test_ok, chosen.last_test_at,
                              chosen.error_at).label("line"),
                  func.row_number().over(order_by=chosen.name).label("pos")).cte("page")
    key = page_key(page, "pos")
    both = union_all(
        select(key.key_once.label("page_key"), page.c.line, page.c.pos, null().label("state"),
               cast(null(), Integer).label("partners")).select_from(key.keyed.outerjoin(page, key.unread)),
        select(null(), null(), null(), every.c.state, func.count()).group_by(every.c.state),
    ).subquery()
    return select(*both.c).order_by(both.c.partners.is_not(None), both.c.pos)


# A state's badge, as the line writes it (the state's fixed words).
_BADGES = {s.name: f'<span class="badge badge-{s.name}" data-state="{s.value}">{s.value}</span>'
           for s in IntegrationState}


def _wall_time(text: str | None) -> datetime | None:
    """A UTC wall time as the database wrote it in a line's text."""
    return datetime.fromisoformat(text) if text is not None else None


def _partner_line(line: str) -> tuple[str, bool]:
    """A partner's line of the table as its body writes it, from its text (see _partner_query): name, state,
    last_test_ok, last_test_at and error_at (UTC wall times); always to be kept (nothing in it moves by itself)."""
    name, state, last_test_ok, last_test_at, error_at = json.loads(line)
    last_test_at, error_at = _wall_time(last_test_at), _wall_time(error_at)
    name = escape(name)
    tested = (f"{'Passed' if last_test_ok else 'Failed'} · {last_test_at:%Y-%m-%d %H:%M UTC}"
              if last_test_at else '<span class="muted">Not tested</span>')
    problem = f"{error_at:%Y-%m-%d %H:%M UTC}" if error_at else ""
    # With the whitespace of the template's loop that wrote the lines before, so the page is the same.
    return (f'\n    <tr data-partner="{name}">\n      <th scope="row">{name}</th>\n      <td>{_BADGES[state]}</td>\n'
            f"      <td>{tested}</td>\n      <td>{problem}</td>\n    </tr>\n  "), True


def _partner_lines(lines: Sequence[str]) -> Markup:
    """The table's body: each partner's line, from its text (see _partner_line).

    A hundred lines a page: drawing each cost more than the rest of the page, so a line is kept per process
    (page_cache), keyed by its text (every value it shows); nothing of a session or a user is in a line.
    """
    drawn = kept_lines(app_cache("partner-lines", scale=16), lines, _partner_line)
    return Markup("".join(drawn))  # noqa: S704 - the names went through escape(); the rest are fixed words and dates


_CURRENT = ' aria-current="page"'


def _partner_counts(summary: dict[IntegrationState, int], state: str) -> Markup:
    """The counts line: All and each state, each a link to its partners, the one shown marked as the current page."""
    base = escape(url_for("settings.partners"))  # each state's link is it with ?state=<its name>
    links = "".join([f'\n    · <a href="{base}?state={s.name}" class="badge badge-{s.name}"'
                     f'{_CURRENT if state == s.name else ""}>{s.value}: {n}</a>\n  ' for s, n in summary.items()])
    # The address went through escape(); the rest are the states' fixed words and numbers.
    return Markup(f'<p data-summary>\n  <a href="{base}"{"" if state else _CURRENT}>'  # noqa: S704
                  f"All: {sum(summary.values())}</a>\n  {links}\n</p>")


@bp.route("/partners")
@admin_required
def partners():
    """For a supplier: each partner's integration state (On, Off or Error) — never their settings (P3).

    A page of 100 partners at a time, one state when asked; the counts for every state come with the page's rows.
    The page's body is kept per process with the page's key (every value its lines show, written by the
    database) and the counts it shows: while the key is unchanged, the database sends no line. Kept per supplier,
    state, page and address.
    """
    if not current_user.organization.is_supplier:
        abort(404)
    wanted = request.args.get("state", "")
    if wanted not in ("on", "off", "error"):
        wanted = ""
    page = page_arg()
    slot = (current_user.organization_id, wanted, page, request.script_root)
    cache = app_cache("partner-pages")
    kept = cache.get(slot)  # (the page's key, its lines, whether a next page exists, the counts shown, the body)
    rows = db.session.connection().execute(_partner_query(wanted), {
        "supplier_id": current_user.organization_id, "limit": PARTNERS_PER_PAGE + 1,
        "offset": (page - 1) * PARTNERS_PER_PAGE, "known": kept[0] if kept else ""}).all()
    counts = {row.state: row.partners for row in rows if row.partners is not None}
    summary = {s: counts.get(s.name, 0) for s in IntegrationState}
    shown = tuple(summary.values())
    key = rows[0].page_key  # the first row is the page's first line, or the key alone
    if kept and key == kept[0]:
        if kept[3] == shown:
            return render_template("settings/partners.html", body=kept[4])
        lines, more = kept[1], kept[2]
    else:
        texts = [row.line for row in rows if row.partners is None and row.line is not None]
        lines, more = _partner_lines(texts[:PARTNERS_PER_PAGE]), len(texts) > PARTNERS_PER_PAGE
    body = Markup(render_template(  # noqa: S704 - a rendered template
        "settings/_partners_body.html", lines=lines, total=sum(shown), counts=_partner_counts(summary, wanted),
        page=page, more=more, state=wanted, per_page=PARTNERS_PER_PAGE))
    if key is not None:
        cache.put(slot, (key, lines, more, shown, body))
    return render_template("settings/partners.html", body=body)


@bp.route("/crm/<int:integration_id>/toggle", methods=["POST"])
@admin_required
def toggle(integration_id: int):
    """Switch an integration On or Off; On is refused until a test passed on the saved settings (L2)."""
    integration = own_integration(integration_id)
    form = ToggleForm()
    status, refusal = 200, None
    if not form.validate_on_submit() or form.state.data not in ("on", "off"):
        abort(400)
    was_on = integration.enabled
    if form.state.data == "on":
        refusal = lifecycle.switch_on(integration, current_user)
        if refusal:
            flash(f"{integration.label} was not switched On. {refusal}", "error")
            status, refusal = 409, f"Not switched On. {refusal}"
        elif not was_on:
            flash(f"{integration.label} is On.", "success")
    else:
        lifecycle.switch_off(integration, current_user)
        if was_on:
            flash(f"{integration.label} is Off.", "success")
    if is_htmx():
        return fragment("settings/_crm_row.html", status=status, row=integration, refusal=refusal)
    return redirect(url_for("settings.crm"))


@bp.route("/health", methods=["POST"])
@admin_required
def health():
    """Enqueue the trivial health job to show that a worker is running."""
    form = CsrfOnlyForm()
    if not form.validate_on_submit():
        abort(400)
    row = jobs_state.enqueue(
        "health", "jobs.health.ping", queue_name=QUEUE_DEFAULT, organization_id=current_user.organization_id,
        timeout=30,
    )
    if is_htmx():
        return fragment("settings/_health.html", health=row)
    flash("Checking the background worker…", "info")
    return redirect(url_for("settings.crm"))


@bp.route("/health/<job_id>")
@admin_required
def health_status(job_id: str):
    """The health job's state; answers 286 to stop htmx polling once it is done or clearly stuck."""
    row = jobs_state.job_of(job_id)
    if row is None or row.organization_id != current_user.organization_id or row.kind != "health":
        abort(404)
    stuck = jobs_state.is_stuck_in_queue(row)
    return poll(render_template("settings/_health.html", health=row, stuck=stuck), row.done or stuck)
