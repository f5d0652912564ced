"""What a determined user tries: parallel guessing, copied session cookies, probing for accounts, junk input."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from portal.extensions import db

from ..conftest import PASSWORD, csrf_from, without_tokens

ATTACKER = "203.0.113.9"
OWNER = "198.51.100.7"


def sign_in(client, email: str, password: str = PASSWORD, address: str = OWNER):
    """POST the sign-in form from a client address."""
    page = client.get("/login", environ_base={"REMOTE_ADDR": address})
    return client.post("/login", data={"email": email, "password": password, "csrf_token": csrf_from(page.text)},
                       environ_base={"REMOTE_ADDR": address})


def without_token(html: str) -> str:
    """A page with its per-session CSRF token and the echoed email blanked, to compare two answers byte for byte."""
    return without_tokens(re.sub(r'(name="email"[^>]*value=")[^"]+', r"\1", html))


# ------------------------------------------------------------------------------------------ 1. lockout race


def test_parallel_wrong_passwords_lock_the_account_at_the_limit(app, factory):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    limit = app.config["LOGIN_MAX_FAILURES"]
    burst = 40
    clients = [app.test_client() for _ in range(burst + 1)]
    tokens = [csrf_from(c.get("/login", environ_base={"REMOTE_ADDR": ATTACKER}).text) for c in clients]
    start = threading.Barrier(burst + 1)

    def attempt(i: int) -> int:
        password = PASSWORD if i == burst else f"Wrong-Password-{i}"
        start.wait()
        return clients[i].post("/login", data={"email": "ann@acme.example", "password": password,
                                               "csrf_token": tokens[i]},
                               environ_base={"REMOTE_ADDR": ATTACKER}).status_code

    with ThreadPoolExecutor(burst + 1) as pool:
        statuses = list(pool.map(attempt, range(burst + 1)))
    # Exactly `limit` passwords were checked (wrong: 401, or the right one: 302); every other attempt was
    # refused unchecked, whatever the interleaving.
    assert statuses.count(401) + statuses.count(302) == limit, statuses
    assert statuses.count(429) == burst + 1 - limit, statuses
    # And the account is locked for this address afterwards, even for the right password.
    assert sign_in(app.test_client(), "ann@acme.example", address=ATTACKER).status_code == 429


# ------------------------------------------------------------------------------- 2. sign-out ends sessions


def copied_session(app, client):
    """A second client holding a copy of the first one's session cookie."""
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = OWNER  # the same address and browser: session protection cannot tell
    cookie = client.get_cookie("session")
    assert cookie is not None
    other.set_cookie("session", cookie.value)
    return other


def test_sign_out_ends_a_copied_session(app, factory, client):
    client.environ_base["REMOTE_ADDR"] = OWNER
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    assert sign_in(client, "ann@acme.example").status_code == 302
    thief = copied_session(app, client)
    assert thief.get("/settings/crm").status_code == 200
    token = csrf_from(client.get("/settings/crm").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    resp = thief.get("/settings/crm")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_password_change_and_disabling_end_every_session(app, factory, client, runner):
    client.environ_base["REMOTE_ADDR"] = OWNER
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    assert sign_in(client, "ann@acme.example").status_code == 302
    other_device = app.test_client()
    other_device.environ_base["REMOTE_ADDR"] = OWNER
    assert sign_in(other_device, "ann@acme.example").status_code == 302
    result = runner.invoke(args=["users", "set-password", "--email", "ann@acme.example", "--password-stdin"],
                           input="Another-Long-Pass-7\n")
    assert result.exit_code == 0, result.output
    for c in (client, other_device):
        assert c.get("/settings/crm").status_code == 302
    assert sign_in(client, "ann@acme.example", "Another-Long-Pass-7").status_code == 302
    assert client.get("/settings/crm").status_code == 200
    result = runner.invoke(args=["users", "disable", "--email", "ann@acme.example"])
    assert result.exit_code == 0, result.output
    assert client.get("/settings/crm").status_code == 302
    refused = sign_in(app.test_client(), "ann@acme.example", "Another-Long-Pass-7")
    assert refused.status_code == 401


# ------------------------------------------------------------------------ 3. the lockout reveals nothing


def test_unknown_email_is_answered_like_a_locked_account(app, factory):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    limit = app.config["LOGIN_MAX_FAILURES"]
    answers = {}
    for email in ("ann@acme.example", "nobody@acme.example"):
        client = app.test_client()
        for _ in range(limit):
            assert sign_in(client, email, "Wrong-Password-1", ATTACKER).status_code == 401
        answers[email] = sign_in(client, email, "Wrong-Password-1", ATTACKER)
    real, unknown = answers["ann@acme.example"], answers["nobody@acme.example"]
    assert real.status_code == unknown.status_code == 429
    assert "Too many failed sign-ins" in real.text
    assert without_token(real.text) == without_token(unknown.text)


def test_guessing_from_one_address_does_not_lock_the_owner_out(app, factory):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    attacker = app.test_client()
    for _ in range(app.config["LOGIN_MAX_FAILURES"] + 3):
        sign_in(attacker, "ann@acme.example", "Wrong-Password-1", ATTACKER)
    assert sign_in(attacker, "ann@acme.example", address=ATTACKER).status_code == 429
    assert sign_in(app.test_client(), "ann@acme.example", address=OWNER).status_code == 302


def test_guessing_from_many_addresses_is_limited_per_account_too(app, factory):
    from portal.models import utcnow

    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    limit = app.config["LOGIN_MAX_FAILURES"]
    answers = []
    for host in range(1, 11):  # ten addresses, each staying under its own limit
        client = app.test_client()
        for _ in range(limit):
            answers.append(sign_in(client, "ann@acme.example", "Wrong-Password-1", f"192.0.2.{host}").status_code)
    assert answers.count(401) == limit * 4  # every address together gets four addresses' worth of guesses
    assert set(answers[limit * 4:]) == {429}
    fresh = sign_in(app.test_client(), "ann@acme.example", address="192.0.2.200")
    assert fresh.status_code == 429  # the right password from yet another address waits too …
    with app.app_context():
        from portal.models import LoginThrottle

        longest = max(until for until in db.session.scalars(select(LoginThrottle.locked_until)) if until)
    assert (longest - utcnow()).total_seconds() <= 3600  # … but never more than an hour


def test_an_ipv6_client_is_counted_by_its_block(app, factory):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    client = app.test_client()
    for host in range(app.config["LOGIN_MAX_FAILURES"]):
        assert sign_in(client, "ann@acme.example", "Wrong-Password-1", f"2001:db8:1:2::{host + 1}").status_code == 401
    assert sign_in(client, "ann@acme.example", "Wrong-Password-1", "2001:db8:1:2:ffff::9").status_code == 429
    assert sign_in(app.test_client(), "ann@acme.example", address="2001:db8:1:3::1").status_code == 302


def test_each_further_lock_lasts_longer(app, factory):
    from portal.models import LoginThrottle, utcnow

    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    limit = app.config["LOGIN_MAX_FAILURES"]
    client = app.test_client()
    waits = []
    for _ in range(3):
        for _ in range(limit):
            assert sign_in(client, "ann@acme.example", "Wrong-Password-1", ATTACKER).status_code == 401
        locked = sign_in(client, "ann@acme.example", "Wrong-Password-1", ATTACKER)
        assert locked.status_code == 429
        waits.append(int(re.search(r"Try again in (\d+) minute", locked.text).group(1)))
        with app.app_context():  # the lock runs out
            db.session.execute(LoginThrottle.__table__.update().values(locked_until=utcnow()))
            db.session.commit()
    assert waits == [5, 10, 20]


# ------------------------------------------------------------------------- 5. internal email domains


@pytest.mark.parametrize("email", ["ops@corp.local", "admin@intranet", "it.desk@ad.contoso.internal"])
def test_users_on_internal_domains_can_sign_in(factory, email):
    factory.org("Acme Partner")
    factory.user(email, "Acme Partner")
    resp = sign_in(factory.app.test_client(), email)
    assert resp.status_code == 302, resp.text


@pytest.mark.parametrize("email", ["no-at-sign", "two@@at.example", "a b@example.com", "ann@", "@example.com",
                                   "ann@exa mple.com", "ann@-bad-.example", "ann..x@example.com"])
def test_one_email_rule_everywhere(app, factory, runner, email):
    from portal.validation import email_problem

    assert email_problem(email)
    factory.org("Acme Partner")
    result = runner.invoke(args=["users", "create", "--email", email, "--password", "Long-Enough-Pass-8",
                                 "--org", "Acme Partner", "--role", "admin"])
    assert result.exit_code != 0
    resp = sign_in(app.test_client(), email)
    assert resp.status_code == 422


# ------------------------------------------------------------------------------ 7. the only supplier


def test_general_settings_preselect_the_only_supplier(app, factory, partner_admin, client):
    from portal.models import Organization

    with app.app_context():
        supplier_id = db.session.scalar(select(Organization.id).where(Organization.name == "Acme Supplier"))
    page = client.get(f"/settings/crm/{partner_admin['integration_id']}/edit").text
    option = re.search(rf'<option[^>]*value="{supplier_id}"[^>]*>', page).group(0)
    assert "selected" in option


def test_general_settings_preselect_nothing_with_two_suppliers(app, factory, auth, client):
    factory.org("One Supplier", "supplier")
    factory.org("Two Supplier", "supplier")
    org_id = factory.org("Busy Partner", "partner", ("One Supplier", "Two Supplier"))
    factory.user("admin@busy.example", "Busy Partner")
    integration_id = factory.integration(org_id)
    assert auth.login("admin@busy.example").status_code == 302
    page = client.get(f"/settings/crm/{integration_id}/edit").text
    assert re.search(r'<option[^>]*selected[^>]*value="0"|<option[^>]*value="0"[^>]*selected', page)


# ------------------------------------------------------------------------------------ 4. junk input


def row_counts(app) -> dict[str, int]:
    """Rows per table, to prove that a refused request stored nothing."""
    with app.app_context():
        return {t.name: db.session.scalar(select(func.count()).select_from(t)) for t in db.metadata.sorted_tables
                if t.name not in ("login_throttles",)}


HUGE = "99999999999999999999999"


@pytest.mark.parametrize("path", [
    "/settings/crm/{iid}/edit", "/settings/crm/" + HUGE + "/edit", "/settings/crm/{iid}/runs/" + HUGE,
    "/settings/crm/{iid}/runs?before=" + HUGE, "/settings/crm/{iid}/runs?before=-" + HUGE,
    "/settings/partners?page=" + HUGE, "/settings/crm/{iid}/runs/2147483648/status",
    "/settings/crm/{iid}/runs/9223372036854775808/failures.csv",
])
def test_numbers_too_large_for_the_database_are_not_found(partner_admin, client, path):
    resp = client.get(path.format(iid=partner_admin["integration_id"]))
    assert resp.status_code in (200, 400, 404), resp.status_code


def test_huge_page_numbers_on_the_leads_pages(factory, auth, client):
    factory.org("Acme Supplier", "supplier")
    factory.org("Acme Partner", "partner", ("Acme Supplier",))
    factory.user("ann@acme.example", "Acme Partner", "member")
    assert auth.login("ann@acme.example").status_code == 302
    assert client.get("/leads?page=" + HUGE).status_code in (200, 400, 404)


def test_huge_ids_in_posts_are_not_found(app, partner_admin, client):
    token = csrf_from(client.get("/settings/crm").text)
    before = row_counts(app)
    for path in ("/settings/crm/" + HUGE + "/toggle", "/settings/notices/" + HUGE + "/dismiss",
                 "/settings/crm/" + HUGE + "/general", "/leads/" + HUGE + "/accept"):
        resp = client.post(path, data={"csrf_token": token, "state": "on"})
        assert resp.status_code in (400, 403, 404), (path, resp.status_code)
    assert row_counts(app) == before


def test_a_broken_ipv6_url_gets_a_message(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    token = csrf_from(client.get(f"/settings/crm/{iid}/edit").text)
    resp = client.post(f"/settings/crm/{iid}/validate/org_url", data={"connection-org_url": "http://[::1/web"},
                       headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert resp.status_code == 200 and "The URL" in resp.text
    before = row_counts(app)
    resp = client.post(f"/settings/crm/{iid}/connection", data={
        "csrf_token": token, "connection-username": "svc", "connection-org_url": "http://[::1/web",
        "connection-odata_url": "http://[::1/api/data/v8.2/", "connection-domain": "CONTOSO",
        "connection-password": "Pass-Word-1"})
    assert resp.status_code == 422
    assert "The URL" in resp.text
    assert row_counts(app) == before


def api_client(app, factory, kind: str = "supplier"):
    """A client and the headers of an organization's API token."""
    from portal.tokens import create_token

    if kind == "supplier":
        org_id = factory.org("Api Supplier", "supplier")
        factory.org("Api Partner", "partner", ("Api Supplier",))
    else:
        org_id = factory.org("Api Partner", "partner")
    with app.app_context():
        _, raw = create_token(org_id, "tests")
        db.session.commit()
    return app.test_client(), {"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}


def test_json_nested_too_deep_is_refused(app, factory):
    client, headers = api_client(app, factory)
    before = row_counts(app)
    resp = client.post("/api/v1/leads", data="[" * 100_000 + "]" * 100_000, headers=headers)
    assert resp.status_code == 400 and resp.json["error"]["code"] == "bad_json"
    resp = client.post("/api/v1/leads", data='{"email": "a@b.example", "custom_fields": ' + "{\"a\": " * 100_000
                       + "1" + "}" * 100_001, headers=headers)
    assert resp.status_code == 400
    assert row_counts(app) == before


@pytest.mark.parametrize(("path", "payload", "field"), [
    ("/api/v1/leads", '{"email": "ann@acme.example", "first_name": "\\ud800"}', "first_name"),
    ("/api/v1/leads", '{"email": "ann@acme.example", "company": "Acme\\u0000 Ltd"}', "company"),
    ("/api/v1/leads", '{"email": "ann@acme.example", "custom_fields": {"note": "a\\u001bb"}}', "custom_fields.note"),
    ("/api/v1/leads", '{"email": "ann\\u0000@acme.example"}', "email"),
    ("/api/v1/campaigns", '{"name": "Spring\\u0007", "type_code": 1}', "name"),
    ("/api/v1/campaigns", '{"name": "Spring", "description": "line\\u000bbreak"}', "description"),
    ("/api/v1/distributions", '{"partner": "Api Partner", "lead": {"email": "b@acme.example", '
                              '"last_name": "\\udfff"}}', "lead.last_name"),
])
def test_control_characters_in_json_are_refused_naming_the_field(app, factory, path, payload, field):
    client, headers = api_client(app, factory)
    before = row_counts(app)
    resp = client.post(path, data=payload.encode(), headers=headers)
    assert resp.status_code == 422, resp.text
    assert field in resp.json["error"]["message"]
    assert row_counts(app) == before


def test_tab_and_line_breaks_stay_allowed_in_a_description(app, factory):
    client, headers = api_client(app, factory)
    resp = client.post("/api/v1/campaigns", json={"name": "Spring", "description": "one\tcolumn\r\nnext line"},
                       headers=headers)
    assert resp.status_code == 201, resp.text
    assert resp.json["description"] == "one\tcolumn\r\nnext line"


def test_control_characters_in_events_are_refused(app, factory):
    client, headers = api_client(app, factory, kind="partner")
    lead = client.post("/api/v1/leads", json={"email": "ann@acme.example"}, headers=headers)
    assert lead.status_code == 201
    before = row_counts(app)
    resp = client.post(f"/api/v1/leads/{lead.json['id']}/events",
                       data=b'[{"type": "email_click", "occurred_at": "2026-11-26T10:00:00Z", '
                            b'"details": {"subject": "x\\u0000"}}]', headers=headers)
    assert resp.status_code == 422 and "details.subject" in resp.json["error"]["message"]
    assert row_counts(app) == before


@pytest.mark.parametrize("value", ["Acme\x00", "Ac\x1bme", "x\x0by"])
def test_control_characters_in_forms_get_a_message_on_the_field(app, factory, auth, client, value):
    factory.org("Acme Supplier", "supplier")
    factory.org("Acme Partner", "partner", ("Acme Supplier",))
    factory.user("boss@supplier.example", "Acme Supplier")
    assert auth.login("boss@supplier.example").status_code == 302
    page = client.get("/leads/distribute").text
    partner_id = re.search(r'<option value="(\d+)"', page).group(1)
    before = row_counts(app)
    resp = client.post("/leads/distribute", data={"csrf_token": csrf_from(page), "partner_id": partner_id,
                                                  "email": "lead@acme.example", "company": value})
    assert resp.status_code == 422
    assert "control character" in resp.text
    assert row_counts(app) == before


def test_nul_in_the_sign_in_form_is_a_message_not_a_500(factory, client):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    resp = sign_in(client, "ann@acme.example\x00", "x\x00y")
    assert resp.status_code == 422


def test_quiet_unlocked_pairs_are_forgotten_when_guessing_starts(app, factory):
    from datetime import timedelta

    from portal.models import LoginThrottle, utcnow

    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    client = app.test_client()
    sign_in(client, "old@acme.example", "Wrong-Password-1", OWNER)
    with app.app_context():
        db.session.execute(LoginThrottle.__table__.update().values(updated_at=utcnow() - timedelta(days=2)))
        db.session.commit()
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        sign_in(client, "ann@acme.example", "Wrong-Password-1", ATTACKER)
    with app.app_context():
        left = db.session.scalars(select(LoginThrottle.email)).all()
    assert set(left) == {"ann@acme.example"}
