"""A supplier sees its partners' integration health, never their settings; notices can be dismissed."""

from __future__ import annotations

import re

from portal.extensions import db
from portal.models import CrmIntegration, Notice

from ..conftest import without_tokens


def test_supplier_sees_state_of_its_partners_only(app, factory, auth, client):
    factory.org("Acme Supplier", "supplier")
    factory.org("Rival Supplier", "supplier")
    on = factory.org("Alpha Partner", "partner", ("Acme Supplier",))
    err = factory.org("Beta Partner", "partner", ("Acme Supplier", "Rival Supplier"))
    factory.org("Gamma Partner", "partner", ("Acme Supplier",))  # never opened its settings: no integration row
    factory.org("Rival Partner", "partner", ("Rival Supplier",))
    factory.integration(on, enabled=True, username="alpha-crm-user", password="Alpha-Secret-1")
    iid = factory.integration(err, enabled=True, username="beta-crm-user", org_url="http://127.0.0.1:9/x/web")
    with app.app_context():
        db.session.get(CrmIntegration, iid).set_error("auth_failed", "Refused.", "Check the password.")
        db.session.commit()
    factory.user("boss@acme.example", "Acme Supplier", "admin")
    auth.login("boss@acme.example")
    page = client.get("/settings/partners")
    assert page.status_code == 200
    text = page.text
    assert 'data-partner="Alpha Partner"' in text and 'data-partner="Beta Partner"' in text
    assert 'data-partner="Gamma Partner"' in text and "Rival Partner" not in text
    alpha = text.split('data-partner="Alpha Partner"')[1].split("</tr>")[0]
    beta = text.split('data-partner="Beta Partner"')[1].split("</tr>")[0]
    gamma = text.split('data-partner="Gamma Partner"')[1].split("</tr>")[0]
    assert 'data-state="On"' in alpha and 'data-state="Error"' in beta and 'data-state="Off"' in gamma
    for secret in ("alpha-crm-user", "beta-crm-user", "Alpha-Secret-1", "127.0.0.1:9", "Check the password"):
        assert secret not in text
    assert "See your partners' CRM connections" in client.get("/settings/crm").text
    # The counts, with the rows and on a page of none, are of this supplier's partners only.
    for counted in (text, client.get("/settings/partners?page=2").text):
        assert "All: 3" in counted and "On: 1" in counted and "Off: 1" in counted and "Error: 1" in counted


def test_partners_page_is_for_suppliers(partner_admin, client):
    assert client.get("/settings/partners").status_code == 404


def test_notice_shows_and_is_dismissed(app, partner_admin, client, auth):
    with app.app_context():
        db.session.add(Notice(organization_id=partner_admin["org_id"], message="The integration was switched Off."))
        db.session.commit()
        notice_id = db.session.query(Notice).one().id
    assert "The integration was switched Off." in client.get("/settings/crm").text
    token = auth.token()
    resp = client.post(f"/settings/notices/{notice_id}/dismiss", data={"csrf_token": token})
    assert resp.status_code == 302
    assert "The integration was switched Off." not in client.get("/settings/crm").text


def test_notice_of_another_organization_is_404(app, partner_admin, factory, client, auth):
    other = factory.org("Other Partner")
    with app.app_context():
        db.session.add(Notice(organization_id=other, message="theirs"))
        db.session.commit()
        notice_id = db.session.query(Notice).one().id
    resp = client.post(f"/settings/notices/{notice_id}/dismiss", data={"csrf_token": auth.token()})
    assert resp.status_code == 404


def test_partners_are_paged_and_filtered_by_state(app, factory, auth, client):
    factory.org("Acme Supplier", "supplier")
    for i in range(105):
        org = factory.org(f"P{i:03d}", "partner", ("Acme Supplier",))
        if i % 10 == 0:
            factory.integration(org, enabled=True)
    factory.user("boss@acme.example", "Acme Supplier", "admin")
    auth.login("boss@acme.example")
    first = client.get("/settings/partners").text
    assert first.count("data-partner=") == 100 and "Next 100" in first
    assert "All: 105" in first and "On: 11" in first and "Off: 94" in first
    second = client.get("/settings/partners?page=2").text
    assert second.count("data-partner=") == 5 and "Previous 100" in second and "Next 100" not in second
    on_only = client.get("/settings/partners?state=on").text
    assert on_only.count("data-partner=") == 11 and 'data-state="Off"' not in on_only
    # The counts come with the page's rows; a page with no rows still counts every state.
    assert "All: 105" in second and "On: 11" in second and "Off: 94" in second and "Error: 0" in second
    for empty in ("/settings/partners?state=error", "/settings/partners?page=3"):
        page = client.get(empty).text
        assert page.count("data-partner=") == 0 and "All: 105" in page and "On: 11" in page and "Off: 94" in page
        assert "No partner is in this state." in page


def test_a_kept_page_of_partners_shows_a_change_at_once(app, factory, auth, client):
    """The page is kept while no value it shows changes; a partner's change and a new partner show at once."""
    factory.org("Keeping Supplier", "supplier")
    factory.user("boss@keeping.example", "Keeping Supplier", "admin")
    ids = {name: factory.integration(factory.org(name, "partner", ("Keeping Supplier",)), enabled=True)
           for name in ("Alpha", "Beta")}
    auth.login("boss@keeping.example")
    first = client.get("/settings/partners").text
    assert without_tokens(client.get("/settings/partners").text) == without_tokens(first) and "error: 1" not in first
    with app.app_context():
        db.session.get(CrmIntegration, ids["Beta"]).set_error("auth_failed", "x", "y")
        db.session.commit()
    changed = client.get("/settings/partners").text
    assert re.search(r'data-partner="Beta">.*?badge-error', changed, re.S) and "error: 1" in changed.lower()
    factory.org("Gamma", "partner", ("Keeping Supplier",))
    assert 'data-partner="Gamma"' in client.get("/settings/partners").text


def test_a_kept_page_shows_new_counts_when_only_partners_on_other_pages_changed(app, factory, auth, client):
    """A page of one state is kept with its lines; a partner in another state changing moves only the counts, and
    the kept page shows them at once."""
    factory.org("Counting Supplier", "supplier")
    factory.user("boss@counting.example", "Counting Supplier", "admin")
    factory.integration(factory.org("On Partner", "partner", ("Counting Supplier",)), enabled=True)
    off = factory.integration(factory.org("Off Partner", "partner", ("Counting Supplier",)), enabled=False)
    auth.login("boss@counting.example")
    first = client.get("/settings/partners?state=on").text
    assert without_tokens(client.get("/settings/partners?state=on").text) == without_tokens(first)
    assert ">Error: 0</a>" in first
    with app.app_context():
        db.session.get(CrmIntegration, off).set_error("auth_failed", "x", "y")
        db.session.commit()
    page = client.get("/settings/partners?state=on").text
    assert ">Error: 1</a>" in page and ">Off: 0</a>" in page and 'data-partner="On Partner"' in page
