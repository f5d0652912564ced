"""Sign-in, sign-out, lockout and CSRF."""

from __future__ import annotations

from ..conftest import csrf_from


def test_login_and_logout(factory, client, auth):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    resp = auth.login("ann@acme.example")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/settings/")
    assert client.get("/settings/crm").status_code == 200
    token = auth.token()
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/settings/crm").status_code == 302  # back to the sign-in page


def test_email_is_case_insensitive(factory, auth):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    assert auth.login("Ann@ACME.example").status_code == 302


def test_wrong_password_says_so_without_telling_which(factory, auth):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    wrong = auth.login("ann@acme.example", "Not-The-Password-1")
    unknown = auth.login("nobody@acme.example", "Not-The-Password-1")
    assert wrong.status_code == unknown.status_code == 401
    assert "The email or password is not right" in wrong.text
    assert "The email or password is not right" in unknown.text


def test_lockout_after_repeated_failures(app, factory, auth):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    limit = app.config["LOGIN_MAX_FAILURES"]
    for _ in range(limit):
        assert auth.login("ann@acme.example", "Wrong-Password-1").status_code == 401
    locked = auth.login("ann@acme.example")  # even the right password is refused now
    assert locked.status_code == 429
    assert "Try again in 5 minutes" in locked.text


def test_lockout_ends(app, factory, auth):
    from datetime import timedelta

    from portal.models import LoginThrottle, utcnow

    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        auth.login("ann@acme.example", "Wrong-Password-1")
    with app.app_context():
        from portal.extensions import db

        throttle = db.session.query(LoginThrottle).filter(LoginThrottle.client != "*").one()  # this address
        assert throttle.locked_until is not None
        throttle.locked_until = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert auth.login("ann@acme.example").status_code == 302


def test_login_without_csrf_is_rejected(factory, client):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    resp = client.post("/login", data={"email": "ann@acme.example", "password": "Correct-Horse-9"})
    assert resp.status_code == 400
    assert "security token" in resp.text


def test_post_with_forged_csrf_is_rejected(partner_admin, client):
    resp = client.post(f"/settings/crm/{partner_admin['integration_id']}/toggle",
                       data={"state": "off", "csrf_token": "forged"})
    assert resp.status_code == 400
    resp = client.post(f"/settings/crm/{partner_admin['integration_id']}/toggle", data={"state": "off"},
                       headers={"HX-Request": "true", "X-CSRFToken": "forged"})
    assert resp.status_code == 400


def test_open_redirect_is_refused(factory, client):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    page = client.get("/login?next=//evil.example/x")
    resp = client.post("/login", data={"email": "ann@acme.example", "password": "Correct-Horse-9",
                                       "next": "//evil.example/x", "csrf_token": csrf_from(page.text)})
    assert resp.headers["Location"].endswith("/settings/")


def test_session_cookie_is_http_only(factory, client, auth):
    factory.org("Acme Partner")
    factory.user("ann@acme.example", "Acme Partner")
    resp = auth.login("ann@acme.example")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
