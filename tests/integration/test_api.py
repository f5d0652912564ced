"""The JSON API: bearer tokens, tenant isolation, validation, campaigns and distributions (S1, S11, S12, S13)."""

from __future__ import annotations

import re
import uuid

import pytest
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from portal import queues
from portal.extensions import db
from portal.models import CrmIntegration
from portal.platform_models import (
    Acceptance,
    ApiToken,
    Campaign,
    Lead,
    LeadOrigin,
    MarketingEvent,
    OutboxEmail,
    SyncRun,
)


def make_token(app, org_id: int, name: str = "test") -> str:
    from portal import tokens

    with app.app_context():
        return tokens.create_token(org_id, name)[1]


def call(client, method: str, path: str, token: str | None, json=None, data=None, headers=None):
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.open(f"/api/v1{path}", method=method, json=json, data=data, headers=headers)


@pytest.fixture
def tenants(app, factory) -> dict:
    """A supplier with one partner, a partner of another supplier, and a token for each."""
    supplier = factory.org("Acme Supplier", "supplier")
    partner = factory.org("Acme Partner", "partner", ("Acme Supplier",))
    factory.org("Other Supplier", "supplier")
    stranger = factory.org("Other Partner", "partner", ("Other Supplier",))
    factory.user("admin@acme.example", "Acme Partner", "admin")
    factory.user("owner2@acme.example", "Acme Partner", "admin")
    factory.user("member@acme.example", "Acme Partner", "member")
    return {
        "supplier": supplier, "partner": partner, "stranger": stranger,
        "supplier_token": make_token(app, supplier), "partner_token": make_token(app, partner),
        "stranger_token": make_token(app, stranger),
    }


def count(app, model, **where) -> int:
    with app.app_context():
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return db.session.scalar(query)


# -- authentication


def test_missing_wrong_and_revoked_tokens_are_401(app, client, tenants):
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer zpt_not-a-real-token"}):
        resp = client.post("/api/v1/leads", json={"email": "a@example.com"}, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.is_json and resp.json["error"]["code"] == "unauthorized"
        assert "Bearer" in resp.headers["WWW-Authenticate"]
    from portal import tokens

    with app.app_context():
        row = db.session.scalar(select(ApiToken).where(ApiToken.organization_id == tenants["partner"]))
        tokens.revoke(row)
    resp = call(client, "POST", "/leads", tenants["partner_token"], json={"email": "a@example.com"})
    assert resp.status_code == 401 and "revoked" in resp.json["error"]["message"]
    assert count(app, Lead) == 0


def test_a_call_stamps_last_used_and_needs_no_csrf(app, client, tenants):
    app.config["WTF_CSRF_ENABLED"] = True
    resp = call(client, "POST", "/leads", tenants["partner_token"], json={"email": "ann@example.com"})
    assert resp.status_code == 201
    with app.app_context():
        row = db.session.scalar(select(ApiToken).where(ApiToken.organization_id == tenants["partner"]))
        assert row.last_used_at is not None
    assert resp.headers["Cache-Control"] == "no-store"


def test_unknown_endpoint_answers_json_404(client, tenants):
    resp = call(client, "GET", "/nothing/here", tenants["partner_token"])
    assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found"


# -- leads


def test_create_then_update_a_lead_by_email(app, client, tenants):
    token = tenants["partner_token"]
    resp = call(client, "POST", "/leads", token, json={
        "email": "Ann@Example.com", "first_name": "Ann", "company": "Initech", "score": 72,
        "custom_fields": {"Industry": "Retail"},
        "events": [{"type": "email_click", "occurred_at": "2026-11-26T10:00:00Z", "details": "spring offer"}]})
    assert resp.status_code == 201, resp.json
    lead = resp.json
    assert lead["email"] == "Ann@Example.com" and lead["first_name"] == "Ann" and lead["score"] == 72
    assert lead["custom_fields"] == {"Industry": "Retail"} and lead["origin"] == "marketing"
    again = call(client, "POST", "/leads", token, json={"email": "ann@example.com ", "job_title": "Buyer"})
    assert again.status_code == 200 and again.json["id"] == lead["id"]
    assert again.json["job_title"] == "Buyer" and again.json["company"] == "Initech"
    assert count(app, Lead) == 1 and count(app, MarketingEvent, lead_id=lead["id"]) == 1
    got = call(client, "GET", f"/leads/{lead['id']}", token)
    assert got.status_code == 200 and got.json["job_title"] == "Buyer"


def test_add_events_to_a_lead(app, client, tenants):
    token = tenants["partner_token"]
    lead_id = call(client, "POST", "/leads", token, json={"email": "bo@example.com"}).json["id"]
    resp = call(client, "POST", f"/leads/{lead_id}/events", token, json={"events": [
        {"type": "form_submission", "occurred_at": "2026-11-26T10:00:00+01:00"}, {"type": "sms_click"}]})
    assert resp.status_code == 201 and [e["type"] for e in resp.json["events"]] == ["form_submission", "sms_click"]
    as_array = call(client, "POST", f"/leads/{lead_id}/events", token, json=[{"type": "link_conversion"}])
    assert as_array.status_code == 201
    assert count(app, MarketingEvent, lead_id=lead_id) == 3
    empty = call(client, "POST", f"/leads/{lead_id}/events", token, json={"events": []})
    assert empty.status_code == 422


@pytest.mark.parametrize("payload,message", [
    ({"email": "not-an-email"}, "valid email"),
    ({"email": ""}, "valid email"),
    ({"email": 42}, "valid email"),
    ({"first_name": "No Email"}, "valid email"),
    ({"email": "a@example.com", "score": 101}, "from 0 to 100"),
    ({"email": "a@example.com", "score": -1}, "from 0 to 100"),
    ({"email": "a@example.com", "score": "high"}, "whole number"),
    ({"email": "a@example.com", "first_name": "x" * 101}, "too long"),
    ({"email": "a@example.com", "first_name": {"a": 1}}, "must be text"),
    ({"email": "a@example.com", "custom_fields": ["x"]}, "custom_fields"),
    ({"email": "a@example.com", "events": [{"type": "fax_sent"}]}, "Unknown event type"),
    ({"email": "a@example.com", "events": {"type": "email_click"}}, "events must be a list"),
    ({"email": "a@example.com", "events": ["email_click"]}, "Each event must be an object"),
    ({"email": "a@example.com", "events": [{"type": "email_click", "occurred_at": "yesterday"}]}, "ISO 8601"),
    ({"email": "a@example.com", "events": [{"type": "email_click", "occurred_at": "2026-11-26T10:00:00"}]},
     "time zone"),
])
def test_invalid_leads_are_422_and_nothing_is_kept(app, client, tenants, payload, message):
    resp = call(client, "POST", "/leads", tenants["partner_token"], json=payload)
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["code"] == "invalid" and message in resp.json["error"]["message"]
    assert count(app, Lead) == 0 and count(app, MarketingEvent) == 0


@pytest.mark.parametrize("body,content_type", [
    ("{not json", "application/json"), ("", "application/json"), ("email=a@example.com", "text/plain"),
    ('["a list"]', "application/json"), ('"text"', "application/json"),
])
def test_bad_json_is_400_with_a_clear_message(client, tenants, body, content_type):
    resp = call(client, "POST", "/leads", tenants["partner_token"], data=body,
                headers={"Content-Type": content_type})
    assert resp.status_code == 400 and resp.json["error"]["code"] == "bad_json"
    assert "JSON" in resp.json["error"]["message"]


# -- tenant isolation


def test_a_token_never_reads_or_changes_another_organizations_data(app, client, tenants):
    theirs = call(client, "POST", "/leads", tenants["stranger_token"], json={"email": "x@example.com",
                                                                             "company": "Theirs"}).json["id"]
    campaign = call(client, "POST", "/campaigns", tenants["stranger_token"], json={"name": "Theirs"}).json["id"]
    mine = tenants["partner_token"]
    for method, path, payload in (
        ("GET", f"/leads/{theirs}", None),
        ("POST", f"/leads/{theirs}/events", {"events": [{"type": "email_click"}]}),
        ("GET", f"/campaigns/{campaign}", None),
        ("PATCH", f"/campaigns/{campaign}", {"name": "Mine now"}),
    ):
        resp = call(client, method, path, mine, json=payload)
        assert resp.status_code == 404, (method, path)
        assert "Theirs" not in resp.text
    # The same email in my organization is my own lead, not theirs.
    own = call(client, "POST", "/leads", mine, json={"email": "X@example.com"})
    assert own.status_code == 201 and own.json["id"] != theirs and own.json["company"] == ""
    with app.app_context():
        assert db.session.get(Campaign, campaign).name == "Theirs"
        assert db.session.get(Lead, theirs).company == "Theirs"
    assert count(app, MarketingEvent) == 0


# -- campaigns


def test_create_and_patch_a_campaign(app, client, tenants):
    token = tenants["partner_token"]
    resp = call(client, "POST", "/campaigns", token, json={
        "name": "Spring launch", "type_code": 3, "status": "launched", "starts_on": "2026-03-01",
        "ends_on": "2026-04-30T18:00:00Z", "description": "Launch", "objective": "Pipeline", "budget": 2500.5,
        "expected_revenue": "10000", "expected_response": 5, "promotion_code": "SPRING26"})
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["budget"] == "2500.50" and body["expected_revenue"] == "10000.00" and body["type_code"] == 3
    assert body["starts_on"].startswith("2026-03-01T00:00:00")
    patched = call(client, "PATCH", f"/campaigns/{body['id']}", token, json={"status": "completed", "budget": None})
    assert patched.status_code == 200
    assert patched.json["status"] == "completed" and patched.json["budget"] is None
    assert patched.json["name"] == "Spring launch" and patched.json["promotion_code"] == "SPRING26"


@pytest.mark.parametrize("payload,message", [
    ({}, "needs a name"),
    ({"name": "  "}, "needs a name"),
    ({"name": "x", "type_code": 9}, "type_code must be one of"),
    ({"name": "x", "status": "flying"}, "status must be one of"),
    ({"name": "x", "starts_on": "March"}, "must be a date"),
    ({"name": "x", "starts_on": "2026-05-01", "ends_on": "2026-04-01"}, "must not be before"),
    ({"name": "x", "budget": "lots"}, "must be an amount"),
    ({"name": "x", "budget": -5}, "from 0"),
    ({"name": "x", "expected_response": 1.5}, "whole number"),
    ({"name": "x", "colour": "blue"}, "Unknown field 'colour'"),
])
def test_invalid_campaigns_are_422(app, client, tenants, payload, message):
    resp = call(client, "POST", "/campaigns", tenants["partner_token"], json=payload)
    assert resp.status_code == 422 and message in resp.json["error"]["message"], resp.json
    assert count(app, Campaign) == 0


def test_patch_checks_dates_against_the_saved_ones(client, tenants):
    token = tenants["partner_token"]
    cid = call(client, "POST", "/campaigns", token, json={"name": "x", "starts_on": "2026-05-01"}).json["id"]
    resp = call(client, "PATCH", f"/campaigns/{cid}", token, json={"ends_on": "2026-04-01"})
    assert resp.status_code == 422 and "must not be before" in resp.json["error"]["message"]


# -- distributions


def test_only_suppliers_distribute(app, client, tenants):
    for path in ("/distributions",):
        resp = call(client, "POST", path, tenants["partner_token"],
                    json={"partner": "Acme Partner", "lead": {"email": "a@example.com"}})
        assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden"
        assert call(client, "GET", path, tenants["partner_token"]).status_code == 403
    assert count(app, Lead) == 0


@pytest.mark.parametrize("partner", ["Other Partner", "No Such Partner", None, ""])
def test_distribution_to_a_partner_not_linked_is_refused(app, client, tenants, partner):
    resp = call(client, "POST", "/distributions", tenants["supplier_token"],
                json={"partner": partner, "lead": {"email": "a@example.com"}})
    assert resp.status_code == 422 and "not one of your partners" in resp.json["error"]["message"]
    by_id = call(client, "POST", "/distributions", tenants["supplier_token"],
                 json={"partner": tenants["stranger"], "lead": {"email": "a@example.com"}})
    assert by_id.status_code == 422
    assert count(app, Lead) == 0 and count(app, OutboxEmail) == 0


def test_distribution_needs_a_lead_object_and_a_valid_lead(app, client, tenants):
    token = tenants["supplier_token"]
    assert call(client, "POST", "/distributions", token, json={"partner": "Acme Partner"}).status_code == 422
    bad = call(client, "POST", "/distributions", token,
               json={"partner": "Acme Partner", "lead": {"email": "a@example.com", "events": [{"type": "nope"}]}})
    assert bad.status_code == 422 and "Unknown event type" in bad.json["error"]["message"]
    assert count(app, Lead) == 0 and count(app, OutboxEmail) == 0


def test_distribution_end_to_end_through_the_email_link(app, client, tenants):
    resp = call(client, "POST", "/distributions", tenants["supplier_token"], json={
        "partner": "Acme Partner",
        "lead": {"email": "dana@example.com", "first_name": "Dana", "last_name": "Reed", "company": "Globex",
                 "events": [{"type": "supplier_event", "occurred_at": "2026-11-26T10:00:00Z"}]}})
    assert resp.status_code == 201, resp.json
    assert resp.json["acceptance"] == "pending" and resp.json["partner"]["name"] == "Acme Partner"
    lead_id = resp.json["lead"]["id"]
    with app.app_context():
        lead = db.session.get(Lead, lead_id)
        assert lead.organization_id == tenants["partner"] and lead.supplier_id == tenants["supplier"]
        assert lead.origin == LeadOrigin.distributed and lead.acceptance == Acceptance.pending
        mail = db.session.scalar(select(OutboxEmail))
        assert mail.organization_id == tenants["partner"]
        assert set(mail.to.split(", ")) == {"admin@acme.example", "owner2@acme.example"}  # admins, not members
        assert "Dana Reed" in mail.body and "Acme Supplier" in mail.subject
    links = dict(re.findall(r"(Accept|Reject) it: (\S+)", mail.body))
    accept = links["Accept"].replace("http://localhost", "")
    assert accept.endswith("/accept") and links["Reject"].endswith("/reject")
    # Nothing configured to push: no run is queued.
    assert count(app, SyncRun) == 0

    listed = call(client, "GET", "/distributions", tenants["supplier_token"]).json["distributions"]
    assert [(d["lead"]["id"], d["acceptance"], d["partner"]["name"]) for d in listed] == [
        (lead_id, "pending", "Acme Partner")]

    page = client.get(accept)  # no sign-in: the token is the credential
    assert page.status_code == 200 and "Dana Reed" in page.text
    with app.app_context():
        assert db.session.get(Lead, lead_id).acceptance == Acceptance.pending  # GET changes nothing
    from ..conftest import csrf_from

    done = client.post(accept, data={"csrf_token": csrf_from(page.text)})
    assert done.status_code == 200 and "data-done" in done.text
    listed = call(client, "GET", "/distributions", tenants["supplier_token"]).json["distributions"]
    assert listed[0]["acceptance"] == "accepted" and listed[0]["acceptance_via"] == "email"
    # The partner's token sees the lead as its own, accepted.
    own = call(client, "GET", f"/leads/{lead_id}", tenants["partner_token"]).json
    assert own["acceptance"] == "accepted" and own["origin"] == "distributed"
    # The supplier's token does not read the partner's lead directly.
    assert call(client, "GET", f"/leads/{lead_id}", tenants["supplier_token"]).status_code == 404


def test_distribution_by_partner_id_lists_activities_and_opportunities(app, client, tenants):
    from portal.platform_models import CrmActivity, Opportunity

    resp = call(client, "POST", "/distributions", tenants["supplier_token"],
                json={"partner": tenants["partner"], "lead": {"email": "eve@example.com"}})
    assert resp.status_code == 201
    lead_id = resp.json["lead"]["id"]
    with app.app_context():
        db.session.add(CrmActivity(organization_id=tenants["partner"], lead_id=lead_id, crm_id=str(uuid.uuid4()),
                                   activity_type="phonecall", subject="Intro call", status="Completed",
                                   priority="High"))
        db.session.add(Opportunity(organization_id=tenants["partner"], lead_id=lead_id, crm_id=str(uuid.uuid4()),
                                   name="Globex renewal", state="Won", estimated_value=1200))
        lead = db.session.get(Lead, lead_id)
        lead.crm_status = "Qualified"
        db.session.commit()
    row = call(client, "GET", "/distributions?limit=10", tenants["supplier_token"]).json["distributions"][0]
    assert row["crm_status"] == "Qualified"
    assert row["activities"][0]["subject"] == "Intro call" and row["activities"][0]["priority"] == "High"
    assert row["opportunities"][0]["name"] == "Globex renewal" and row["opportunities"][0]["state"] == "Won"
    assert call(client, "GET", "/distributions?limit=0", tenants["supplier_token"]).status_code == 400
    only = call(client, "GET", f"/distributions?partner={tenants['partner']}", tenants["supplier_token"])
    assert len(only.json["distributions"]) == 1
    assert call(client, "GET", "/distributions?partner=Other Partner", tenants["supplier_token"]).status_code == 404


def test_distribution_queues_a_push_when_lead_distribution_is_on(app, client, tenants, factory):
    integration_id = factory.integration(tenants["partner"], enabled=True, lead_distribution=True,
                                         ld_sync_supplier_leads=True)
    resp = call(client, "POST", "/distributions", tenants["supplier_token"],
                json={"partner": "Acme Partner", "lead": {"email": "fay@example.com"}})
    assert resp.status_code == 201
    with app.app_context():
        run = db.session.scalar(select(SyncRun).where(SyncRun.integration_id == integration_id))
        assert run.kind == "push" and run.job_id
        assert run.job_id in queues.queue(queues.QUEUE_PUSH).job_ids


def test_pushed_lead_appears_in_the_sandbox_crm(app, client, factory, connected):
    from tests.integration.sync_helpers import PLATFORM_OPTION

    crm = connected["crm"]
    with app.app_context():
        integ = db.session.get(CrmIntegration, connected["integration_id"])
        integ.enabled, integ.lead_distribution, integ.ld_sync_supplier_leads = True, True, True
        integ.lead_source_value = PLATFORM_OPTION
        supplier_id = integ.organization.suppliers[0].id
        db.session.commit()
    token = make_token(app, supplier_id)
    email = f"push-{uuid.uuid4().hex[:10]}@example.net"
    resp = call(client, "POST", "/distributions", token, json={
        "partner": "Acme Partner", "lead": {"email": email, "first_name": "Gil", "last_name": "Park",
                                            "company": "Umbrella"}})
    assert resp.status_code == 201
    with app.app_context():
        SimpleWorker([Queue(queues.QUEUE_PUSH, connection=queues.redis())],
                     connection=queues.redis()).work(burst=True)
        run = db.session.scalar(select(SyncRun).where(SyncRun.kind == "push"))
        assert run.status.value == "finished", run.message
    records = crm.records("lead", email=email)
    assert len(records) == 1 and records[0].get("lastname") == "Park"


@pytest.mark.parametrize("ref", [99999999999999999999, "99999999999999999999", "\u00b2", "9" * 5000])
def test_a_partner_reference_no_row_can_have_is_no_partner(app, client, tenants, ref):
    headers = {"Authorization": f"Bearer {tenants['supplier_token']}"}
    resp = client.post("/api/v1/distributions", headers=headers,
                       json={"partner": ref, "lead": {"email": "a@b.example"}})
    assert 400 <= resp.status_code < 500
    assert client.get("/api/v1/distributions", headers=headers, query_string={"partner": str(ref)}).status_code < 500
