"""Contact lists (/lists): the lists made from the CRM's marketing lists, their members, Create from CRM list."""

from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from redis.exceptions import RedisError

from .. import contact_lists, ledger, schedule
from ..access import admin_required
from ..extensions import db
from ..forms import ContactListForm
from ..models import CrmIntegration, audit, integration_for
from ..wording import counted
from . import page_arg
from .htmx import is_htmx

bp = Blueprint("lists", __name__, url_prefix="/lists")


def _integration() -> CrmIntegration:
    integration = integration_for(current_user.organization)
    if db.session.info.pop("uncommitted_integration", False):
        db.session.commit()
    return integration


@bp.get("")
@admin_required
def index():
    """Every contact list made from a CRM list: member type, static or dynamic, members, last refresh."""
    integration = _integration()
    return render_template("lists/index.html", rows=contact_lists.lists_of(current_user.organization_id),
                           row=integration)


def members_word(member_type: str) -> str:
    """What a list's members are, as the CRM names them: "Leads" or "Contacts"."""
    return f"{member_type.capitalize()}s"


def _choices(crm_lists) -> list[tuple[str, str, dict]]:
    """The CRM's lists as options; each says what its members are, for the keep-in-sync switch's name."""
    def label(crm_list) -> str:
        kind = "dynamic" if crm_list.dynamic else "static"
        return f"{crm_list.name} ({kind}, {crm_list.member_type}s, {counted(crm_list.member_count, 'member')})"

    return [("", "Choose a marketing list…", {}),
            *((cl.id, label(cl), {"data-members": members_word(cl.member_type)}) for cl in crm_lists)]


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def new():
    """Create from CRM list: pick one of the CRM's marketing lists (read now), name it, keep it in sync or not."""
    integration = _integration()
    crm_lists, problem = contact_lists.crm_lists(integration)
    form = ContactListForm()
    form.crm_list_id.choices = _choices(crm_lists)
    chosen = next((cl for cl in crm_lists if cl.id == form.crm_list_id.data), None)
    if chosen is not None:  # a list of contacts is kept in sync with CRM Contacts, not Leads
        form.keep_in_sync.label.text = f"Keep list in sync with CRM {members_word(chosen.member_type)}"
    if request.method == "POST":
        if form.validate_on_submit():
            chosen = next((cl for cl in crm_lists if cl.id == form.crm_list_id.data), None)
            existing = contact_lists.made_from(current_user.organization_id, form.crm_list_id.data)
            if chosen is None:
                form.crm_list_id.errors.append("That list is not among your CRM's marketing lists any more.")
            elif existing is not None:
                form.crm_list_id.errors.append(f"The contact list “{existing.name}” is already made from this list.")
            else:
                made = contact_lists.create_from_crm(integration, chosen, form.name.data, form.keep_in_sync.data)
                audit(current_user, integration.organization_id, "made a contact list",
                      ["name", "crm_list_id", "keep_in_sync"], integration.id)
                db.session.commit()
                _import(integration, made.name)
                return redirect(url_for("lists.detail", list_id=made.id))
        return make_response(render_template("lists/new.html", form=form, problem=problem, row=integration), 422)
    return render_template("lists/new.html", form=form, problem=problem, row=integration)


def _import(integration: CrmIntegration, name: str) -> None:
    """Queue the contact_lists step now, so the new list's members arrive without waiting for the night."""
    refusal = ledger.start_refusal(integration, "manual")
    if refusal is None:
        try:
            schedule.start_run(integration, "manual", steps=["contact_lists"],
                               trigger=f"Contact list · {current_user.email}"[:100])
        except RedisError:
            refusal = "The background worker could not be reached."
    if refusal:
        flash(f"Contact list “{name}” made; its members come with the next run. {refusal}", "info")
    else:
        flash(f"Contact list “{name}” made; its members are being imported.", "success")


@bp.get("/<int:list_id>")
@admin_required
def detail(list_id: int):
    """One contact list: where it comes from, when it was refreshed, and its members, searchable, 50 a page."""
    found = contact_lists.list_of(current_user.organization_id, list_id)
    if found is None:
        abort(404)
    search = request.args.get("q", "")
    page = page_arg()
    members = contact_lists.members(found, search, page)
    importing = found.last_synced_at is None and found.crm_missing_at is None
    # The page polls itself while the first import runs: the answer that finds it done says so, once.
    return render_template("lists/detail.html", contact_list=found, members=members, search=search,
                           importing=importing, announce_import=is_htmx() and not importing)
