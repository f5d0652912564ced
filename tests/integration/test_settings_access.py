"""Settings: members get 403, other organizations' integrations answer 404 on every route (P2, P3)."""

from __future__ import annotations

import pytest

from ..conftest import PASSWORD


@pytest.fixture
def two_tenants(factory):
    factory.org("Acme Supplier", "supplier")
    acme = factory.org("Acme Partner", "partner", ("Acme Supplier",))
    other = factory.org("Other Partner", "partner", ("Acme Supplier",))
    factory.user("admin@acme.example", "Acme Partner", "admin")
    factory.user("member@acme.example", "Acme Partner", "member")
    factory.user("admin@other.example", "Other Partner", "admin")
    return {"acme": factory.integration(acme), "other": factory.integration(other, password="Other-Secret-1",
                                                                            username="other-user")}


def settings_rules(app):
    """Every route under /settings, with the methods it answers."""
    return [r for r in app.url_map.iter_rules() if r.rule.startswith("/settings")]


def fill(rule, integration_id: int, job_id: str = "0" * 32) -> str:
    values = {"integration_id": integration_id, "job_id": job_id, "run_id": 1, "record_id": 1, "field": "org_url",
              "notice_id": 1, "token_id": 1}
    return rule.build({k: values[k] for k in rule.arguments})[1]


def test_member_gets_403_with_the_guide_message(app, two_tenants, auth, client):
    auth.login("member@acme.example", PASSWORD)
    for rule in settings_rules(app):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(fill(rule, two_tenants["acme"]), method=method,
                               headers={"X-CSRFToken": auth.token("/login")})
            assert resp.status_code == 403, (rule.rule, method)
    page = client.get("/settings/crm")
    assert "Administrative permission is required to access the ZiftONE Settings" in page.text
    assert "contact your supplier's point of contact" in page.text


def test_other_organizations_integration_is_404_on_every_route(app, two_tenants, auth, client):
    auth.login("admin@acme.example", PASSWORD)
    token = auth.token()
    checked = 0
    for rule in settings_rules(app):
        if "integration_id" not in rule.arguments:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = client.open(fill(rule, two_tenants["other"]), method=method,
                               data={"csrf_token": token, "state": "on"}, headers={"X-CSRFToken": token})
            assert resp.status_code == 404, (rule.rule, method, resp.status_code)
            assert "other-user" not in resp.text
            checked += 1
    assert checked >= 1


def test_signed_out_visitors_are_sent_to_sign_in(app, two_tenants, client):
    resp = client.get("/settings/crm")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_job_status_of_another_organization_is_404(app, two_tenants, auth, client):
    from portal.extensions import db
    from portal.models import BackgroundJob, Organization

    with app.app_context():
        other = db.session.query(Organization).filter_by(name="Other Partner").one()
        db.session.add(BackgroundJob(id="f" * 32, kind="health", organization_id=other.id))
        db.session.commit()
    auth.login("admin@acme.example", PASSWORD)
    assert client.get(f"/settings/health/{'f' * 32}").status_code == 404


def test_a_job_id_no_row_can_have_is_a_404_never_a_500(partner_admin, client):
    iid = partner_admin["integration_id"]
    for job_id in ("%00", "a%00b", "x" * 65, "%ff"):
        assert client.get(f"/settings/health/{job_id}").status_code == 404, job_id
        assert client.get(f"/settings/crm/{iid}/tests/{job_id}").status_code == 404, job_id
