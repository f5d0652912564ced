"""Settings > API tokens: administrators list, create (shown once) and revoke tokens; only hashes are stored."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.platform_models import ApiToken

from ..conftest import PASSWORD


def shown_token(html: str) -> str:
    match = re.search(r'value="(zpt_[A-Za-z0-9_-]+)"[^>]*data-token-value', html)
    assert match, "no new token in the page"
    return match.group(1)


def rows(app) -> list[ApiToken]:
    with app.app_context():
        found = db.session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
        for row in found:
            db.session.expunge(row)
        return list(found)


@pytest.mark.parametrize("htmx", [True, False])
def test_create_shows_the_token_once_and_stores_its_hash(app, partner_admin, client, auth, htmx):
    token = auth.token("/settings/api-tokens")
    headers = {"HX-Request": "true", "X-CSRFToken": token} if htmx else {}
    resp = client.post("/settings/api-tokens", data={"name": "Exporter", "csrf_token": token}, headers=headers)
    assert resp.status_code == 201
    assert resp.headers["Cache-Control"] == "no-store"
    raw = shown_token(resp.text)
    assert ("<html" in resp.text) is not htmx
    saved = rows(app)
    assert len(saved) == 1 and saved[0].name == "Exporter"
    assert saved[0].token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert saved[0].prefix == raw[:12] and saved[0].organization_id == partner_admin["org_id"]
    again = client.get("/settings/api-tokens")
    assert raw not in again.text and f"{raw[:12]}…" in again.text and "Never" in again.text


def test_name_is_required(app, partner_admin, client, auth):
    token = auth.token("/settings/api-tokens")
    resp = client.post("/settings/api-tokens", data={"name": " ", "csrf_token": token},
                       headers={"HX-Request": "true", "X-CSRFToken": token})
    assert resp.status_code == 422 and "Name the token" in resp.text
    assert rows(app) == []


def test_revoke_with_and_without_htmx(app, partner_admin, client, auth):
    from portal import tokens

    with app.app_context():
        first, _ = tokens.create_token(partner_admin["org_id"], "One")
        second, _ = tokens.create_token(partner_admin["org_id"], "Two")
        first_id, second_id = first.id, second.id
    token = auth.token("/settings/api-tokens")
    resp = client.post(f"/settings/api-tokens/{first_id}/revoke", data={"csrf_token": token})
    assert resp.status_code == 302
    page = client.get("/settings/api-tokens").text
    assert 'data-state="revoked"' in page and "is revoked" in page
    resp = client.post(f"/settings/api-tokens/{second_id}/revoke", headers={"HX-Request": "true", "X-CSRFToken": token})
    assert resp.status_code == 200 and 'id="tokens"' in resp.text and 'hx-swap-oob="true"' in resp.text
    assert all(r.revoked_at is not None for r in rows(app))


def test_revoke_needs_csrf(app, partner_admin, client):
    from portal import tokens

    with app.app_context():
        row, _ = tokens.create_token(partner_admin["org_id"], "One")
        row_id = row.id
    assert client.post(f"/settings/api-tokens/{row_id}/revoke").status_code == 400
    assert rows(app)[0].revoked_at is None


def test_members_get_403_and_other_organizations_tokens_are_404(app, factory, partner_admin, client, auth):
    from portal import tokens

    other = factory.org("Other Partner", "partner", ("Acme Supplier",))
    with app.app_context():
        foreign, _ = tokens.create_token(other, "Theirs")
        foreign_id = foreign.id
    page = client.get("/settings/api-tokens")
    assert page.status_code == 200 and "Theirs" not in page.text
    token = auth.token("/settings/api-tokens")
    resp = client.post(f"/settings/api-tokens/{foreign_id}/revoke", data={"csrf_token": token})
    assert resp.status_code == 404 and rows(app)[0].revoked_at is None

    factory.user("member@acme.example", "Acme Partner", "member")
    client.post("/logout", data={"csrf_token": token})
    auth.login("member@acme.example", PASSWORD)
    assert client.get("/settings/api-tokens").status_code == 403
    token = auth.token("/leads")
    assert client.post("/settings/api-tokens", data={"name": "x", "csrf_token": token}).status_code == 403
