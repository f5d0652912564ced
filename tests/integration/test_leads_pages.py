"""Lead pages: the partner's Accept/Reject, the supplier's Distribute and Distributed pages, the email link, the
outbox (S12, S13, P3)."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.platform_models import Acceptance, CrmActivity, Lead, LeadOrigin, Opportunity, OutboxEmail

from ..conftest import PASSWORD, count_statements, csrf_from


@pytest.fixture
def orgs(factory) -> dict:
    """A supplier with two partners, and a stranger partner of another supplier; admins and a member."""
    supplier = factory.org("Acme Supplier", "supplier")
    partner = factory.org("Acme Partner", "partner", ("Acme Supplier",))
    second = factory.org("Beta Partner", "partner", ("Acme Supplier",))
    factory.org("Other Supplier", "supplier")
    stranger = factory.org("Other Partner", "partner", ("Other Supplier",))
    factory.user("admin@supplier.example", "Acme Supplier", "admin")
    factory.user("member@supplier.example", "Acme Supplier", "member")
    factory.user("admin@acme.example", "Acme Partner", "admin")
    factory.user("member@acme.example", "Acme Partner", "member")
    factory.user("admin@other.example", "Other Partner", "admin")
    return {"supplier": supplier, "partner": partner, "second": second, "stranger": stranger}


def distribute(app, supplier: int, partner: int, email: str, **fields) -> int:
    from portal import leads
    from portal.models import Organization

    with app.app_context(), app.test_request_context():
        lead = leads.distribute_lead(db.session.get(Organization, supplier), db.session.get(Organization, partner),
                                     {"email": email, **fields})
        return lead.id


def lead_row(app, lead_id: int) -> Lead:
    with app.app_context():
        row = db.session.get(Lead, lead_id)
        db.session.expunge(row)
        return row


def switch_user(client, auth, email: str) -> None:
    client.post("/logout", data={"csrf_token": auth.token("/login")})
    assert auth.login(email, PASSWORD).status_code == 302


# -- the supplier distributes


def test_distribute_form_offers_only_own_partners(app, orgs, client, auth):
    auth.login("admin@supplier.example")
    page = client.get("/leads/distribute")
    assert page.status_code == 200
    assert "Acme Partner" in page.text and "Beta Partner" in page.text and "Other Partner" not in page.text
    token = csrf_from(page.text)
    resp = client.post("/leads/distribute", data={"csrf_token": token, "partner_id": orgs["stranger"],
                                                  "email": "a@example.com"})
    assert resp.status_code == 422 and "Not a valid choice" in resp.text
    with app.app_context():
        assert db.session.scalar(select(Lead)) is None


def test_invalid_distribution_is_422_with_errors_by_the_fields_and_nothing_lost(app, orgs, client, auth):
    auth.login("admin@supplier.example")
    token = auth.token("/leads/distribute")
    data = {"csrf_token": token, "partner_id": orgs["partner"], "email": "not-an-email", "first_name": "Hana",
            "company": "Initech", "score": "150"}
    for headers in ({}, {"HX-Request": "true", "X-CSRFToken": token}):
        resp = client.post("/leads/distribute", data=data, headers=headers)
        assert resp.status_code == 422
        assert 'data-error-for="email"' in resp.text and 'data-error-for="score"' in resp.text
        assert 'value="Hana"' in resp.text and 'value="Initech"' in resp.text and 'value="not-an-email"' in resp.text
        assert ("<html" in resp.text) is not bool(headers)
    with app.app_context():
        assert db.session.scalar(select(Lead)) is None and db.session.scalar(select(OutboxEmail)) is None


def test_distribute_without_javascript_then_see_it_listed(app, orgs, client, auth):
    auth.login("admin@supplier.example")
    token = auth.token("/leads/distribute")
    resp = client.post("/leads/distribute", data={
        "csrf_token": token, "partner_id": orgs["partner"], "email": "ivy@example.com", "first_name": "Ivy",
        "last_name": "Stone", "company": "Hooli", "score": "60"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/leads/distributed")
    page = client.get("/leads/distributed")
    assert "Ivy Stone" in page.text and "was sent to Acme Partner" in page.text
    assert 'data-acceptance="pending"' in page.text
    with app.app_context():
        lead = db.session.scalar(select(Lead))
        assert lead.organization_id == orgs["partner"] and lead.score == 60 and lead.origin == LeadOrigin.distributed
        assert db.session.scalar(select(OutboxEmail)).to == "admin@acme.example"


def test_distribute_with_htmx_returns_a_fresh_form(app, orgs, client, auth):
    auth.login("member@supplier.example")  # lead pages are for every user of the organization
    token = auth.token("/leads/distribute")
    resp = client.post("/leads/distribute", data={"csrf_token": token, "partner_id": orgs["second"],
                                                  "email": "jo@example.com"},
                       headers={"HX-Request": "true", "X-CSRFToken": token})
    assert resp.status_code == 200 and "data-sent=" in resp.text and 'value="jo@example.com"' not in resp.text
    assert re.search(rf'<option selected value="{orgs["second"]}">|value="{orgs["second"]}" selected', resp.text)
    assert 'hx-swap-oob="true"' in resp.text


def test_partners_do_not_reach_supplier_pages(orgs, client, auth):
    auth.login("admin@acme.example")
    assert client.get("/leads/distribute").status_code == 404
    assert client.get("/leads/distributed").status_code == 404


# -- the partner accepts or rejects


def test_partner_lists_distributed_leads_first_and_accepts_with_htmx(app, orgs, client, auth):
    from portal import leads
    from portal.models import Organization

    with app.app_context():
        leads.upsert_lead(db.session.get(Organization, orgs["partner"]), {"email": "own@example.com"},
                          LeadOrigin.marketing)
        db.session.commit()
    lead_id = distribute(app, orgs["supplier"], orgs["partner"], "kim@example.com", first_name="Kim")
    auth.login("member@acme.example")
    page = client.get("/leads")
    assert page.status_code == 200 and "We recommend choosing one of these places to manage leads" in page.text
    assert page.text.index("Kim") < page.text.index("own@example.com")
    assert "Acme Supplier" in page.text
    token = csrf_from(page.text)
    resp = client.post(f"/leads/{lead_id}/accept", headers={"HX-Request": "true", "X-CSRFToken": token})
    assert resp.status_code == 200 and resp.text.lstrip().startswith(("{#", "<tbody"))
    assert f'id="lead-{lead_id}"' in resp.text and 'data-acceptance="accepted"' in resp.text
    assert 'data-via="portal"' in resp.text and 'data-answer="accept"' not in resp.text
    row = lead_row(app, lead_id)
    assert row.acceptance == Acceptance.accepted and row.acceptance_via == "portal"


def test_partner_rejects_without_javascript_and_supplier_sees_it(app, orgs, client, auth):
    lead_id = distribute(app, orgs["supplier"], orgs["partner"], "lee@example.com", first_name="Lee")
    auth.login("admin@acme.example")
    token = auth.token("/leads")
    resp = client.post(f"/leads/{lead_id}/reject", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/leads")
    assert "Lee is rejected" in client.get("/leads").text
    assert lead_row(app, lead_id).acceptance == Acceptance.rejected
    switch_user(client, auth, "admin@supplier.example")
    page = client.get("/leads/distributed").text
    assert 'data-state="rejected"' in page and 'data-via="portal"' in page


def test_accept_needs_csrf_and_own_lead(app, orgs, client, auth):
    mine = distribute(app, orgs["supplier"], orgs["partner"], "mo@example.com")
    auth.login("admin@other.example")
    token = auth.token("/leads")
    assert client.post(f"/leads/{mine}/accept", data={"csrf_token": token}).status_code == 404
    switch_user(client, auth, "admin@acme.example")
    assert client.post(f"/leads/{mine}/accept", data={}).status_code == 400
    assert lead_row(app, mine).acceptance == Acceptance.pending
    assert client.post(f"/leads/{mine}/maybe", data={"csrf_token": auth.token("/leads")}).status_code == 404


def test_supplier_leads_page_goes_to_distributed(orgs, client, auth):
    auth.login("admin@supplier.example")
    resp = client.get("/leads")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/leads/distributed")


# -- the email link


def test_email_link_confirms_then_accepts_and_shows_everywhere(app, orgs, client, auth):
    lead_id = distribute(app, orgs["supplier"], orgs["partner"], "nia@example.com", first_name="Nia")
    with app.app_context():
        body = db.session.scalar(select(OutboxEmail)).body
    accept = re.search(r"Accept it: (\S+)", body).group(1).replace("http://localhost", "")
    page = client.get(accept)
    assert page.status_code == 200 and "Accept this lead?" in page.text
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert lead_row(app, lead_id).acceptance == Acceptance.pending
    assert client.post(accept, data={}).status_code == 400  # CSRF required
    done = client.post(accept, data={"csrf_token": csrf_from(page.text)})
    assert done.status_code == 200 and "This lead is accepted" in done.text
    row = lead_row(app, lead_id)
    assert row.acceptance == Acceptance.accepted and row.acceptance_via == "email"

    auth.login("admin@acme.example")
    partner_page = client.get("/leads").text
    assert 'data-acceptance="accepted"' in partner_page and 'data-via="email"' in partner_page
    switch_user(client, auth, "admin@supplier.example")
    supplier_page = client.get("/leads/distributed").text
    assert 'data-state="accepted"' in supplier_page and "via email" in supplier_page


@pytest.mark.parametrize("path", ["/leads/respond/not-a-token/accept", "/leads/respond/{token}/maybe"])
def test_email_link_with_a_bad_token_or_answer_is_404(app, orgs, client, path):
    distribute(app, orgs["supplier"], orgs["partner"], "oz@example.com")
    with app.app_context():
        token = db.session.scalar(select(Lead.accept_token))
    assert client.get(path.format(token=token)).status_code == 404
    csrf = csrf_from(client.get("/login").text)
    assert client.post(path.format(token=token), data={"csrf_token": csrf}).status_code == 404


# -- the outbox


def test_outbox_lists_only_own_organizations_emails(app, orgs, client, auth):
    distribute(app, orgs["supplier"], orgs["partner"], "pat@example.com", first_name="Pat")
    distribute(app, orgs["supplier"], orgs["second"], "quinn@example.com", first_name="Quinn")
    auth.login("admin@acme.example")
    page = client.get("/outbox")
    assert page.status_code == 200 and "data-no-smtp" in page.text
    assert "Pat" in page.text and "Quinn" not in page.text and "admin@acme.example" in page.text
    assert 'href="http://localhost/leads/respond/' in page.text  # the links are followable in the demo
    switch_user(client, auth, "member@acme.example")
    assert client.get("/outbox").status_code == 403


# -- the Distributed page stays at a fixed number of queries


def test_distributed_page_has_no_n_plus_one(app, orgs, client, auth):
    auth.login("admin@supplier.example")

    def add(n: int) -> None:
        for _ in range(n):
            lead_id = distribute(app, orgs["supplier"], orgs["partner"], f"{uuid.uuid4().hex[:8]}@example.com")
            with app.app_context():
                for k in range(2):
                    db.session.add(CrmActivity(organization_id=orgs["partner"], lead_id=lead_id,
                                               crm_id=str(uuid.uuid4()), subject=f"Call {k}"))
                db.session.add(Opportunity(organization_id=orgs["partner"], lead_id=lead_id,
                                           crm_id=str(uuid.uuid4()), name="Deal"))
                db.session.commit()

    add(1)
    with count_statements(app) as few:
        assert client.get("/leads/distributed").status_code == 200
    add(9)
    with count_statements(app) as many:
        page = client.get("/leads/distributed")
    assert page.text.count("data-activity") == 20 and page.text.count("data-opportunity") == 10
    assert len(many) == len(few) <= 5, many  # user, leads with partners, activities, opportunities
    switch_user(client, auth, "admin@acme.example")
    with count_statements(app) as partner:
        assert client.get("/leads").status_code == 200
    assert len(partner) <= 3, partner  # user, leads with suppliers
