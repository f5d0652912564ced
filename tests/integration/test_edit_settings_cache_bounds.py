"""Edit Settings' rendered-sections cache: what a tenant (or its CRM) controls cannot make it hold unbounded memory."""

from __future__ import annotations

from portal.extensions import db
from portal.models import BackgroundJob, CrmIntegration, JobStatus

from .test_edit_settings_cache import add_test, edit_path, use_cache


def kept_chars(app) -> int:
    """The characters the Edit Settings cache holds, keys and values."""
    cache = app.extensions["rendered_caches"]["integrations.edit"]

    def size(value) -> int:
        if isinstance(value, str | bytes):
            return len(value)
        if isinstance(value, tuple | list):
            return sum(size(v) for v in value)
        return 0

    return sum(size(key) + size(value) for key, value in cache._items.items())


def test_a_crm_answering_a_huge_name_cannot_fill_the_cache(app, partner_admin, client):
    """The connection test's message quotes the CRM user's full name, as long as the CRM makes it; each save
    (a new updated_at) or test makes a new key. The cache keeps at most RENDERED_CACHE_BYTES of them."""
    use_cache(app, True)
    app.config["RENDERED_CACHE_BYTES"] = 2_000_000
    iid = partner_admin["integration_id"]
    name = "N" * 300_000  # a CRM may answer up to the transport's 50 MB response limit
    with app.app_context():
        add_test(iid, JobStatus.finished, message=f"Connected as {name}, CRM version 9.")
        db.session.get(CrmIntegration, iid).last_test_message = f"Connected as {name}, CRM version 9."
        db.session.commit()
    for n in range(12):
        with app.app_context():  # a save: what the page draws is the same, the key is not
            db.session.get(CrmIntegration, iid).ma_score_threshold = n
            db.session.commit()
        page = client.get(edit_path(iid))
        assert page.status_code == 200 and name in page.text
    assert kept_chars(app) <= 2_000_000


def test_an_entry_larger_than_the_whole_budget_is_served_but_not_kept(app, partner_admin, client):
    use_cache(app, True)
    app.config["RENDERED_CACHE_BYTES"] = 100_000
    iid = partner_admin["integration_id"]
    with app.app_context():
        add_test(iid, JobStatus.finished, message="Connected as " + "N" * 200_000)
        db.session.commit()
    assert "N" * 200_000 in client.get(edit_path(iid)).text
    assert len(app.extensions["rendered_caches"]["integrations.edit"]) == 0
    with app.app_context():
        db.session.get(BackgroundJob, "t" * 32).message = "Connected as Pat"
        db.session.commit()
    assert "Connected as Pat" in client.get(edit_path(iid)).text
    assert len(app.extensions["rendered_caches"]["integrations.edit"]) == 1


def test_a_saved_value_holding_a_placeholder_is_shown_as_typed(app, partner_admin, client):
    """Defence in depth: even a value holding the placeholder of an earlier draw (were one ever learnt) is drawn
    as typed, never as the viewer's CSRF token: each draw has a placeholder of its own, made after the values."""
    from portal import page_cache

    use_cache(app, True)
    iid = partner_admin["integration_id"]
    client.get(edit_path(iid))
    earlier = page_cache._PLACEHOLDER  # the placeholder a draw used so far
    with app.app_context():
        db.session.get(CrmIntegration, iid).domain = f"x{earlier}y"
        db.session.commit()
    for _ in range(2):  # drawn, then served
        page = client.get(edit_path(iid)).text
        assert f'value="x{earlier}y"' in page
