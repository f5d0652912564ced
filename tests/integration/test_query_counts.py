"""Pages run a fixed number of SQL statements whatever the number of rows (no N+1)."""

from __future__ import annotations

from portal.extensions import db
from portal.models import CrmIntegration

from ..conftest import count_statements


def _add_partners(app, factory, supplier: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        org_id = factory.org(f"Partner {i:04d}", "partner", (supplier,))
        iid = factory.integration(org_id, enabled=i % 2 == 0)
        if i % 3 == 0:
            with app.app_context():
                db.session.get(CrmIntegration, iid).set_error("auth_failed", "x", "y")
                db.session.commit()


def test_supplier_partner_view_does_not_grow(app, factory, auth, client):
    factory.org("Big Supplier", "supplier")
    factory.user("boss@big.example", "Big Supplier", "admin")
    auth.login("boss@big.example")
    _add_partners(app, factory, "Big Supplier", 0, 3)
    client.get("/settings/partners")  # warm caches that are not per-row
    with count_statements(app) as few:
        assert client.get("/settings/partners").status_code == 200
    _add_partners(app, factory, "Big Supplier", 3, 30)
    with count_statements(app) as many:
        page = client.get("/settings/partners")
    assert page.text.count("data-partner=") == 33
    assert len(many) == len(few)


def test_listing_and_edit_pages_have_a_small_fixed_cost(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    client.get("/settings/crm")
    with count_statements(app) as listing:
        client.get("/settings/crm")
    with count_statements(app) as edit:
        client.get(f"/settings/crm/{iid}/edit")
    assert len(listing) <= 8, listing
    assert len(edit) <= 10, edit
