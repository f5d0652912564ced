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


def test_the_pages_sql_is_written_once_not_on_each_request(app, factory, partner_admin, client):
    """No page's statement has a parameter SQLAlchemy writes into its SQL on each request (an IN list, a literal):
    the SQL is then written anew every time, which cost the listing and the kept pages CPU on every request."""
    from sqlalchemy import event

    from ..conftest import Auth

    factory.org("Written Once Supplier", "supplier")
    factory.user("boss@written-once.example", "Written Once Supplier", "admin")
    supplier = app.test_client()
    Auth(supplier).login("boss@written-once.example")
    iid = partner_admin["integration_id"]
    pages = ((client, "/settings/crm"), (client, f"/settings/crm/{iid}/edit"), (client, f"/settings/crm/{iid}/runs"),
             (supplier, "/settings/partners"))
    rewritten: list[str] = []

    def record(_conn, _cursor, statement, _params, context, _many):
        compiled = getattr(context, "compiled", None)
        if compiled is not None and (compiled.literal_execute_params or compiled.post_compile_params):
            rewritten.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for who, path in pages * 2:  # the first visit draws and keeps; the second is served from what was kept
            assert who.get(path).status_code == 200, path
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert rewritten == []
