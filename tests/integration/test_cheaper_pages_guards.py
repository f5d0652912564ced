"""Guards for the cheaper CRM Settings, Sync history and supplier's pages: every post whose form changed still
refuses a missing or foreign CSRF token, and the supplier's counts stay apart from its partners' rows."""

from __future__ import annotations

import re

import pytest

from portal.extensions import db
from portal.models import Notice

from ..conftest import Auth, csrf_from

HX = {"HX-Request": "true"}


def test_every_changed_post_refuses_a_missing_or_foreign_token(app, factory, partner_admin, client):
    iid = partner_admin["integration_id"]
    factory.user("second@acme.example", "Acme Partner", "admin")
    second = app.test_client()
    Auth(second).login("second@acme.example")
    theirs = csrf_from(second.get("/settings/crm").text)
    with app.app_context():
        notice = Notice(organization_id=partner_admin["org_id"], message="kept")
        db.session.add(notice)
        db.session.commit()
        notice_id = notice.id
    posts = ((f"/settings/crm/{iid}/toggle", {"state": "on"}), ("/settings/health", {}),
             (f"/settings/notices/{notice_id}/dismiss", {}), (f"/settings/crm/{iid}/runs/sync", {}),
             (f"/settings/crm/{iid}/runs/preview", {}), (f"/settings/crm/{iid}/runs/resync", {}))
    for path, data in posts:
        for token, headers in (({}, {}), ({"csrf_token": theirs}, {}), ({}, {"X-CSRFToken": theirs, **HX}),
                               ({"csrf_token": "junk"}, HX)):
            resp = client.post(path, data={**data, **token}, headers=headers)
            assert resp.status_code == 400, (path, token, headers)
    assert "kept" in client.get("/settings/crm").text  # nothing was dismissed


@pytest.mark.parametrize("query", ["", "state=on", "state=off", "state=error&page=2", "page=0", "page=-1",
                                   "page=abc", "page=99999999999999999999", "page=1000000", "state=%00"])
def test_partners_named_like_states_are_rows_and_the_counts_stay_counts(factory, auth, client, query):
    factory.org("Named Supplier", "supplier")
    for name in ("on", "off", "error", "All", '"><b>x</b>'):
        factory.org(name, "partner", ("Named Supplier",))
    factory.user("boss@named.example", "Named Supplier", "admin")
    auth.login("boss@named.example")
    page = client.get(f"/settings/partners?{query}")
    assert page.status_code == 200
    counts = re.findall(r">(All|On|Off|Error): (\d+)</a>", page.text)
    assert dict(counts) == {"All": "5", "On": "0", "Off": "5", "Error": "0"} and len(counts) == 4
    shown = re.findall(r'data-partner="([^"]*)"', page.text)
    assert sorted(shown) in ([], sorted(["&#34;&gt;&lt;b&gt;x&lt;/b&gt;", "All", "error", "off", "on"])), shown
    assert "<b>x</b>" not in page.text


def test_the_kept_listing_carries_each_session_s_own_token_and_it_works(app, factory, partner_admin, client):
    """The listing's body is kept once for the organization; each session still gets its own token in every form,
    never the placeholder it was kept with, and a post with it is taken."""
    iid = partner_admin["integration_id"]
    factory.user("second@acme.example", "Acme Partner", "admin")
    second = app.test_client()
    Auth(second).login("second@acme.example")
    pages = [who.get("/settings/crm").text for who in (client, second, client)]
    tokens = [set(re.findall(r'name="csrf_token" type="hidden" value="([^"]+)"', page)) for page in pages]
    assert all(len(found) == 1 for found in tokens) and tokens[0] == tokens[2] != tokens[1]
    assert not any("csrf-" in page for page in pages)
    resp = second.post(f"/settings/crm/{iid}/toggle", data={"state": "off", "csrf_token": next(iter(tokens[1]))})
    assert resp.status_code == 302
