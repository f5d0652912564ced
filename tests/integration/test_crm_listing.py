"""The CRM Settings listing and the On/Off rules (L1–L3)."""

from __future__ import annotations

from datetime import UTC, datetime

from portal.extensions import db
from portal.models import AuditLog, CrmIntegration


def toggle(client, auth, integration_id: int, state: str, htmx: bool):
    token = auth.token()
    headers = {"HX-Request": "true", "X-CSRFToken": token} if htmx else {}
    return client.post(f"/settings/crm/{integration_id}/toggle", data={"state": state, "csrf_token": token},
                       headers=headers)


def test_listing_shows_the_dynamics_row(partner_admin, client):
    page = client.get("/settings/crm")
    assert page.status_code == 200
    assert "Microsoft Dynamics CRM (on-premises, 2011 and later)" in page.text
    assert 'data-state="Off"' in page.text
    assert "Edit Settings" in page.text
    assert "Not tested yet" in page.text


def test_switching_on_is_refused_until_settings_are_saved(partner_admin, client, auth):
    resp = toggle(client, auth, partner_admin["integration_id"], "on", htmx=True)
    assert resp.status_code == 409
    assert "Save the CRM Connection Settings first" in resp.text
    assert 'data-state="Off"' in resp.text
    assert 'hx-swap-oob="true"' in resp.text  # the reason arrives in the flash area too


def _saved_and_tested(app, integration_id: int, ok: bool) -> None:
    from portal.crypto import encrypt

    with app.app_context():
        integ = db.session.get(CrmIntegration, integration_id)
        integ.username, integ.org_url = "crmadmin", "http://127.0.0.1:1/demo/XRMServices/2011/Organization.svc/web"
        integ.password_encrypted = encrypt("Pass-word-1")
        integ.last_test_ok, integ.last_test_at = ok, datetime.now(UTC)
        integ.last_test_fingerprint = integ.connection_fingerprint()
        db.session.commit()


def test_switching_on_is_refused_after_a_failed_test(app, partner_admin, client, auth):
    _saved_and_tested(app, partner_admin["integration_id"], ok=False)
    resp = toggle(client, auth, partner_admin["integration_id"], "on", htmx=True)
    assert resp.status_code == 409 and "The last connection test failed" in resp.text


def test_switch_on_and_off_with_htmx_and_without(app, factory, partner_admin, client, auth):
    integration_id = partner_admin["integration_id"]
    _saved_and_tested(app, integration_id, ok=True)
    factory.profile(integration_id)
    resp = toggle(client, auth, integration_id, "on", htmx=True)
    assert resp.status_code == 200 and 'data-state="On"' in resp.text
    assert resp.text.lstrip().startswith("<tbody")  # a fragment, not a page
    resp = toggle(client, auth, integration_id, "off", htmx=False)
    assert resp.status_code == 302  # Post/Redirect/Get without JavaScript
    page = client.get(resp.headers["Location"])
    assert 'data-state="Off"' in page.text and "is Off." in page.text
    with app.app_context():
        actions = [a.action for a in db.session.query(AuditLog).order_by(AuditLog.id)]
        assert actions == ["switched on", "switched off"]


def test_switching_on_is_refused_until_general_settings_and_a_usage_profile_are_saved(app, factory, partner_admin,
                                                                                   client, auth):
    integration_id = partner_admin["integration_id"]
    _saved_and_tested(app, integration_id, ok=True)
    resp = toggle(client, auth, integration_id, "on", htmx=True)
    assert resp.status_code == 409 and "Save General Settings and the Usage Profile first" in resp.text
    assert 'data-missing="general"' in resp.text and 'data-missing="usage"' in resp.text
    factory.profile(integration_id)
    assert toggle(client, auth, integration_id, "on", htmx=True).status_code == 200


def test_changed_connection_settings_need_a_new_test(app, partner_admin, client, auth):
    integration_id = partner_admin["integration_id"]
    _saved_and_tested(app, integration_id, ok=True)
    with app.app_context():
        db.session.get(CrmIntegration, integration_id).domain = "NEWDOMAIN"
        db.session.commit()
    resp = toggle(client, auth, integration_id, "on", htmx=True)
    assert resp.status_code == 409 and "changed since the last passing test" in resp.text


def test_banner_under_the_row(app, partner_admin, client):
    with app.app_context():
        integ = db.session.get(CrmIntegration, partner_admin["integration_id"])
        integ.set_error("auth_failed", "The CRM refused the user name or password.",
                        "Check the user name, password and domain in CRM Connection Settings.")
        db.session.commit()
    page = client.get("/settings/crm").text
    assert 'data-state="Error"' in page
    assert 'data-code="auth_failed"' in page
    assert "What to do: Check the user name, password and domain" in page


def test_first_visit_creates_and_keeps_the_integration_row(app, factory, auth, client):
    factory.org("Fresh Partner")
    factory.user("new@fresh.example", "Fresh Partner", "admin")
    auth.login("new@fresh.example")
    assert client.get("/settings/crm").status_code == 200
    with app.app_context():
        assert db.session.query(CrmIntegration).count() == 1
