"""Edit Settings for a CRM integration: four forms (G1–G4), inline checks, Save and Test CRM Connection."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import NamedTuple

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup
from sqlalchemy import bindparam, func, inspect, select
from sqlalchemy.orm import aliased

from .. import jobs_state, lifecycle, page_cache
from ..access import admin_required, own_integration
from ..crypto import encrypt
from ..extensions import db
from ..forms import (
    MISSING_WEB,
    URL_MAX_LENGTH,
    AdvancedForm,
    ConnectionForm,
    GeneralForm,
    UsageForm,
    choices,
    url_problem,
    with_web_appended,
)
from ..models import (
    OWN_INTEGRATION,
    BackgroundJob,
    CrmIntegration,
    JobStatus,
    Organization,
    audit,
    partner_suppliers,
    utcnow,
    values_text,
)
from ..queues import QUEUE_TESTS
from ..widgets import labelled_field
from .htmx import fragment, is_htmx, poll, require_csrf

bp = Blueprint("integrations", __name__, url_prefix="/settings/crm")

SECTIONS = ("general", "connection", "usage", "advanced")
USAGE_FIELDS = [
    "marketing_automation", "ma_pull_contacts", "ma_sync_leads", "ma_score_threshold", "ma_allow_field_updates",
    "ma_pull_opportunities", "lead_distribution", "ld_sync_supplier_leads", "ld_allow_field_updates",
    "ld_pull_opportunities", "ld_custom_fields_in_notes",
]
CONNECTION_FIELDS = ["username", "org_url", "odata_url", "domain", "organization_name"]
ONLINE_FIELDS = ["tenant_id", "client_id"]


def _supplier_choices(integration: CrmIntegration) -> list[tuple[int, str]]:
    org = integration.organization
    return [(s.id, s.name) for s in org.suppliers]


def build_forms(integration: CrmIntegration, posted: str | None = None,
                suppliers: Sequence[tuple[int, str]] | None = None) -> dict:
    """The four forms: the posted one reads the request, the others show what is saved. SUPPLIERS: the partner's
    suppliers as already read (id, name), else read here."""
    general = GeneralForm(formdata=request.form if posted == "general" else None, obj=integration, prefix="general")
    suppliers = list(suppliers) if suppliers is not None else _supplier_choices(integration)
    general.supplier_id.choices = choices([(0, "— Choose a supplier —"), *suppliers])
    if posted != "general":
        # A partner of exactly one supplier has nothing to choose: that supplier is preselected.
        only = suppliers[0][0] if len(suppliers) == 1 else 0
        general.supplier_id.data = integration.supplier_id or only
    connection_data = None
    if posted == "connection":
        # A post without the kind (a page from before it existed, a script) keeps the saved kind.
        connection_data = request.form.copy()
        connection_data.setdefault("connection-connection_kind", integration.connection_kind or "onprem")
    connection = ConnectionForm(formdata=connection_data, obj=integration,
                                prefix="connection", has_password=integration.has_password,
                                has_client_credential=integration.has_client_credential)
    records_as_contacts = integration.record_leads_as == "contact"
    usage = UsageForm(formdata=request.form if posted == "usage" else None, obj=integration, prefix="usage",
                      records_as_contacts=records_as_contacts)
    advanced = AdvancedForm(formdata=request.form if posted == "advanced" else None, obj=integration,
                            prefix="advanced")
    return {"general": general, "connection": connection, "usage": usage, "advanced": advanced}


def _latest_test_id(integration_id):
    """The id of an integration's last connection test, as a scalar subquery."""
    job = aliased(BackgroundJob)
    return (
        select(job.id)
        .where(job.integration_id == integration_id, job.kind == "connection-test")
        .order_by(job.created_at.desc(), job.id.desc())  # the same one for every statement, even in a tie
        .limit(1)
        .correlate(CrmIntegration)
        .scalar_subquery()
    )


# Built once (see portal.access).
_LAST_TEST = select(BackgroundJob).where(BackgroundJob.id == _latest_test_id(bindparam("integration_id")))


def _last_test(integration: CrmIntegration) -> BackgroundJob | None:
    return db.session.scalar(_LAST_TEST, {"integration_id": integration.id})


def _context(integration: CrmIntegration, forms: dict, saved: str | None = None, unchanged: bool = False) -> dict:
    test = _last_test(integration)
    stuck = test is not None and not test.done and jobs_state.is_stuck_in_queue(test)
    return {"row": integration, "forms": forms, "saved": saved, "unchanged": unchanged, "test": test,
            "stuck": stuck, "platform": current_app.config["PLATFORM_NAME"]}


def _layout(label: str, sections: Markup, refresh_while_busy: bool, status: int = 200):
    """The page around its drawn sections; without JavaScript it refreshes itself while a connection test runs."""
    html = render_template("integrations/edit.html", label=label, sections=sections,
                           refresh_while_busy=refresh_while_busy)
    return html, status, {"Cache-Control": "no-store", "Vary": "HX-Request"}


def _busy(ctx: dict) -> bool:
    """True while the page's connection test runs (and a worker has it)."""
    return bool(ctx["test"] and not ctx["test"].done and not ctx["stuck"])


def _sections(integration: CrmIntegration, forms: dict, saved: str | None = None) -> tuple[dict, Markup]:
    """The page's four sections drawn, with the context they were drawn from."""
    ctx = _context(integration, forms, saved)
    return ctx, Markup(render_template("integrations/_sections.html", **ctx))  # noqa: S704 - a rendered template


def _page(integration: CrmIntegration, forms: dict, status: int = 200, saved: str | None = None):
    ctx, sections = _sections(integration, forms, saved)
    return _layout(integration.label, sections, _busy(ctx), status)


# --- A plain GET: the sections from the cache, keyed by every value they are drawn from ---------------------------

def _saved_or_not(column):
    """A secret as the page shows it: saved or not (never its value, even encrypted)."""
    return func.coalesce(func.length(column), 0) > 0


def _texts(columns: list) -> list:
    """COLUMNS' values as texts written by the database (models.values_text), at most 50 to a text (PostgreSQL's
    functions take at most 100 arguments)."""
    return [values_text(*columns[at:at + 50]) for at in range(0, len(columns), 50)]


_SECRETS = frozenset(CrmIntegration.SECRET_FIELDS)
_INTEGRATION_VALUES = [_saved_or_not(attr.columns[0]) if attr.key in _SECRETS else attr.columns[0]
                       for attr in inspect(CrmIntegration).column_attrs]
_TEST_VALUES = [attr.columns[0] for attr in inspect(BackgroundJob).column_attrs]
_SUPPLIER = aliased(Organization)

# One statement: every value the sections are drawn from as a few texts written by the database (the integration,
# only the signed-in organization's, and its last connection test; a secret only as saved or not), whether that
# test is queued and since when (a test no worker took is drawn as stuck), and the partner's suppliers, one row
# each in the order of Organization.suppliers. A few texts cost the driver far less than sixty columns.
_SAVED_TEXTS = [*_texts(_INTEGRATION_VALUES), *_texts(_TEST_VALUES)]
_SAVED = (
    select(*_SAVED_TEXTS,
           BackgroundJob.status.label("test_status"), BackgroundJob.created_at.label("test_created_at"),
           _SUPPLIER.id.label("choice_id"), _SUPPLIER.name.label("choice_name"))
    .select_from(CrmIntegration)
    .outerjoin(BackgroundJob, BackgroundJob.id == _latest_test_id(CrmIntegration.id))
    .outerjoin(partner_suppliers, partner_suppliers.c.partner_id == CrmIntegration.organization_id)
    .outerjoin(_SUPPLIER, _SUPPLIER.id == partner_suppliers.c.supplier_id)
    .where(*OWN_INTEGRATION)
    .order_by(_SUPPLIER.name)
)


class _Saved(NamedTuple):
    """The sections' key: every value they are drawn from, the CSRF token aside."""

    script_root: str
    platform: str
    texts: tuple[str, ...]  # the integration's and its last test's values, as the database wrote them
    suppliers: tuple[tuple[int, str], ...]  # the partner's suppliers (id, name): the drawing's choices
    stuck: bool  # no worker took the last test


def _saved_key(integration_id: int) -> _Saved:
    """The sections' key, read in one statement; 404 for an integration not the signed-in organization's."""
    rows = db.session.connection().execute(
        _SAVED, {"integration_id": integration_id, "organization_id": current_user.organization_id}).all()
    if not rows:
        abort(404)
    first = rows[0]
    stuck = first.test_status is not None and jobs_state.is_stuck_in_queue(
        SimpleNamespace(status=first.test_status, created_at=first.test_created_at))
    suppliers = tuple((row.choice_id, row.choice_name) for row in rows if row.choice_id is not None)
    texts = tuple(first[:len(_SAVED_TEXTS)])
    return _Saved(request.script_root, current_app.config["PLATFORM_NAME"], texts, suppliers, stuck)


def _draw_sections(integration_id: int, key: _Saved) -> tuple[str, tuple[str, ...], bool]:
    """The sections drawn as any render draws them, with a placeholder for the CSRF token: the page's label, the
    pieces around the token's places, and whether a connection test runs. The supplier choices are the key's: a
    link made and undone while drawing cannot leave them out of the key."""
    integration = own_integration(integration_id)
    with page_cache.csrf_placeholder() as placeholder:
        ctx, drawn = _sections(integration, build_forms(integration, suppliers=key.suppliers))
    return integration.label, page_cache.split_tokens(drawn, placeholder), _busy(ctx)


@bp.route("/<int:integration_id>/edit")
@admin_required
def edit(integration_id: int):
    """The Edit Settings page with its four sections, served from the cache while nothing they show changed."""
    cache = page_cache.app_cache("integrations.edit")
    if not cache.size:
        integration = own_integration(integration_id)
        return _page(integration, build_forms(integration))
    label, pieces, busy = page_cache.cached_markup(cache, lambda: _saved_key(integration_id),
                                                   lambda key: _draw_sections(integration_id, key))
    return _layout(label, page_cache.with_token(pieces), busy)


def _section_response(integration, forms, section, *, ok: bool, extra_oob: tuple[str, ...] = (),
                      note: str = "saved"):
    """Answer a section's POST: fragment for htmx (422 on errors), PRG or a 422 page without JavaScript.

    ``note`` is what the section says after it: "saved", "unchanged" (nothing to save) or "" (nothing).
    """
    if is_htmx():
        ctx = _context(integration, forms, saved=section if ok and note else None, unchanged=note == "unchanged")
        return fragment(f"integrations/_{section}.html", status=200 if ok else 422,
                        oob_templates=tuple(f"integrations/_{name}.html" for name in extra_oob), **ctx)
    if ok:
        return redirect(url_for("integrations.edit", integration_id=integration.id) + f"#{section}")
    return _page(integration, forms, status=422)


def _apply(integration: CrmIntegration, values: dict) -> list[str]:
    """Set values and return the names of those that changed."""
    changed = []
    for key, value in values.items():
        if getattr(integration, key) != value:
            setattr(integration, key, value)
            changed.append(key)
    return changed


@bp.route("/<int:integration_id>/general", methods=["POST"])
@admin_required
def save_general(integration_id: int):
    """Save General Settings (G1)."""
    integration = own_integration(integration_id)
    forms = build_forms(integration, posted="general")
    form = forms["general"]
    allowed = {sid for sid, _ in _supplier_choices(integration)}
    valid = form.validate()
    if valid and form.supplier_id.data not in allowed:
        form.supplier_id.errors = [*form.supplier_id.errors, "Choose one of your suppliers."]
        valid = False
    if not valid:
        return _section_response(integration, forms, "general", ok=False)
    changed = _apply(integration, {"supplier_id": form.supplier_id.data,
                                   "record_leads_as": form.record_leads_as.data})
    changed += lifecycle.apply_contacts_rule(integration)
    note = _finish_save(integration, "general", changed, "General Settings")
    forms = build_forms(integration)
    return _section_response(integration, forms, "general", ok=True, note=note,
                             extra_oob=("usage",) if "record_leads_as" in changed else ())


def _finish_save(integration: CrmIntegration, section: str, changed: list[str], title: str) -> str:
    """Audit and say what a section's save did; "saved" or "unchanged", for the note under the section."""
    if changed:
        audit(current_user, integration.organization_id, f"saved {section} settings", changed, integration.id)
        flash(f"{title} saved.", "success")
    else:
        flash(f"{title}: nothing changed.", "info")
    db.session.commit()
    return "saved" if changed else "unchanged"


@bp.route("/<int:integration_id>/connection", methods=["POST"])
@admin_required
def save_connection(integration_id: int):
    """Save CRM Connection Settings (G2); with action=test, then run the connection test as a job."""
    integration = own_integration(integration_id)
    forms = build_forms(integration, posted="connection")
    form = forms["connection"]
    valid = form.validate()
    if valid:
        valid = _guard_urls(form)
    if not valid:
        return _section_response(integration, forms, "connection", ok=False)
    # Only the chosen kind's fields are saved: the other kind keeps its values for a switch back.
    changed = _apply(integration, {"connection_kind": form.connection_kind.data})
    if form.online:
        values = {f: (getattr(form, f).data or "").strip() for f in ONLINE_FIELDS}
        values["environment_url"] = _environment_root(form.environment_url.data)
        changed += _apply(integration, values)
        # The credential entered last is the one used: a new secret replaces a certificate and the other way round.
        certificate = (form.client_certificate.data or "").strip()
        if certificate:
            integration.client_certificate_encrypted = encrypt(certificate)
            integration.client_secret_encrypted = None
            changed.append("client_certificate")
        elif form.client_secret.data:
            integration.client_secret_encrypted = encrypt(form.client_secret.data)
            integration.client_certificate_encrypted = None
            changed.append("client_secret")
    else:
        values = {f: (getattr(form, f).data or "").strip() for f in CONNECTION_FIELDS}
        changed += _apply(integration, values)
        if form.password.data:
            integration.password_encrypted = encrypt(form.password.data)
            changed.append("password")
    if changed:
        integration.connection_saved_at = utcnow()
    testing = request.form.get("action") == "test"
    if lifecycle.connection_saved(integration, changed, testing=testing):
        flash("The connection settings changed, so the integration was switched Off: "
              "run Save and Test CRM Connection, then switch it On again.", "error")
    note = _finish_save(integration, "connection", changed, "CRM Connection Settings")
    if testing:
        _start_test(integration)
    forms = build_forms(integration)
    return _section_response(integration, forms, "connection", ok=True, note=note)


def _environment_root(url: str | None) -> str:
    """https://org.crm4.dynamics.com from what was typed (a trailing slash or /api/data/v9.2/ is dropped)."""
    from urllib.parse import urlsplit

    parts = urlsplit((url or "").strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


def _guard_urls(form: ConnectionForm) -> bool:
    """Refuse URLs that the URL guard would never let the portal reach; DNS trouble is only a warning later."""
    from ..connection import guard_problem

    ok = True
    for field in (form.environment_url,) if form.online else (form.org_url, form.odata_url):
        value = (field.data or "").strip()
        if value:
            problem = guard_problem(value)
            if problem:
                field.errors = [*field.errors, problem]
                ok = False
    return ok


def _start_test(integration: CrmIntegration, add_lead_source: bool = False) -> BackgroundJob:
    """Enqueue the connection test unless one is already queued or running for this integration."""
    running = db.session.scalar(
        select(BackgroundJob).where(
            BackgroundJob.integration_id == integration.id, BackgroundJob.kind == "connection-test",
            BackgroundJob.status.in_([JobStatus.queued, JobStatus.started]),
        ).order_by(BackgroundJob.created_at.desc()).limit(1)
    )
    if running is not None and not jobs_state.is_stuck_in_queue(running):
        flash("A connection test is already running: its result follows below.", "info")
        return running
    return jobs_state.enqueue(
        "connection-test", "jobs.connection.run_test", queue_name=QUEUE_TESTS,
        organization_id=integration.organization_id, integration_id=integration.id,
        args=(integration.id, add_lead_source), timeout=60,
    )


@bp.route("/<int:integration_id>/lead-source", methods=["POST"])
@admin_required
def add_lead_source(integration_id: int):
    """Add the platform's option to Lead Source in the CRM (needs customization rights), then test again."""
    integration = own_integration(integration_id)

    require_csrf()
    if not integration.connection_complete:
        flash("Save the CRM Connection Settings first.", "error")
    else:
        _start_test(integration, add_lead_source=True)
        audit(current_user, integration.organization_id, "asked to add the lead source option", [], integration.id)
        db.session.commit()
    forms = build_forms(integration)
    return _section_response(integration, forms, "connection", ok=True, note="")  # nothing of the form was saved


@bp.route("/<int:integration_id>/tests/<job_id>")
@admin_required
def test_status(integration_id: int, job_id: str):
    """The connection test's steps so far; 286 stops the polling once it is done or no worker took it."""
    integration = own_integration(integration_id)
    job = jobs_state.job_of(job_id)
    if job is None or job.integration_id != integration.id or job.kind != "connection-test":
        abort(404)
    stuck = jobs_state.is_stuck_in_queue(job)
    ctx = _context(integration, {}, None)
    ctx.update(test=job, stuck=stuck)
    return poll(render_template("integrations/_test_status.html", **ctx), job.done or stuck)


@bp.route("/<int:integration_id>/validate/<field>", methods=["POST"])
@admin_required
def validate_field(integration_id: int, field: str):
    """Inline feedback on a URL as the user types or leaves the field, with an offer to append /web."""
    integration = own_integration(integration_id)
    if field not in ("org_url", "odata_url"):
        abort(404)
    value = request.form.get(f"connection-{field}", "").strip()
    problem = _url_check_problem(field, value)
    appended = False
    if problem == MISSING_WEB and request.form.get("append_web"):
        with_web = with_web_appended(value)
        if len(with_web) > URL_MAX_LENGTH:
            problem = f"With /web appended the URL would be longer than {URL_MAX_LENGTH} characters: shorten it."
        else:
            value, appended = with_web, True
            problem = _url_check_problem(field, value)
    sent_back = _appended_field(integration.id, value) if appended else None
    return render_template("integrations/_url_feedback.html", field=field, value=value, problem=problem,
                           missing_web=problem == MISSING_WEB, appended=appended, sent_back=sent_back,
                           row=integration)


def _url_check_problem(field: str, value: str) -> str | None:
    """What the inline check says is wrong with a URL field's value (its length, shape, then address), or None."""
    if not value:
        return None
    if len(value) > URL_MAX_LENGTH:
        return f"The URL is {len(value):,} characters long, longer than {URL_MAX_LENGTH} characters: shorten it."
    problem = url_problem(value, must_end_with_web=field == "org_url")
    if problem is None:
        from ..connection import guard_problem

        problem = guard_problem(value)
    return problem


def url_check_attrs(integration_id: int, field: str) -> dict[str, str]:
    """A URL field's inline check: asked as the user types or leaves it, once per value; a new check cuts short the
    one still on its way (hx-sync replace), so an answer for an earlier value never lands under a later one. It
    posts the field alone (hx-params), not its form: a password typed above it stays in the browser until Save."""
    return {"hx-post": url_for("integrations.validate_field", integration_id=integration_id, field=field),
            "hx-trigger": "keyup changed delay:500ms, change", "hx-sync": "this:replace", "data-validate-once": "",
            "hx-target": f"#{field}-feedback", "hx-swap": "outerHTML", "hx-params": f"connection-{field}"}


bp.add_app_template_global(url_check_attrs)


def _appended_field(integration_id: int, value: str) -> Markup:
    """The Organization URL field with /web appended, drawn whole as the page draws it (label, help, limits and
    check; no error of an earlier save), already answered for its new value and taking the focus: the button that
    was pressed is gone. It replaces the field's wrapper, out of band."""
    form = ConnectionForm(formdata=None, prefix="connection", data={"org_url": value}, meta={"csrf": False})
    drawn = labelled_field(form.org_url, form.org_url.description,
                           {**url_check_attrs(integration_id, "org_url"), "data-validated": value, "data-focus": ""})
    return Markup(f'<div id="org_url-wrap" hx-swap-oob="true">{drawn}\n    </div>')  # noqa: S704 - drawn escaped


@bp.route("/<int:integration_id>/usage", methods=["POST"])
@admin_required
def save_usage(integration_id: int):
    """Save the Usage Profile (G3)."""
    integration = own_integration(integration_id)
    forms = build_forms(integration, posted="usage")
    form = forms["usage"]
    if not form.validate():
        return _section_response(integration, forms, "usage", ok=False)
    values = {f: getattr(form, f).data for f in USAGE_FIELDS}
    values = {k: (bool(v) if k != "ma_score_threshold" else int(v)) for k, v in values.items()}
    changed = _apply(integration, values)
    note = _finish_save(integration, "usage", changed, "Usage Profile")
    return _section_response(integration, build_forms(integration), "usage", ok=True, note=note)


@bp.route("/<int:integration_id>/advanced", methods=["POST"])
@admin_required
def save_advanced(integration_id: int):
    """Save the Advanced General Options (G4)."""
    integration = own_integration(integration_id)
    forms = build_forms(integration, posted="advanced")
    form = forms["advanced"]
    if not form.validate():
        return _section_response(integration, forms, "advanced", ok=False)
    before = integration.event_types
    changed = _apply(integration, {"create_campaigns": bool(form.create_campaigns.data),
                                   "cut_long_values": bool(form.cut_long_values.data)})
    if form.create_campaigns.data:
        changed += _apply(integration, {"campaign_data_level": form.campaign_data_level.data})
    integration.event_types = form.event_types.data or []
    if integration.event_types != before:
        changed.append("event_types")
    note = _finish_save(integration, "advanced", changed, "Advanced General Options")
    return _section_response(integration, build_forms(integration), "advanced", ok=True, note=note)
