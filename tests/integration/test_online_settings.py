"""CRM Connection Settings for Dynamics 365 online: the kind, its fields, write-only secrets, the test and On."""

from __future__ import annotations

import json
import re

from rq import SimpleWorker
from sqlalchemy import select

from portal import queues
from portal.connection import config_for
from portal.connectors.dynamics.auth import TokenProvider
from portal.crypto import fernet
from portal.extensions import db
from portal.models import AuditLog, BackgroundJob, CrmIntegration

from .sync_helpers import use_online

SECRET = "Online-Secret-Value-9f3"


def post_connection(client, auth, integration_id: int, fields: dict, action: str = "save"):
    """POST the CRM Connection Settings section as htmx does."""
    token = auth.token(f"/settings/crm/{integration_id}/edit")
    data = {f"connection-{k}": v for k, v in fields.items()}
    data.update({"connection-csrf_token": token, "action": action})
    return client.post(f"/settings/crm/{integration_id}/connection", data=data,
                       headers={"HX-Request": "true", "X-CSRFToken": token})


def online_fields(crm, secret: str = SECRET) -> dict:
    """The sandbox's online settings as the form posts them."""
    return {"connection_kind": "online", "environment_url": crm.environment_url + "/", "tenant_id": crm.tenant_id,
            "client_id": crm.client_id, "client_secret": secret}


def row(app, integration_id: int) -> CrmIntegration:
    with app.app_context():
        found = db.session.get(CrmIntegration, integration_id)
        db.session.expunge(found)
        return found


def use_sandbox_authority(app, crm) -> None:
    """The sandbox stands in for Microsoft Entra ID, with its own certificate."""
    app.config["CRM_AUTHORITY_HOST"] = crm.authority_host
    app.config["CRM_CA_BUNDLE"] = crm.ca_file


def test_saving_online_keeps_the_on_premises_values_and_never_shows_the_secret(app, client, auth, connected):
    iid, crm = connected["integration_id"], connected["crm"]
    before = row(app, iid)
    resp = post_connection(client, auth, iid, online_fields(crm))
    assert resp.status_code == 200, resp.text
    saved = row(app, iid)
    assert saved.connection_kind == "online" and saved.environment_url == crm.environment_url
    assert saved.client_secret_encrypted and SECRET not in saved.client_secret_encrypted
    assert (saved.username, saved.org_url, saved.password_encrypted) == (
        before.username, before.org_url, before.password_encrypted)
    page = client.get(f"/settings/crm/{iid}/edit").text
    assert SECRET not in page and 'data-secret-state="saved"' in page
    assert re.search(r'<input[^>]*checked[^>]*value="online"|<input[^>]*value="online"[^>]*checked', page)
    with app.app_context():
        entry = db.session.scalars(select(AuditLog).order_by(AuditLog.id.desc())).first()
        assert "client_secret" in entry.fields_json and SECRET not in entry.fields_json
    # Back to on-premises: both kinds' values are still there.
    resp = post_connection(client, auth, iid, {"connection_kind": "onprem", "username": before.username,
                                               "org_url": before.org_url, "domain": before.domain})
    assert resp.status_code == 200, resp.text
    back = row(app, iid)
    assert back.connection_kind == "onprem" and back.password_encrypted == before.password_encrypted
    assert back.client_secret_encrypted == saved.client_secret_encrypted and back.tenant_id == crm.tenant_id


def test_invalid_online_settings_are_refused_with_what_to_fix(app, client, auth, connected):
    iid, crm = connected["integration_id"], connected["crm"]
    cases = [
        ({"environment_url": "http://contoso.crm4.dynamics.com"}, "starts with https://"),
        ({"environment_url": crm.environment_url + "/main.aspx"}, "without a path"),
        ({"tenant_id": "not a tenant"}, "Directory (tenant) ID"),
        ({"client_id": "12345"}, "Application (client) ID"),
        ({"client_secret": ""}, "client secret"),
        ({"client_certificate": "-----BEGIN CERTIFICATE-----\nQk9HVVNjZXJ0\n-----END CERTIFICATE-----"}, "private key"),
    ]
    for change, words in cases:
        resp = post_connection(client, auth, iid, {**online_fields(crm), **change})
        assert resp.status_code == 422, change
        assert words in resp.text, (change, resp.text[:300])
        assert "Qk9HVVNjZXJ0" not in resp.text  # the certificate is never sent back to the browser
    assert row(app, iid).connection_kind == "onprem"  # nothing stored


def test_online_url_guard_applies(app, client, auth, connected):
    app.config["CRM_ALLOWED_NETWORKS"] = ""
    resp = post_connection(client, auth, connected["integration_id"], online_fields(connected["crm"]))
    assert resp.status_code == 422 and "loopback" in resp.text.lower()


def test_save_and_test_online_then_switch_on(app, client, auth, connected):
    iid, crm = connected["integration_id"], connected["crm"]
    use_sandbox_authority(app, crm)
    crm.reset(seed=True, platform_option=True)
    resp = post_connection(client, auth, iid, online_fields(crm, secret=crm.client_secret), action="test")
    assert resp.status_code == 200
    with app.app_context():
        SimpleWorker([queues.queue(queues.QUEUE_TESTS)], connection=queues.redis()).work(burst=True)
        job = db.session.scalars(select(BackgroundJob).where(BackgroundJob.integration_id == iid)).one()
        assert job.result["ok"], job.result_json
        assert "Sign-in (Microsoft Entra ID)" in job.result_json and crm.client_secret not in job.result_json
    saved = row(app, iid)
    assert saved.test_passed_on_saved_settings and saved.lead_source_value == 100000000
    with app.app_context():  # On also needs a supplier and a usage profile (General Settings, Usage Profile)
        integ = db.session.get(CrmIntegration, iid)
        integ.supplier_id = integ.organization.suppliers[0].id
        integ.marketing_automation = True
        db.session.commit()
    token = auth.token("/settings/crm")
    resp = client.post(f"/settings/crm/{iid}/toggle", data={"state": "on", "csrf_token": token})
    assert resp.status_code in (200, 302)
    assert row(app, iid).enabled


def test_wrong_secret_is_explained_and_stays_off(app, client, auth, connected):
    iid, crm = connected["integration_id"], connected["crm"]
    use_sandbox_authority(app, crm)
    post_connection(client, auth, iid, online_fields(crm, secret="Wrong-Secret-1"), action="test")
    with app.app_context():
        SimpleWorker([queues.queue(queues.QUEUE_TESTS)], connection=queues.redis()).work(burst=True)
    saved = row(app, iid)
    assert saved.last_test_ok is False and saved.error_code == "auth_failed"
    assert "client secret" in saved.error_message and "Certificates & secrets" in saved.error_action
    assert saved.switch_on_refusal()


def test_junk_in_online_fields_is_a_clear_4xx_and_nothing_is_stored(app, client, auth, connected):
    iid, crm = connected["integration_id"], connected["crm"]
    junk = ["https://a\x00b.example", "https://exa mple.com", "https://host:99999", "https://host:0", "https://[::1",
            "https://\ufffd.example",
            "https://" + "a" * 600, "javascript:alert(1)"]
    for value in junk:
        resp = post_connection(client, auth, iid, {**online_fields(crm), "environment_url": value})
        assert resp.status_code == 422, (value, resp.status_code)
    for field in ("tenant_id", "client_id"):
        for value in ("\x00", "x" * 300, "<script>alert(1)</script>", "\u202e" * 3):
            resp = post_connection(client, auth, iid, {**online_fields(crm), field: value})
            assert resp.status_code == 422, (field, value)
            assert "<script>alert(1)</script>" not in resp.text
    assert row(app, iid).connection_kind == "onprem" and not row(app, iid).client_secret_encrypted


def test_control_characters_are_refused_in_on_premises_fields_too(app, client, auth, connected):
    iid, crm = connected["integration_id"], connected["crm"]
    before = row(app, iid)
    for field, value in (("org_url", crm.org_url.replace("127.0.0.1", "a\x00b.example")), ("username", "u\x00x"),
                         ("domain", "D\x07"), ("organization_name", "Org\x1b")):
        data = {"connection_kind": "onprem", "username": crm.username, "org_url": crm.org_url, field: value}
        resp = post_connection(client, auth, iid, data)
        assert resp.status_code == 422, (field, resp.status_code)
        assert "control character" in resp.text
    after = row(app, iid)
    assert (after.org_url, after.username, after.domain) == (before.org_url, before.username, before.domain)


def test_workers_share_the_token_through_redis_encrypted_and_expiring_first(app, connected):
    use_online(app, connected)
    crm, iid = connected["crm"], connected["integration_id"]
    with app.app_context():
        integ = db.session.get(CrmIntegration, iid)
        first, second = TokenProvider(config_for(integ)), TokenProvider(config_for(integ))  # two workers
        key = "portal:crm-token:" + config_for(integ).fingerprint()
        conn = queues.redis()
        conn.delete(key)
        before = crm.stats()["tokens_issued"]
        try:
            token = first.token()
            assert second.token() == token
        finally:
            first.close()
            second.close()
        assert crm.stats()["tokens_issued"] == before + 1
        raw = conn.get(key)
        # Only the token, its expiry and the key it is kept under, encrypted with the portal's keys: neither the
        # token nor the secret in clear.
        assert token.encode() not in raw and crm.client_secret.encode() not in raw
        kept = json.loads(fernet().decrypt(raw))
        assert kept.keys() == {"key", "token", "expires_at"} and kept["key"] == config_for(integ).fingerprint()
        assert crm.client_secret not in key and crm.client_id not in key
        assert 0 < conn.ttl(key) <= 3600 - 300  # gone before the token expires
        conn.delete(key)
