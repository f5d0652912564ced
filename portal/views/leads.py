"""Leads: the partner's leads with Accept/Reject, the supplier's Distribute and Distributed pages (S12, S13),
the accept/reject link of the notification email, and the outbox of emails in the embedded setup."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from .. import leads
from ..access import admin_required
from ..extensions import db
from ..forms import CsrfOnlyForm, DistributeForm
from ..models import Organization
from ..platform_models import STANDARD_FIELDS, Acceptance, LeadOrigin, OutboxEmail
from . import page_arg
from .htmx import fragment, is_htmx, require_csrf

bp = Blueprint("leads", __name__)

PAGE = 100
ANSWERS = {"accept": True, "reject": False}


def _page_number() -> int:
    """The ``page`` query argument, from 1."""
    return page_arg()


def _supplier_only() -> None:
    if not current_user.organization.is_supplier:
        abort(404)


def _partner_only() -> None:
    if current_user.organization.is_supplier:
        abort(404)


# -- the partner's leads


@bp.get("/leads")
@login_required
def index():
    """A partner's leads, distributed ones first, with Accept and Reject (S12); suppliers go to Distributed."""
    if current_user.organization.is_supplier:
        return redirect(url_for("leads.distributed"))
    page = _page_number()
    rows = leads.leads_of(current_user.organization_id, limit=PAGE + 1, offset=(page - 1) * PAGE)
    return render_template("leads/index.html", rows=rows[:PAGE], more=len(rows) > PAGE, page=page,
                           csrf_form=CsrfOnlyForm())


@bp.post("/leads/<int:lead_id>/<any(accept, reject):answer>")
@login_required
def answer(lead_id: int, answer: str):
    """Accept or reject a distributed lead in the portal; htmx swaps the row, without JavaScript the page reloads."""
    _partner_only()
    lead = leads.own_lead(current_user.organization_id, lead_id)
    if lead is None or lead.origin != LeadOrigin.distributed:
        abort(404)
    require_csrf()
    if leads.set_acceptance(lead, ANSWERS[answer], via="portal"):
        flash(f"{lead.full_name} is {lead.acceptance.value}.", "success")
    if is_htmx():
        supplier = db.session.get(Organization, lead.supplier_id) if lead.supplier_id else None
        return fragment("leads/_lead_row.html", lead=lead, supplier_name=supplier.name if supplier else None,
                        csrf_form=CsrfOnlyForm())
    return redirect(url_for("leads.index"))


# -- the supplier's pages


def _distribute_form(blank: bool = False) -> DistributeForm:
    form = DistributeForm(formdata=None) if blank else DistributeForm()
    form.partner_id.choices = [(p.id, p.name) for p in leads.partners_of(current_user.organization_id)]
    return form


@bp.route("/leads/distribute", methods=["GET", "POST"])
@login_required
def distribute():
    """A supplier gives a lead to one of its partners; errors next to the fields with 422, nothing typed is lost."""
    _supplier_only()
    form = _distribute_form()
    template = "leads/_distribute_form.html" if is_htmx() else "leads/distribute.html"
    if not form.is_submitted():
        return render_template("leads/distribute.html", form=form)
    if form.validate_on_submit():
        partner = db.session.get(Organization, form.partner_id.data)
        data = {name: getattr(form, name).data for name in STANDARD_FIELDS if getattr(form, name).data}
        data["email"] = form.email.data
        if form.score.data is not None:
            data["score"] = form.score.data
        try:
            lead = leads.distribute_lead(current_user.organization, partner, data)
        except leads.LeadError as exc:
            db.session.rollback()
            form.form_errors.append(str(exc))
        else:
            flash(f"{lead.full_name} was sent to {partner.name}; their administrators were emailed to accept it.",
                  "success")
            if is_htmx():
                fresh = _distribute_form(blank=True)
                fresh.partner_id.data = partner.id
                return fragment(template, form=fresh, sent=lead)
            return redirect(url_for("leads.distributed"))
    if is_htmx():
        return fragment(template, status=422, form=form)
    return render_template(template, form=form), 422


@bp.get("/leads/distributed")
@login_required
def distributed():
    """Each lead the supplier distributed: partner, acceptance and where, CRM status, activities, opportunities."""
    _supplier_only()
    page = _page_number()
    rows = leads.distributed_by(current_user.organization_id, limit=PAGE + 1, offset=(page - 1) * PAGE)
    return render_template("leads/distributed.html", rows=rows[:PAGE], more=len(rows) > PAGE, page=page)


# -- the email link: the token is the credential, for this one lead only


def _token_page(template: str, status: int = 200, **context):
    """A page reached by an emailed link: not cached, not indexed, and the token never leaks as a referrer."""
    resp = make_response(render_template(template, **context), status)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Robots-Tag"] = "noindex"
    return resp


@bp.route("/leads/respond/<token>/<answer>", methods=["GET", "POST"])
def respond(token: str, answer: str):
    """GET asks to confirm (link scanners change nothing); POST with CSRF accepts or rejects, via email."""
    lead = leads.lead_by_token(token) if answer in ANSWERS else None
    if lead is None:
        abort(404)
    supplier = db.session.get(Organization, lead.supplier_id) if lead.supplier_id else None
    form = CsrfOnlyForm()
    done = False
    if request.method == "POST":
        if not form.validate_on_submit():
            abort(400)
        leads.set_acceptance(lead, ANSWERS[answer], via="email")
        done = True
    return _token_page("leads/respond.html", lead=lead, answer=answer, supplier=supplier, form=form, done=done,
                       wanted=Acceptance.accepted if ANSWERS[answer] else Acceptance.rejected)


# -- the outbox


@bp.get("/outbox")
@admin_required
def outbox():
    """Emails the portal sent, or would have sent: the embedded setup has no SMTP server (own organization only)."""
    page = _page_number()
    mails = db.session.scalars(
        select(OutboxEmail).where(OutboxEmail.organization_id == current_user.organization_id)
        .order_by(OutboxEmail.created_at.desc(), OutboxEmail.id.desc()).limit(PAGE + 1).offset((page - 1) * PAGE)
    ).all()
    return render_template("leads/outbox.html", mails=mails[:PAGE], more=len(mails) > PAGE, page=page,
                           smtp=bool(current_app.config.get("SMTP_HOST")))
