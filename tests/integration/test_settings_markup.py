"""The listing and the supplier's partners write what they wrote before they were made cheaper, byte for byte.

The pages as they were drawn before are kept in tests/fixtures/markup (*_before.html), each fed as its view fed it:
whole ORM objects read one statement each, forms for their CSRF token, a partner's line drawn cell by cell.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask_login import login_user
from jinja2 import ChoiceLoader, DictLoader
from sqlalchemy import func, select

from portal.extensions import db
from portal.forms import CsrfOnlyForm, ToggleForm
from portal.models import (
    BackgroundJob,
    CrmIntegration,
    IntegrationState,
    JobStatus,
    Notice,
    Organization,
    User,
    integration_for,
)
from portal.views import settings

from ..conftest import count_statements, session_time_zone, tokens, without_tokens

BEFORE = Path(__file__).resolve().parents[1] / "fixtures" / "markup"
TEMPLATES = {"settings/crm.html": "crm_before.html", "settings/_crm_row.html": "crm_row_before.html",
             "settings/_health.html": "health_before.html", "settings/partners.html": "partners_before.html"}
HOSTILE = 'say "hi" & <b>bye</b> \'single\''
MOMENT = datetime(2026, 11, 30, 9, 5, 7, tzinfo=UTC)


def _drawn_before(app, email: str, path: str, template: str, context) -> str:
    """The page as the old templates drew it for this user, fed by ``context()`` (called signed in, in a request)."""
    env = app.jinja_env.overlay(loader=ChoiceLoader(
        [DictLoader({name: (BEFORE / file).read_text() for name, file in TEMPLATES.items()}), app.jinja_env.loader]))
    with app.test_request_context(path):
        login_user(db.session.scalar(select(User).where(User.email == email)))
        values = context()
        app.update_template_context(values)
        return env.get_template(template).render(values)


def _listing_before() -> dict:
    """What the listing's view gave its template before: a statement each, and two forms for their token."""
    from flask_login import current_user

    org_id = current_user.organization_id
    health = db.session.scalar(select(BackgroundJob).where(BackgroundJob.kind == "health",
                                                           BackgroundJob.organization_id == org_id)
                               .order_by(BackgroundJob.created_at.desc()).limit(1))
    notices = db.session.scalars(select(Notice).where(Notice.organization_id == org_id, Notice.dismissed_at.is_(None))
                                 .order_by(Notice.created_at.desc(), Notice.id.desc()).limit(20)).all()
    return {"rows": [integration_for(current_user.organization)], "toggle_form": ToggleForm(), "health": health,
            "csrf_form": CsrfOnlyForm(), "notices": notices, "is_supplier": current_user.organization.is_supplier}


def _same_as_before(app, client, email: str, path: str, template: str, context) -> str:
    page = client.get(path)
    assert page.status_code == 200
    assert len(tokens(page.text)) == 1, "one token, the session's, in every form"
    before = _drawn_before(app, email, path, template, context)
    assert without_tokens(page.text) == without_tokens(before)
    return page.text


def _job(org_id: int, status: JobStatus, age: int, message: str = "") -> None:
    created = MOMENT - timedelta(minutes=age)
    db.session.add(BackgroundJob(id=f"health-{org_id}-{age}", kind="health", organization_id=org_id, status=status,
                                 message=message, created_at=created,
                                 finished_at=created + timedelta(milliseconds=1234) if status.value in (
                                     "finished", "failed") else None))


def _notice(org_id: int, message: str, age: int, dismissed: bool = False) -> int:
    notice = Notice(organization_id=org_id, message=message, created_at=MOMENT - timedelta(minutes=age),
                    dismissed_at=MOMENT if dismissed else None)
    db.session.add(notice)
    db.session.flush()
    return notice.id


def _integration(app, iid: int, **fields) -> None:
    with app.app_context():
        integration = db.session.get(CrmIntegration, iid)
        for key, value in fields.items():
            setattr(integration, key, value)
        db.session.commit()


def test_the_listing_writes_what_it_wrote_in_every_state(app, factory, partner_admin, client):
    email, org_id, iid = partner_admin["email"], partner_admin["org_id"], partner_admin["integration_id"]
    other = factory.org("Other Partner", "partner", ("Acme Supplier",))

    def same(expect: tuple[str, ...] = (), absent: tuple[str, ...] = ()) -> str:
        text = _same_as_before(app, client, email, "/settings/crm", "settings/crm.html", _listing_before)
        assert all(e in text for e in expect) and not any(a in text for a in absent), (expect, absent)
        return text

    same(("Not tested yet", 'data-state="Off"', "Not checked yet"), ("banner notice", "data-health="))
    with app.app_context():  # On and tested; two notices (one hostile), one dismissed, another organization's
        _job(org_id, JobStatus.finished, 5, "The background worker answered.")
        _job(org_id, JobStatus.failed, 50, "older")
        _job(other, JobStatus.failed, 1, "theirs")
        _notice(org_id, HOSTILE, 3)
        _notice(org_id, "The integration was switched Off.", 1)
        _notice(org_id, "dismissed before", 0, dismissed=True)
        _notice(other, "another organization's notice", 0)
        db.session.commit()
    _integration(app, iid, enabled=True, last_test_ok=True, last_test_at=MOMENT)
    text = same(('data-state="On"', "Passed · ", 'data-health="ok"', "say &#34;hi&#34; &amp; &lt;b&gt;bye"),
                ("another organization", "theirs", "dismissed before", "<b>bye</b>"))
    assert text.index("switched Off.") < text.index("say &#34;hi"), "the newest notice first"
    # An error after a passing test (a sync failed), the health check failed last.
    with app.app_context():
        _job(org_id, JobStatus.failed, 2, HOSTILE)
        db.session.commit()
    _integration(app, iid, error_code="auth_failed", error_message=HOSTILE, error_action="Check <it>.", error_at=MOMENT)
    same(('data-state="Error"', 'data-error-source="sync"', 'data-health="failed"', "Check &lt;it&gt;."))
    # The error of a failed connection test, a health check still waiting (the fragment polls).
    with app.app_context():
        _job(org_id, JobStatus.queued, 1)
        db.session.commit()
    _integration(app, iid, enabled=False, last_test_ok=False, error_at=MOMENT + timedelta(hours=1))
    same(('data-error-source="test"', "Failed · ", 'data-health="waiting"', 'hx-trigger="every 1s"'))
    # Online, never tested, with an error and no date.
    _integration(app, iid, connection_kind="online", last_test_at=None, last_test_ok=None, error_at=None)
    same(("Microsoft Dynamics 365 (online)", "Not tested yet", 'data-code="auth_failed"'), ("banner-when",))


def test_a_supplier_listing_and_a_first_visit_write_what_they_wrote(app, factory, auth, client):
    factory.org(HOSTILE, "supplier")
    email = factory.user("boss@hostile.example", HOSTILE, "admin")
    auth.login(email)
    text = _same_as_before(app, client, email, "/settings/crm", "settings/crm.html", _listing_before)
    assert "See your partners' CRM connections" in text
    with app.app_context():  # the first visit made the integration and kept it
        assert db.session.scalar(select(func.count()).select_from(CrmIntegration)) == 1


def test_a_dismissed_notice_goes_at_once_and_others_stay(app, partner_admin, client, auth):
    with app.app_context():
        first = _notice(partner_admin["org_id"], "first notice", 2)
        _notice(partner_admin["org_id"], "second notice", 1)
        db.session.commit()
    assert "first notice" in client.get("/settings/crm").text
    resp = client.post(f"/settings/notices/{first}/dismiss", data={"csrf_token": auth.token()},
                       headers={"HX-Request": "true"})
    assert resp.status_code == 200
    text = client.get("/settings/crm").text
    assert "first notice" not in text and "second notice" in text


def test_the_listing_runs_one_statement_for_its_data(app, partner_admin, client):
    client.get("/settings/crm")
    with app.app_context():
        _notice(partner_admin["org_id"], "a notice", 1)
        _job(partner_admin["org_id"], JobStatus.finished, 1, "ok")
        db.session.commit()
    with count_statements(app) as listing:
        assert 'data-health="ok"' in client.get("/settings/crm").text
    # The user's load, then the integration with its last health job and open notices.
    assert len(listing) == 2, listing


def _partners_before(supplier_id: int, state: str, page: int, per_page: int):
    """What the supplier's view gave its template before, read here through the ORM, one partner at a time."""

    def shown():
        partners = db.session.get(Organization, supplier_id).partners  # ordered by name, by the database
        rows, summary = [], dict.fromkeys(IntegrationState, 0)
        for partner in partners:
            integration = db.session.scalar(select(CrmIntegration).where(CrmIntegration.organization_id == partner.id))
            st = integration.state if integration else IntegrationState.off
            summary[st] += 1
            if state and st.name != state:
                continue
            tested, problem = "", ""
            if integration and integration.last_test_at:
                tested = (f"{'Passed' if integration.last_test_ok else 'Failed'} · "
                          f"{integration.last_test_at:%Y-%m-%d %H:%M UTC}")
            if integration and integration.error_at:
                problem = f"{integration.error_at:%Y-%m-%d %H:%M UTC}"
            rows.append((partner.name, st.name, st.value, tested, problem))
        start = (page - 1) * per_page
        return {"rows": rows[start:start + per_page], "summary": summary, "page": page,
                "more": len(rows) > start + per_page, "state": state, "per_page": per_page}

    return shown


def test_the_supplier_page_writes_what_it_wrote(app, factory, auth, client, monkeypatch):
    monkeypatch.setattr(settings, "PARTNERS_PER_PAGE", 4)
    supplier = factory.org("Acme Supplier", "supplier")
    factory.org("Rival Supplier", "supplier")
    email = factory.user("boss@acme.example", "Acme Supplier", "admin")
    auth.login(email)
    _same_as_before(app, client, email, "/settings/partners", "settings/partners.html",
                    _partners_before(supplier, "", 1, 4))  # no partner yet
    names = [HOSTILE, "A & B <GmbH>", "Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta"]
    for n, name in enumerate(names):
        org = factory.org(name, "partner", ("Acme Supplier",))
        if n % 5 == 4:
            continue  # never opened its settings: no integration
        fields = {"enabled": n % 3 != 0}
        if n % 4 != 1:
            fields.update(last_test_ok=n % 2 == 0, last_test_at=MOMENT - timedelta(days=n))
        if n % 3 == 2:
            fields.update(error_code="auth_failed", error_message="Refused.", error_at=MOMENT - timedelta(hours=n))
        factory.integration(org, **fields)
    factory.integration(factory.org("Rival Partner", "partner", ("Rival Supplier",)), enabled=True)
    for state in ("", "on", "off", "error"):
        for page in (1, 2, 3, 4):
            query = "&".join(q for q in (f"state={state}" if state else "", f"page={page}" if page > 1 else "") if q)
            text = _same_as_before(app, client, email, f"/settings/partners?{query}".rstrip("?"),
                                   "settings/partners.html", _partners_before(supplier, state, page, 4))
            assert "Rival Partner" not in text and "<b>bye</b>" not in text
    # A changed partner is shown changed at once.
    with app.app_context():
        partner = db.session.scalar(select(Organization).where(Organization.name == "Alpha"))
        integration = integration_for(partner)
        integration.enabled, integration.error_code, integration.error_at = True, "auth_failed", MOMENT
        partner.name = "Alpha <renamed>"
        db.session.commit()
    text = _same_as_before(app, client, email, "/settings/partners", "settings/partners.html",
                           _partners_before(supplier, "", 1, 4))
    assert 'data-partner="Alpha &lt;renamed&gt;"' in text


@pytest.mark.parametrize("state", ["", "on", "off", "error"])
def test_a_partner_is_drawn_as_it_is_now(app, factory, auth, client, state):
    supplier = factory.org("Acme Supplier", "supplier")
    email = factory.user("boss@acme.example", "Acme Supplier", "admin")
    auth.login(email)
    org = factory.org("Changing Partner", "partner", ("Acme Supplier",))
    iid = factory.integration(org, last_test_ok=True, last_test_at=MOMENT)
    path = f"/settings/partners?state={state}" if state else "/settings/partners"
    for change in ({}, {"enabled": True}, {"last_test_ok": False}, {"last_test_at": MOMENT + timedelta(minutes=1)},
                   {"error_code": "auth_failed", "error_at": MOMENT}, {"error_at": MOMENT + timedelta(hours=2)},
                   {"error_code": "", "error_at": None, "enabled": False}):
        _integration(app, iid, **change)
        _same_as_before(app, client, email, path, "settings/partners.html", _partners_before(supplier, state, 1, 100))


def test_a_partner_s_dates_are_written_in_utc_whatever_the_database_s_time_zone(app, factory, auth, client):
    """"09:05 UTC" is the moment's UTC time even where the database's sessions run far from UTC."""
    factory.org("Acme Supplier", "supplier")
    auth.login(factory.user("boss@acme.example", "Acme Supplier", "admin"))
    org = factory.org("Far Partner", "partner", ("Acme Supplier",))
    iid = factory.integration(org, last_test_ok=True, last_test_at=MOMENT)
    _integration(app, iid, error_code="auth_failed", error_at=MOMENT + timedelta(hours=2))
    with session_time_zone(app, "Pacific/Auckland"):
        text = client.get("/settings/partners").text
    assert "Failed · 2026-11-30 09:05 UTC" in text or "Passed · 2026-11-30 09:05 UTC" in text
    assert "<td>2026-11-30 11:05 UTC</td>" in text


def test_the_listing_writes_utc_whatever_the_session_zone_and_keeps_no_other_zone(app, partner_admin, client):
    """A test at 09:05 UTC is written "09:05 UTC" under any session zone, and a body drawn on a connection in another
    zone is never served as UTC (equal moments in two zones compare equal, so a key alone would not tell them)."""
    iid = partner_admin["integration_id"]
    _integration(app, iid, last_test_ok=True, last_test_at=MOMENT, error_code="sync_failed", error_message="m",
                 error_action="a", error_at=MOMENT + timedelta(hours=2))
    with session_time_zone(app, "Pacific/Auckland"):
        far = client.get("/settings/crm").text
    near = client.get("/settings/crm").text
    for text in (far, near):
        assert re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", text) == ["2026-11-30 09:05 UTC", "2026-11-30 11:05 UTC",
                                                                      "2026-11-30 11:05 UTC"], text
