"""Edit Settings served from its rendered-sections cache: always what is saved now, the session's own CSRF token."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect

from portal import page_cache
from portal.crypto import encrypt
from portal.extensions import db
from portal.models import BackgroundJob, CrmIntegration, JobStatus, Organization

from ..conftest import Auth, count_statements, tokens, without_tokens

HOSTILE = 'say "hi" & <b>bye</b> \'single\''
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # long enough ago for a queued test to be stuck


def edit_path(integration_id: int) -> str:
    return f"/settings/crm/{integration_id}/edit"


def add_test(integration_id: int, status: JobStatus, *, created_at=WHEN, steps=(), message: str = "",
             result: dict | None = None, job_id: str = "t" * 32) -> None:
    """A connection-test job row for the integration."""
    db.session.add(BackgroundJob(
        id=job_id, kind="connection-test", integration_id=integration_id, status=status, created_at=created_at,
        steps_json=json.dumps(list(steps)), message=message, result_json=json.dumps(result or {})))


def set_state(app, integration_id: int, state: str) -> None:
    """Put the integration (and its last connection test) in one of the states the page draws differently."""
    with app.app_context():
        row = db.session.get(CrmIntegration, integration_id)
        if state == "fresh":
            pass
        elif state == "onprem-password-passed":
            row.username, row.org_url, row.domain = "svc", "http://127.0.0.1:5555/o/web", HOSTILE
            row.password_encrypted = encrypt("secret-value")
            row.supplier_id = row.organization.suppliers[0].id
            row.marketing_automation, row.record_leads_as = True, "contact"
            add_test(integration_id, JobStatus.finished, message="The connection works.",
                     steps=[{"name": "Sign in", "ok": True, "detail": HOSTILE}])
        elif state == "onprem-no-password-failed":
            row.username, row.org_url = "svc", "http://127.0.0.1:5555/o/web"
            row.error_code, row.error_message = "auth", "Sign-in failed"
            add_test(integration_id, JobStatus.failed, message="Failed",
                     steps=[{"name": "Sign in", "ok": False, "detail": "401"}],
                     result={"error": {"code": "lead_source_missing", "message": HOSTILE, "action": "Add it."}})
        elif state == "online-secret-running":
            row.connection_kind, row.environment_url = "online", "https://contoso.crm4.dynamics.com"
            row.tenant_id, row.client_id = "contoso.onmicrosoft.com", "00001111-aaaa-2222-bbbb-3333cccc4444"
            row.client_secret_encrypted = encrypt("client-secret-value")
            row.lead_distribution, row.create_campaigns, row.event_types = True, True, ["email_open"]
            add_test(integration_id, JobStatus.started, steps=[{"name": "Token", "ok": True}])
        elif state == "online-stuck":
            row.connection_kind = "online"
            add_test(integration_id, JobStatus.queued, created_at=WHEN)
        else:
            raise AssertionError(state)
        db.session.commit()


STATES = ["fresh", "onprem-password-passed", "onprem-no-password-failed", "online-secret-running", "online-stuck"]


def use_cache(app, on: bool) -> None:
    """Start the app's caches anew, on or off."""
    app.extensions.pop("rendered_caches", None)
    app.config["RENDERED_CACHE_SIZE"] = 256 if on else 0


def cached_pieces(app) -> list[str]:
    """Every piece of markup the Edit Settings cache holds."""
    cache = app.extensions["rendered_caches"]["integrations.edit"]
    return [piece for _label, pieces, _busy in cache._items.values() for piece in pieces]


def get_page(client, integration_id: int) -> str:
    page = client.get(edit_path(integration_id))
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store" and "HX-Request" in page.headers["Vary"]
    return page.text


def assert_served_from_cache(statements: list[str]) -> None:
    """Only the one statement the key is read with touched the integration or its tests: nothing was drawn."""
    assert len([s for s in statements if "crm_integrations" in s or "background_jobs" in s]) == 1, statements


@pytest.mark.parametrize("state", STATES)
def test_cached_page_is_the_uncached_page_byte_for_byte(app, partner_admin, client, factory, state):
    """Drawn anew (cache off), drawn into the cache and served from it: the same bytes, the session's token."""
    factory.org("Second Supplier", "supplier")
    with app.app_context():
        org = db.session.get(Organization, partner_admin["org_id"])
        org.suppliers.append(db.session.scalars(db.select(Organization).filter_by(name="Second Supplier")).one())
        db.session.commit()
    iid = partner_admin["integration_id"]
    set_state(app, iid, state)
    use_cache(app, False)
    uncached = get_page(client, iid)
    use_cache(app, True)
    drawn = get_page(client, iid)
    with count_statements(app) as statements:
        served = get_page(client, iid)
    assert_served_from_cache(statements)
    assert len(app.extensions["rendered_caches"]["integrations.edit"]) == 1
    assert without_tokens(drawn) == without_tokens(uncached) == without_tokens(served)
    for page in (uncached, drawn, served):
        assert len(tokens(page)) == 1 and page.count(next(iter(tokens(page)))) >= 5  # layout, sign-out, 4 forms
        assert "<b>" not in page and page_cache._PLACEHOLDER not in page
    assert "Second Supplier" in served


def test_the_second_get_is_served_from_the_cache_in_one_statement(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    with count_statements(app) as drawn:
        get_page(client, iid)
    with count_statements(app) as served:
        get_page(client, iid)
    assert len(served) < len(drawn)
    assert_served_from_cache(served)


def test_a_saved_change_shows_at_once(app, partner_admin, client, auth):
    iid = partner_admin["integration_id"]
    assert 'value="50"' in get_page(client, iid)
    token = auth.token(edit_path(iid))
    resp = client.post(f"/settings/crm/{iid}/usage", data={"usage-ma_score_threshold": "77",
                                                           "usage-csrf_token": token})
    assert resp.status_code == 302
    page = get_page(client, iid)
    assert 'value="77"' in page and 'value="50"' not in page
    with app.app_context():  # a write from elsewhere shows as well, even one that leaves updated_at as it was
        db.session.execute(db.update(CrmIntegration).where(CrmIntegration.id == iid)
                           .values(domain="CONTOSO-7", updated_at=CrmIntegration.updated_at))
        db.session.commit()
    assert 'value="CONTOSO-7"' in get_page(client, iid)


def test_a_saved_password_and_the_test_state_show_at_once(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    assert 'data-password-state="none"' in get_page(client, iid)
    with app.app_context():
        db.session.get(CrmIntegration, iid).password_encrypted = encrypt("first")
        add_test(iid, JobStatus.started)
        db.session.commit()
    page = get_page(client, iid)
    assert 'data-password-state="saved"' in page and 'data-test="running"' in page
    with app.app_context():  # the cache knows only that a password is saved, not even its ciphertext
        ciphertext = db.session.get(CrmIntegration, iid).password_encrypted
    keys = list(app.extensions["rendered_caches"]["integrations.edit"]._items)
    assert ciphertext not in repr(keys)
    # The newest key's integration values (written by the database, a column each) say the password is saved.
    names = [attr.key for attr in inspect(CrmIntegration).column_attrs]
    assert json.loads(keys[-1].texts[0])[names.index("password_encrypted")] in (1, True)
    with app.app_context():
        db.session.get(BackgroundJob, "t" * 32).status = JobStatus.failed
        db.session.commit()
    assert 'data-test="failed"' in get_page(client, iid)
    with app.app_context():
        db.session.get(BackgroundJob, "t" * 32).status = JobStatus.queued
        db.session.commit()
    app.config["WORKER_STALE_SECONDS"] = 10**9  # queued, and a worker may still take it
    assert 'data-test="running"' in get_page(client, iid)
    app.config["WORKER_STALE_SECONDS"] = 0  # nothing saved changed, only the time: no worker took it
    assert 'data-test="stuck"' in get_page(client, iid)


def test_a_changed_supplier_name_shows(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    assert "Acme Supplier" in get_page(client, iid)
    with app.app_context():
        db.session.scalars(db.select(Organization).filter_by(name="Acme Supplier")).one().name = "Acme & <Sons>"
        db.session.commit()
    page = get_page(client, iid)
    assert "Acme &amp; &lt;Sons&gt;" in page and "Acme Supplier" not in page


def test_a_supplier_linked_and_unlinked_while_the_page_is_drawn_is_not_kept(app, partner_admin, client, factory):
    """Another request links a supplier just after the key is read and unlinks it just before it is read again: the
    page drawn in between must not be kept under the key of the state without the link, nor shown later."""
    from sqlalchemy import event, text

    factory.org("Ghost Supplier", "supplier")
    iid, org_id = partner_admin["integration_id"], partner_admin["org_id"]
    with app.app_context():
        engine = db.engine
        ghost = db.session.scalars(db.select(Organization.id).filter_by(name="Ghost Supplier")).one()
    keys_read = []

    def another_request(_conn, _cursor, statement, *_args):
        if "json_" not in statement or "partner_suppliers" not in statement:
            if len(keys_read) == 1 and "linked" not in keys_read:  # the first statement after the key's read
                keys_read.append("linked")
                with engine.begin() as other:
                    other.execute(text("INSERT INTO partner_suppliers (partner_id, supplier_id) VALUES (:p, :s)"),
                                  {"p": org_id, "s": ghost})
            return
        if keys_read:  # the key read again, once drawn: the link is undone just before
            with engine.begin() as other:
                other.execute(text("DELETE FROM partner_suppliers WHERE supplier_id = :s"), {"s": ghost})
        keys_read.append("key")

    event.listen(engine, "before_cursor_execute", another_request)
    try:
        get_page(client, iid)
    finally:
        event.remove(engine, "before_cursor_execute", another_request)
    assert keys_read == ["key", "linked", "key"]
    assert "Ghost Supplier" not in get_page(client, iid)


def test_two_sessions_get_their_own_csrf_tokens(app, partner_admin, client, factory):
    iid = partner_admin["integration_id"]
    factory.user("second@acme.example", "Acme Partner", "admin")
    other = app.test_client()
    assert Auth(other).login("second@acme.example").status_code == 302
    first_page = get_page(client, iid)  # drawn into the cache
    second_page = get_page(other, iid)  # served from it
    first, second = tokens(first_page), tokens(second_page)
    assert len(first) == len(second) == 1 and first != second
    assert not any(token in piece for piece in cached_pieces(app) for token in first | second)
    # Each token is its own session's: it saves there, and is refused in the other session.
    for who, token, status in ((other, second, 302), (client, second, 400), (other, first, 400)):
        resp = who.post(f"/settings/crm/{iid}/usage", data={"usage-ma_score_threshold": "60",
                                                            "usage-csrf_token": next(iter(token))})
        assert resp.status_code == status


def test_another_tenants_integration_is_404_even_when_cached(app, partner_admin, client, factory):
    factory.org("Other Partner", "partner", ("Acme Supplier",))
    factory.user("admin@other.example", "Other Partner", "admin")
    with app.app_context():
        other_iid = factory.integration(db.session.scalars(
            db.select(Organization.id).filter_by(name="Other Partner")).one())
    other = app.test_client()
    assert Auth(other).login("admin@other.example").status_code == 302
    assert client.get(edit_path(other_iid)).status_code == 404
    get_page(other, other_iid)  # now in the cache
    get_page(client, partner_admin["integration_id"])
    assert client.get(edit_path(other_iid)).status_code == 404
    assert other.get(edit_path(partner_admin["integration_id"])).status_code == 404
