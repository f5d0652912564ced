"""The JSON API (``/api/v1``): leads, events, campaigns and distributions, per organization, by bearer token."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from flask import Blueprint, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from .. import campaigns, leads, tokens
from ..campaigns import CampaignError
from ..extensions import csrf, db
from ..leads import LeadError
from ..models import Organization
from ..platform_models import STANDARD_FIELDS, Campaign, Lead, MarketingEvent
from ..validation import json_text_problems
from . import DB_INT_MAX

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # no cookies are used here: the bearer token is the credential

MAX_PAGE = 1000


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str):
    """A JSON error response."""
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return resp


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    db.session.rollback()
    return error(exc.status, exc.code, exc.message)


@bp.errorhandler(LeadError)
@bp.errorhandler(CampaignError)
def _invalid(exc: ValueError):
    db.session.rollback()  # nothing half-made is kept
    return error(422, "invalid", str(exc))


@bp.errorhandler(HTTPException)
def _http(exc: HTTPException):
    db.session.rollback()
    code = (exc.name or "error").lower().replace(" ", "_")
    return error(exc.code or 500, code, exc.description or exc.name)


@bp.before_request
def _authenticate():
    """Every call names its organization by ``Authorization: Bearer <token>``."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ApiError(401, "unauthorized", "Send an API token: Authorization: Bearer <token> "
                                            "(Settings > API tokens).")
    token = tokens.authenticate(raw.strip())
    if token is None:
        raise ApiError(401, "unauthorized", "The API token is unknown or revoked: create a new one in "
                                            "Settings > API tokens.")
    g.api_org = db.session.get(Organization, token.organization_id)


@bp.after_request
def _no_store(resp):
    resp.headers["Cache-Control"] = "no-store"
    return resp


def body(kind: type = dict):
    """The request's JSON body; 400 with a clear message when it is not JSON of the expected shape."""
    try:
        data = request.get_json(force=True, silent=False)
    except BadRequest as exc:
        raise ApiError(400, "bad_json", "The request body is not valid JSON: send a JSON object with "
                                        "Content-Type: application/json.") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_json", "The request body is nested too deeply: no lead, event or campaign "
                                        "needs more than a few levels.") from exc
    if not isinstance(data, kind):
        shape = "object" if kind is dict else "array" if kind is list else "object or array"
        raise ApiError(400, "bad_json", f"The request body must be a JSON {shape}.")
    for field, problem in json_text_problems(data):
        raise ApiError(422, "invalid", f"{field} {problem}")
    return data


def page_args() -> tuple[int, int]:
    """``limit`` and ``offset`` from the query string."""
    try:
        limit = int(request.args.get("limit", 100))
        offset = int(request.args.get("offset", 0))
    except ValueError as exc:
        raise ApiError(400, "bad_query", "limit and offset must be whole numbers.") from exc
    if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= DB_INT_MAX:
        raise ApiError(400, "bad_query", f"limit must be from 1 to {MAX_PAGE} and offset from 0 to {DB_INT_MAX}.")
    return limit, offset


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _num(value: Decimal | float | None) -> str | None:
    return None if value is None else str(value)


def lead_json(lead: Lead) -> dict:
    """A lead as the API shows it."""
    out = {"id": lead.id, "email": lead.email}
    out.update({name: getattr(lead, name) for name in STANDARD_FIELDS})
    out.update({
        "score": lead.score, "custom_fields": lead.custom_fields, "origin": lead.origin.value,
        "supplier_id": lead.supplier_id, "distributed_at": _iso(lead.distributed_at),
        "acceptance": lead.acceptance.value if lead.origin.value == "distributed" else None,
        "acceptance_via": lead.acceptance_via or None, "acceptance_at": _iso(lead.acceptance_at),
        "crm_status": lead.crm_status or None, "created_at": _iso(lead.created_at),
        "updated_at": _iso(lead.updated_at),
    })
    return out


def event_json(event: MarketingEvent) -> dict:
    """A marketing event as the API shows it."""
    return {"id": event.id, "lead_id": event.lead_id, "type": event.event_type,
            "occurred_at": _iso(event.occurred_at), "details": event.details}


def campaign_json(cp: Campaign) -> dict:
    """A campaign as the API shows it (amounts as strings, so no cent is lost)."""
    return {
        "id": cp.id, "name": cp.name, "type_code": cp.type_code, "status": cp.status,
        "starts_on": _iso(cp.starts_on), "ends_on": _iso(cp.ends_on), "description": cp.description,
        "objective": cp.objective, "budget": _num(cp.budget), "expected_revenue": _num(cp.expected_revenue),
        "expected_response": cp.expected_response, "promotion_code": cp.promotion_code,
        "created_at": _iso(cp.created_at), "updated_at": _iso(cp.updated_at),
    }


def _own_lead(lead_id: int) -> Lead:
    lead = leads.own_lead(g.api_org.id, lead_id)
    if lead is None:
        raise ApiError(404, "not_found", f"No lead {lead_id} in your organization.")
    return lead


def _own_campaign(campaign_id: int) -> Campaign:
    cp = campaigns.own_campaign(g.api_org.id, campaign_id)
    if cp is None:
        raise ApiError(404, "not_found", f"No campaign {campaign_id} in your organization.")
    return cp


def _supplier_only() -> None:
    if not g.api_org.is_supplier:
        raise ApiError(403, "forbidden", "Only a supplier's token can distribute leads.")


# -- leads


@bp.post("/leads")
def create_lead():
    """Create or update (by email) one of the organization's marketing leads, with optional events."""
    lead, created = leads.save_marketing_lead(g.api_org, body())
    return jsonify(lead_json(lead)), 201 if created else 200


@bp.get("/leads/<int:lead_id>")
def get_lead(lead_id: int):
    """One of the organization's leads."""
    return jsonify(lead_json(_own_lead(lead_id)))


@bp.post("/leads/<int:lead_id>/events")
def add_events(lead_id: int):
    """Add marketing events to a lead: a JSON array, or an object with ``events``."""
    lead = _own_lead(lead_id)
    data = body(dict | list)
    events = data.get("events") if isinstance(data, dict) else data
    if not events:
        raise LeadError("Send at least one event: {\"events\": [{\"type\": \"email_click\", "
                        "\"occurred_at\": \"2026-11-26T10:00:00Z\"}]}.")
    made = leads.add_events(lead, events)
    db.session.commit()
    return jsonify({"lead_id": lead.id, "events": [event_json(e) for e in made]}), 201


# -- campaigns


@bp.post("/campaigns")
def create_campaign():
    """Create a campaign of the organization (S11)."""
    return jsonify(campaign_json(campaigns.create_campaign(g.api_org.id, body()))), 201


@bp.get("/campaigns/<int:campaign_id>")
def get_campaign(campaign_id: int):
    """One of the organization's campaigns."""
    return jsonify(campaign_json(_own_campaign(campaign_id)))


@bp.patch("/campaigns/<int:campaign_id>")
def update_campaign(campaign_id: int):
    """Change some fields of a campaign; the CRM follows on the next campaign step (S11)."""
    cp = _own_campaign(campaign_id)
    return jsonify(campaign_json(campaigns.update_campaign(cp, body())))


# -- distributions (suppliers)


@bp.post("/distributions")
def distribute():
    """A supplier distributes a lead to one of its partners: stored, owners emailed, pushed at once (S1, S12)."""
    _supplier_only()
    data = body()
    ref, lead_data = data.get("partner"), data.get("lead")
    if not isinstance(lead_data, dict):
        raise LeadError('Send the lead as an object: {"partner": "Partner name or id", "lead": {"email": …}}.')
    partner = leads.partner_by_ref(g.api_org, ref)
    if partner is None:
        raise LeadError(f"{ref!r} is not one of your partners: name a partner by its id or exact name.")
    lead = leads.distribute_lead(g.api_org, partner, lead_data)
    return jsonify({"lead": lead_json(lead), "partner": {"id": partner.id, "name": partner.name},
                    "acceptance": lead.acceptance.value}), 201


@bp.get("/distributions")
def distributions():
    """A supplier's distributed leads, newest first, with acceptance, CRM status, activities and opportunities (S13).

    Query: ``limit`` (1–1000, default 100), ``offset``, ``partner`` (id or name) to see one partner's.
    """
    _supplier_only()
    limit, offset = page_args()
    partner_id = None
    if request.args.get("partner"):
        partner = leads.partner_by_ref(g.api_org, request.args["partner"])
        if partner is None:
            raise ApiError(404, "not_found", "partner is not one of your partners: name it by id or exact name.")
        partner_id = partner.id
    rows = leads.distributed_by(g.api_org.id, limit=limit, offset=offset, partner_id=partner_id)
    return jsonify({"distributions": [{
        "lead": lead_json(row.lead),
        "partner": {"id": row.lead.organization_id, "name": row.partner_name},
        "acceptance": row.lead.acceptance.value,
        "acceptance_via": row.lead.acceptance_via or None,
        "crm_status": row.lead.crm_status or None,
        "activities": [{"type": a.activity_type, "subject": a.subject, "status": a.status,
                        "priority": a.priority, "due_at": _iso(a.due_at)} for a in row.activities],
        "opportunities": [{"name": o.name, "state": o.state, "estimated_value": _num(o.estimated_value),
                           "actual_value": _num(o.actual_value), "estimated_close": _iso(o.estimated_close)}
                          for o in row.opportunities],
    } for row in rows], "limit": limit, "offset": offset})


@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str):
    """Unknown API addresses answer JSON too."""
    raise ApiError(404, "not_found", f"No API endpoint /api/v1/{rest}.")
