"""Edit Settings: the four forms, their validation and the dependencies between options (G1–G4)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import render_template

from portal.extensions import db
from portal.models import AuditLog, CrmIntegration, Organization

WEB = "http://127.0.0.1:5555/demo/XRMServices/2011/Organization.svc/web"


def post(client, auth, integration_id, section, data, htmx=True):
    token = auth.token(f"/settings/crm/{integration_id}/edit")
    data = {f"{section}-{k}" if k not in ("action",) else k: v for k, v in data.items()}
    data[f"{section}-csrf_token"] = token
    headers = {"HX-Request": "true", "X-CSRFToken": token} if htmx else {}
    return client.post(f"/settings/crm/{integration_id}/{section}", data=data, headers=headers)


def integ(app, integration_id) -> CrmIntegration:
    with app.app_context():
        row = db.session.get(CrmIntegration, integration_id)
        db.session.expunge(row)
        return row


def test_page_shows_four_sections_with_defaults(partner_admin, client):
    page = client.get(f"/settings/crm/{partner_admin['integration_id']}/edit")
    assert page.status_code == 200
    for title in ("General Settings", "CRM Connection Settings", "Usage Profile", "Advanced General Options",
                  "Advanced Marketing Automation Options", "Advanced Lead Distribution Options"):
        assert title in page.text
    assert 'value="50"' in page.text  # the default threshold
    assert "Developer Resources" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert 'hx-history="false"' in page.text


def test_general_supplier_limited_to_the_partners_suppliers(app, partner_admin, factory, client, auth):
    foreign = factory.org("Foreign Supplier", "supplier")
    iid = partner_admin["integration_id"]
    page = client.get(f"/settings/crm/{iid}/edit").text
    assert "Acme Supplier" in page and "Foreign Supplier" not in page
    bad = post(client, auth, iid, "general", {"supplier_id": foreign, "record_leads_as": "lead"})
    assert bad.status_code == 422
    assert "Not a valid choice" in bad.text or "Choose one of your suppliers" in bad.text
    with app.app_context():
        acme = db.session.execute(db.text("SELECT id FROM organizations WHERE name='Acme Supplier'")).scalar()
    ok = post(client, auth, iid, "general", {"supplier_id": acme, "record_leads_as": "contact"})
    assert ok.status_code == 200 and 'data-saved="general"' in ok.text
    saved = integ(app, iid)
    assert saved.supplier_id == acme and saved.record_leads_as == "contact"
    # The Usage Profile is refreshed out of band: Pull Contacts is no longer offered (S10).
    assert 'id="usage"' in ok.text and 'data-not-offered="ma_pull_contacts"' in ok.text


def test_connection_requires_web_suffix_and_http(partner_admin, client, auth, app):
    iid = partner_admin["integration_id"]
    resp = post(client, auth, iid, "connection", {"username": "crmadmin", "password": "Pass-1234",
                                                  "org_url": WEB[:-4], "domain": "SANDBOX", "action": "save"})
    assert resp.status_code == 422 and "must end with /web" in resp.text
    assert 'value="crmadmin"' in resp.text  # what the user typed stays
    assert "Pass-1234" not in resp.text  # but never the password
    resp = post(client, auth, iid, "connection", {"username": "crmadmin", "password": "Pass-1234",
                                                  "org_url": "ftp://127.0.0.1/x/web", "action": "save"})
    assert resp.status_code == 422 and "must start with http:// or https://" in resp.text
    assert not integ(app, iid).org_url


def test_connection_blocked_by_the_url_guard(partner_admin, client, auth, app):
    app.config["CRM_ALLOWED_NETWORKS"] = ""
    resp = post(client, auth, partner_admin["integration_id"], "connection",
                {"username": "u", "password": "Pass-1234", "org_url": WEB, "action": "save"})
    assert resp.status_code == 422 and "loopback" in resp.text.lower()


def test_password_is_write_only_and_kept_when_empty(partner_admin, client, auth, app):
    iid = partner_admin["integration_id"]
    first = post(client, auth, iid, "connection", {"username": "crmadmin", "password": "First-Secret-1",
                                                   "org_url": WEB, "domain": "SANDBOX", "action": "save"})
    assert first.status_code == 200 and "First-Secret-1" not in first.text
    stored = integ(app, iid).password_encrypted
    page = client.get(f"/settings/crm/{iid}/edit").text
    assert "First-Secret-1" not in page and stored not in page and 'data-password-state="saved"' in page
    again = post(client, auth, iid, "connection", {"username": "crmadmin", "password": "",
                                                   "org_url": WEB, "domain": "OTHER", "action": "save"})
    assert again.status_code == 200
    assert integ(app, iid).password_encrypted == stored
    post(client, auth, iid, "connection", {"username": "crmadmin", "password": "Second-Secret-2",
                                           "org_url": WEB, "domain": "OTHER", "action": "save"})
    assert integ(app, iid).password_encrypted != stored
    with app.app_context():
        rows = db.session.query(AuditLog).order_by(AuditLog.id).all()
        assert ["password" in r.fields for r in rows] == [True, False, True]
        assert all("Secret" not in r.fields_json for r in rows)


def test_password_needed_the_first_time(partner_admin, client, auth):
    resp = post(client, auth, partner_admin["integration_id"], "connection",
                {"username": "crmadmin", "password": "", "org_url": WEB, "action": "save"})
    assert resp.status_code == 422 and "Enter the CRM password" in resp.text


@pytest.mark.parametrize("value,message", [("101", "from 0 to 100"), ("-1", "from 0 to 100"),
                                           ("abc", "from 0 to 100"), ("", "from 0 to 100")])
def test_threshold_is_a_whole_number_from_0_to_100(partner_admin, client, auth, value, message, app):
    resp = post(client, auth, partner_admin["integration_id"], "usage",
                {"marketing_automation": "y", "ma_score_threshold": value})
    assert resp.status_code == 422 and message in resp.text
    assert integ(app, partner_admin["integration_id"]).ma_score_threshold == 50


def test_usage_profile_saves_every_option(partner_admin, client, auth, app):
    iid = partner_admin["integration_id"]
    resp = post(client, auth, iid, "usage", {
        "marketing_automation": "y", "ma_pull_contacts": "y", "ma_score_threshold": "70",
        "ma_allow_field_updates": "y", "lead_distribution": "y", "ld_sync_supplier_leads": "y",
        "ld_custom_fields_in_notes": "y"})
    assert resp.status_code == 200 and 'data-saved="usage"' in resp.text
    row = integ(app, iid)
    assert (row.marketing_automation, row.ma_pull_contacts, row.ma_score_threshold) == (True, True, 70)
    assert (row.ma_sync_leads, row.ma_pull_opportunities, row.ma_allow_field_updates) == (False, False, True)
    assert (row.lead_distribution, row.ld_sync_supplier_leads, row.ld_custom_fields_in_notes) == (True, True, True)


def test_pull_contacts_refused_when_leads_are_recorded_as_contacts(partner_admin, client, auth, app, factory):
    iid = factory.integration(partner_admin["org_id"], record_leads_as="contact")
    resp = post(client, auth, iid, "usage", {"marketing_automation": "y", "ma_pull_contacts": "y",
                                             "ma_score_threshold": "50"})
    assert resp.status_code == 422 and "not available while new leads are recorded as contacts" in resp.text
    assert integ(app, iid).ma_pull_contacts is False


def test_advanced_options(partner_admin, client, auth, app):
    iid = partner_admin["integration_id"]
    resp = post(client, auth, iid, "advanced", {"event_types": ["email_open", "sms_click"],
                                                "create_campaigns": "y", "campaign_data_level": "everything"})
    assert resp.status_code == 422 and "Not a valid choice" in resp.text
    assert integ(app, iid).event_types != ["email_open", "sms_click"]  # nothing saved from an invalid form
    resp = post(client, auth, iid, "advanced", {"event_types": ["email_open", "sms_click"], "create_campaigns": "y",
                                                "campaign_data_level": "full"})
    assert resp.status_code == 200
    row = integ(app, iid)
    assert row.event_types == ["email_open", "sms_click"] and row.create_campaigns
    assert row.campaign_data_level == "full"
    resp = post(client, auth, iid, "advanced", {"event_types": ["bogus"]})
    assert resp.status_code == 422
    # Campaigns off: the data level is not offered, and the saved level is kept for later.
    resp = post(client, auth, iid, "advanced", {"event_types": ["email_open"]})
    assert resp.status_code == 200
    row = integ(app, iid)
    assert not row.create_campaigns and row.campaign_data_level == "full"


def test_without_javascript_a_section_saves_with_post_redirect_get(partner_admin, client, auth, app):
    iid = partner_admin["integration_id"]
    resp = post(client, auth, iid, "usage", {"lead_distribution": "y", "ma_score_threshold": "55"}, htmx=False)
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/settings/crm/{iid}/edit#usage")
    assert "Usage Profile saved." in client.get(resp.headers["Location"]).text
    bad = post(client, auth, iid, "usage", {"ma_score_threshold": "500"}, htmx=False)
    assert bad.status_code == 422 and "<html" in bad.text and "from 0 to 100" in bad.text


def test_inline_url_feedback_offers_to_append_web(partner_admin, client, auth):
    iid = partner_admin["integration_id"]
    token = auth.token(f"/settings/crm/{iid}/edit")
    headers = {"HX-Request": "true", "X-CSRFToken": token}
    resp = client.post(f"/settings/crm/{iid}/validate/org_url", data={"connection-org_url": WEB[:-4]},
                       headers=headers)
    assert "must end with /web" in resp.text and "data-append-web" in resp.text
    resp = client.post(f"/settings/crm/{iid}/validate/org_url",
                       data={"connection-org_url": WEB[:-4], "append_web": "1"}, headers=headers)
    assert f'value="{WEB}"' in resp.text and "Appended /web" in resp.text
    resp = client.post(f"/settings/crm/{iid}/validate/odata_url",
                       data={"connection-odata_url": "gopher://127.0.0.1/"}, headers=headers)
    assert "must start with http://" in resp.text


def _input_attributes(html: str, input_id: str) -> dict[str, str | None]:
    """The attributes of the page's input of that id."""
    found: list[dict] = []

    class Inputs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "input" and dict(attrs).get("id") == input_id:
                found.append({name: value or "" for name, value in attrs})

    Inputs().feed(html)
    assert len(found) == 1, found
    return found[0]


def test_the_field_sent_back_by_append_web_is_the_page_s_field(partner_admin, client, auth):
    """After Append /web the field is swapped for one with its new value: it keeps every limit and check of the
    page's own (its maxlength among them), so nothing longer can be typed in it than in the field it replaced."""
    iid = partner_admin["integration_id"]
    page = client.get(f"/settings/crm/{iid}/edit").text
    headers = {"HX-Request": "true", "X-CSRFToken": auth.token(f"/settings/crm/{iid}/edit")}
    resp = client.post(f"/settings/crm/{iid}/validate/org_url",
                       data={"connection-org_url": WEB[:-4], "append_web": "1"}, headers=headers)
    drawn = _input_attributes(page, "connection-org_url")
    sent = _input_attributes(resp.text, "connection-org_url")
    assert sent.pop("value") == WEB and sent.pop("data-validated") == WEB
    assert sent.pop("data-focus") == ""
    drawn.pop("value", None)
    assert drawn["maxlength"] == "500" and sent == drawn


def test_a_url_longer_than_its_field_takes_is_refused_inline_and_never_grows_past_it(partner_admin, client, auth):
    """The inline check says when a URL is longer than the field takes (500), and Append /web never makes it so."""
    iid = partner_admin["integration_id"]
    headers = {"HX-Request": "true", "X-CSRFToken": auth.token(f"/settings/crm/{iid}/edit")}
    url = f"/settings/crm/{iid}/validate/org_url"
    base = "http://127.0.0.1:5555/" + "o" * 200 + "/XRMServices/2011/Organization.svc"
    near = base + "/" + "p" * (497 - len(base) - 1)
    assert len(near) == 497
    resp = client.post(url, data={"connection-org_url": near, "append_web": "1"}, headers=headers)
    assert "longer than 500 characters" in resp.text and "Appended /web" not in resp.text
    assert 'id="connection-org_url"' not in resp.text  # the field is left as the user typed it
    long = near + "/web" + "x" * 100
    resp = client.post(url, data={"connection-org_url": long}, headers=headers)
    assert "longer than 500 characters" in resp.text
    assert len(near[:-10] + "/web") <= 500
    resp = client.post(url, data={"connection-org_url": near[:-10], "append_web": "1"}, headers=headers)
    assert "Appended /web" in resp.text and f'value="{near[:-10]}/web"' in resp.text


def test_append_web_appends_only_what_is_missing_and_to_the_path(partner_admin, client, auth):
    """A URL that has /web is left as it is; /web goes on the path, before a query or fragment (appended after
    them it mended nothing, and each press added another)."""
    iid = partner_admin["integration_id"]
    headers = {"HX-Request": "true", "X-CSRFToken": auth.token(f"/settings/crm/{iid}/edit")}
    url = f"/settings/crm/{iid}/validate/org_url"
    resp = client.post(url, data={"connection-org_url": WEB, "append_web": "1"}, headers=headers)
    assert "The URL looks right." in resp.text and "/web/web" not in resp.text and "Appended" not in resp.text
    resp = client.post(url, data={"connection-org_url": WEB[:-4] + "/?x=1#part", "append_web": "1"}, headers=headers)
    assert f'value="{WEB}?x=1#part"' in resp.text and "Appended /web. Save to keep it." in resp.text


def test_a_problem_found_once_web_is_appended_says_it_was_appended(partner_admin, client, auth):
    """The field's value changed: the one message read out says so before the problem that is left."""
    iid = partner_admin["integration_id"]
    headers = {"HX-Request": "true", "X-CSRFToken": auth.token(f"/settings/crm/{iid}/edit")}
    resp = client.post(f"/settings/crm/{iid}/validate/org_url",
                       data={"connection-org_url": "http://10.0.0.1/x", "append_web": "1"}, headers=headers)
    assert 'value="http://10.0.0.1/x/web"' in resp.text
    assert re.search(r"data-problem data-announce>Appended /web\. \S", resp.text), resp.text


def test_after_a_refused_save_the_appended_field_says_it_is_valid_now(partner_admin, client, auth):
    """A save refused for the missing /web marks the field invalid and says why under it; Append /web sends the
    whole field back (label, help, no error), so neither the error text nor aria-invalid outlives the mend."""
    iid = partner_admin["integration_id"]
    refused = post(client, auth, iid, "connection", {"username": "crmadmin", "password": "Pass-1234",
                                                     "org_url": WEB[:-4], "action": "save"})
    assert refused.status_code == 422
    page_field = _input_attributes(refused.text, "connection-org_url")
    assert page_field["aria-invalid"] == "true" and "connection-org_url-error-1" in page_field["aria-describedby"]
    headers = {"HX-Request": "true", "X-CSRFToken": auth.token(f"/settings/crm/{iid}/edit")}
    resp = client.post(f"/settings/crm/{iid}/validate/org_url",
                       data={"connection-org_url": WEB[:-4], "append_web": "1"}, headers=headers)
    sent = _input_attributes(resp.text, "connection-org_url")
    assert "aria-invalid" not in sent and sent["aria-describedby"] == "connection-org_url-help"
    assert 'id="org_url-wrap" hx-swap-oob="true"' in resp.text and "connection-org_url-error-1" not in resp.text
    assert '<label for="connection-org_url">Organization Web Service URL</label>' in resp.text


def test_saving_changed_connection_switches_off_until_tested(partner_admin, client, auth, app):
    iid = partner_admin["integration_id"]
    post(client, auth, iid, "connection", {"username": "crmadmin", "password": "First-Secret-1", "org_url": WEB,
                                           "action": "save"})
    with app.app_context():
        row = db.session.get(CrmIntegration, iid)
        row.last_test_ok, row.last_test_fingerprint, row.enabled = True, row.connection_fingerprint(), True
        db.session.commit()
    post(client, auth, iid, "connection", {"username": "crmadmin", "org_url": WEB, "domain": "NEW",
                                           "action": "save"})
    assert integ(app, iid).enabled is False


def test_cutting_long_values_is_an_advanced_option(partner_admin, client, auth, app):
    """Item 9: the administrator chooses whether a value too long for the CRM is cut or fails its record."""
    iid = partner_admin["integration_id"]
    page = client.get(f"/settings/crm/{iid}/edit").text
    assert "Cut values too long for the CRM" in page and integ(app, iid).cut_long_values is False
    resp = post(client, auth, iid, "advanced", {"event_types": ["email_open"], "cut_long_values": "y"})
    assert resp.status_code == 200 and integ(app, iid).cut_long_values is True
    resp = post(client, auth, iid, "advanced", {"event_types": ["email_open"]})
    assert resp.status_code == 200 and integ(app, iid).cut_long_values is False


FIELD_MACRO_BEFORE = Path(__file__).resolve().parents[1] / "fixtures" / "markup" / "field_macro_before.html"
HOSTILE = 'say "hi" & <b>bye</b> \'single\' \x01\x1f\x7f'
JUNK = {"general": {"supplier_id": "x<", "record_leads_as": HOSTILE},
        "connection": {"connection_kind": "onprem", "username": HOSTILE, "password": "", "org_url": "ftp://<x>&\"",
                       "odata_url": HOSTILE, "domain": HOSTILE, "organization_name": HOSTILE},
        "usage": {"marketing_automation": "y", "ma_score_threshold": HOSTILE},
        "advanced": {"event_types": HOSTILE, "campaign_data_level": HOSTILE}}


@pytest.mark.parametrize("state", ["clean", "errors", "saved"])
def test_sections_draw_the_fields_as_the_macro_did(app, factory, partner_admin, state):
    """Every section, drawn with the fields in Python and with the old macro: the same bytes."""
    from portal.views.integrations import _context, build_forms

    factory.org("Second Supplier", "supplier")
    with app.app_context():
        row = db.session.get(CrmIntegration, partner_admin["integration_id"])
        row.organization.suppliers.append(
            db.session.scalars(db.select(Organization).where(Organization.name == "Second Supplier")).one())
        row.username, row.domain, row.organization_name = HOSTILE, HOSTILE, HOSTILE
        db.session.commit()
    for section, junk in JUNK.items():
        posted = {f"{section}-{key}": value for key, value in junk.items()} if state == "errors" else None
        with app.test_request_context(method="POST" if posted else "GET", data=posted):
            row = db.session.get(CrmIntegration, partner_admin["integration_id"])
            forms = build_forms(row, posted=section if posted else None)
            if posted:
                assert not forms[section].validate() and forms[section].errors, section
            ctx = _context(row, forms, saved=section if state == "saved" else None)
            old_field = app.jinja_env.from_string(FIELD_MACRO_BEFORE.read_text()).module.field
            drawn = render_template(f"integrations/_{section}.html", **ctx)
            assert drawn == render_template(f"integrations/_{section}.html", labelled_field=old_field, **ctx), section
            assert "<b>" not in drawn
            if state == "errors":
                assert 'aria-invalid="true"' in drawn or "data-announce" in drawn, section
