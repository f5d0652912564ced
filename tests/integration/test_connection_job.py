"""Save and Test CRM Connection end to end: the web app enqueues, a real RQ worker runs it against the sandbox."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from markupsafe import escape
from rq import SimpleWorker
from rq.job import Job
from sqlalchemy import func, select

from portal import queues
from portal.connectors.dynamics import AuthFailedError
from portal.extensions import db
from portal.models import BackgroundJob, CrmIntegration, JobStatus, Notice, utcnow

STEPS = ["URL check", "DNS and TCP", "TLS", "NTLM handshake", "Organization Service", "WhoAmI", "Version",
         "Read access", "Lead source option", "OData"]
WRONG = "Wrong-Secret-Xy7"


def save_and_test(client, auth, integration_id: int, crm, password: str | None, action: str = "test"):
    """POST the CRM Connection Settings section as htmx does, with the sandbox's settings."""
    token = auth.token(f"/settings/crm/{integration_id}/edit")
    fields = {"username": crm.username, "password": password or "", "org_url": crm.org_url,
              "odata_url": crm.webapi_url, "domain": crm.domain, "organization_name": "", "csrf_token": token}
    data = {f"connection-{k}": v for k, v in fields.items()}
    data["action"] = action
    return client.post(f"/settings/crm/{integration_id}/connection", data=data,
                       headers={"HX-Request": "true", "X-CSRFToken": token})


def run_worker(app) -> None:
    """A real RQ worker, in this process, on the test Redis, until the connection-test queue is empty."""
    with app.app_context():
        worker = SimpleWorker([queues.queue(queues.QUEUE_TESTS)], connection=queues.redis())
        worker.work(burst=True)


def connection_tests(app, integration_id: int) -> list[BackgroundJob]:
    with app.app_context():
        rows = db.session.scalars(
            select(BackgroundJob).where(BackgroundJob.integration_id == integration_id,
                                        BackgroundJob.kind == "connection-test")
            .order_by(BackgroundJob.created_at)
        ).all()
        for row in rows:
            db.session.expunge(row)
        return list(rows)


def integ(app, integration_id: int) -> CrmIntegration:
    with app.app_context():
        row = db.session.get(CrmIntegration, integration_id)
        db.session.expunge(row)
        return row


def status(client, integration_id: int, job_id: str):
    return client.get(f"/settings/crm/{integration_id}/tests/{job_id}")


def banner(listing_html: str, integration_id: int) -> str:
    """The listing's row for the integration (with its banner, if any)."""
    match = re.search(rf'<tbody id="crm-{integration_id}".*?</tbody>', listing_html, re.S)
    assert match, "the integration's row is not in the listing"
    return match.group(0)


def one_test(app, client, auth, iid: int, crm, password: str | None):
    """Save and Test, run the worker, and return (job id, status fragment response)."""
    before = {t.id for t in connection_tests(app, iid)}
    resp = save_and_test(client, auth, iid, crm, password)
    assert resp.status_code == 200, resp.text
    new = [t for t in connection_tests(app, iid) if t.id not in before]
    assert len(new) == 1
    job_id = new[0].id
    # Until a worker runs it, the fragment polls the status view.
    assert f'hx-get="/settings/crm/{iid}/tests/{job_id}"' in resp.text and 'data-test="running"' in resp.text
    run_worker(app)
    return job_id, status(client, iid, job_id)


def test_save_and_test_passes_on_a_real_worker(app, partner_admin, client, auth, crm):
    iid = partner_admin["integration_id"]
    job_id, resp = one_test(app, client, auth, iid, crm, crm.password)
    assert resp.status_code == 286  # htmx stops polling
    assert 'data-test="passed"' in resp.text and "Connected as" in resp.text
    assert resp.text.count('data-ok="true"') == len(STEPS) and 'data-ok="false"' not in resp.text
    for name in STEPS:
        assert f"<strong>{name}</strong>" in resp.text
    assert "hx-get" not in resp.text

    job = connection_tests(app, iid)[0]
    assert job.status == JobStatus.finished and job.message.startswith("Connected as")
    assert [s["name"] for s in job.steps] == STEPS and all(s["ok"] for s in job.steps)
    row = integ(app, iid)
    assert row.last_test_ok is True and row.last_test_at is not None
    assert row.last_test_fingerprint == row.connection_fingerprint()
    assert row.test_passed_on_saved_settings and row.lead_source_value is not None
    assert row.error_code == "" and row.auth_failures == 0
    listing = banner(client.get("/settings/crm").text, iid)
    assert "Passed ·" in listing and "banner-row" not in listing


def test_wrong_password_raises_the_banner_and_a_pass_lowers_it(app, partner_admin, client, auth, crm):
    iid = partner_admin["integration_id"]
    _, resp = one_test(app, client, auth, iid, crm, WRONG)
    assert resp.status_code == 286
    assert 'data-test="failed"' in resp.text and 'data-code="auth_failed"' in resp.text
    assert str(escape(AuthFailedError.default_action)) in resp.text
    assert resp.text.count('data-ok="false"') == 1

    row = integ(app, iid)
    assert row.last_test_ok is False and row.error_code == "auth_failed" and row.auth_failures == 1
    listing = banner(client.get("/settings/crm").text, iid)
    assert "Failed ·" in listing and 'data-code="auth_failed"' in listing
    assert f"What to do: {escape(AuthFailedError.default_action)}" in listing
    assert str(escape(row.error_message)) in listing

    _, resp = one_test(app, client, auth, iid, crm, crm.password)
    assert resp.status_code == 286 and 'data-test="passed"' in resp.text
    row = integ(app, iid)
    assert row.last_test_ok is True and row.error_code == "" and row.auth_failures == 0
    listing = banner(client.get("/settings/crm").text, iid)
    assert "Passed ·" in listing and "banner-row" not in listing and "data-code" not in listing


def test_two_clicks_while_queued_enqueue_one_job(app, partner_admin, client, auth, crm):
    iid = partner_admin["integration_id"]
    first = save_and_test(client, auth, iid, crm, crm.password)
    second = save_and_test(client, auth, iid, crm, "")  # the password is kept when left empty
    assert first.status_code == second.status_code == 200
    assert "A connection test is already running" in second.text
    jobs = connection_tests(app, iid)
    assert len(jobs) == 1 and jobs[0].status == JobStatus.queued
    with app.app_context():
        assert queues.queue(queues.QUEUE_TESTS).count == 1
    run_worker(app)
    assert status(client, iid, jobs[0].id).status_code == 286
    assert connection_tests(app, iid)[0].status == JobStatus.finished


def test_a_failed_test_switches_an_enabled_integration_off(app, factory, partner_admin, client, auth, crm):
    """The connection-test job's own rule (L2): settings that fail their test do not stay On."""
    iid = partner_admin["integration_id"]
    factory.profile(iid)
    one_test(app, client, auth, iid, crm, crm.password)
    token = auth.token()
    on = client.post(f"/settings/crm/{iid}/toggle", data={"state": "on", "csrf_token": token},
                     headers={"HX-Request": "true", "X-CSRFToken": token})
    assert on.status_code == 200 and integ(app, iid).enabled

    _, resp = one_test(app, client, auth, iid, crm, WRONG)
    assert 'data-code="auth_failed"' in resp.text
    row = integ(app, iid)
    assert row.enabled is False and row.error_code == "auth_failed"
    assert row.error_message.endswith("The integration was switched Off.")
    listing = banner(client.get("/settings/crm").text, iid)
    assert "The integration was switched Off." in listing and 'aria-checked="false"' in listing


def test_three_auth_failures_in_a_row_switch_off_with_a_notice(app, partner_admin, client):
    """lifecycle.record_failure, as the jobs that talk to the CRM call it: the third auth failure switches Off.

    The connection-test job cannot reach the third strike (it switches Off at the first failed test), so
    this drives the rule directly, inside an app context, as a sync job would.
    """
    from portal.lifecycle import record_failure, record_success

    iid = partner_admin["integration_id"]
    err = AuthFailedError()
    with app.app_context():
        row = db.session.get(CrmIntegration, iid)
        row.enabled = True
        assert row.auth_failure_limit == 3
        # A success in between starts the count again.
        assert record_failure(row, err.code, err.message, err.action) is False
        record_success(row)
        assert row.auth_failures == 0 and row.error_code == ""
        # Other failures neither count nor switch Off.
        assert record_failure(row, "server_busy", "The CRM server is busy.", "Nothing to change.") is False
        assert row.auth_failures == 0
        switched = [record_failure(row, err.code, err.message, err.action) for _ in range(3)]
        db.session.commit()
        assert switched == [False, False, True]
        assert row.enabled is False and row.auth_failures == 3 and row.error_code == "auth_failed"
        assert "After 3 authentication failures in a row the integration was switched Off." in row.error_message
        assert row.error_action.endswith("switch the integration On again.")
        notices = db.session.scalars(select(Notice).where(Notice.organization_id == partner_admin["org_id"])).all()
        assert len(notices) == 1 and "was switched Off" in notices[0].message
    page = client.get("/settings/crm").text
    listing = banner(page, iid)
    assert 'data-code="auth_failed"' in listing and "was switched Off" in listing
    assert 'aria-checked="false"' in listing
    assert str(escape(notices[0].message)) in page
    with app.app_context():
        # A further failure while Off adds no second notice.
        row = db.session.get(CrmIntegration, iid)
        assert record_failure(row, err.code, err.message, err.action) is False
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(Notice)) == 1


def test_status_says_no_worker_when_the_test_sits_queued(app, partner_admin, client, auth, crm):
    iid = partner_admin["integration_id"]
    save_and_test(client, auth, iid, crm, crm.password)
    job = connection_tests(app, iid)[0]
    fresh = status(client, iid, job.id)
    assert fresh.status_code == 200 and 'data-test="running"' in fresh.text and "hx-get" in fresh.text
    with app.app_context():
        row = db.session.get(BackgroundJob, job.id)
        row.created_at = utcnow() - timedelta(seconds=app.config["WORKER_STALE_SECONDS"] + 60)
        db.session.commit()
    stuck = status(client, iid, job.id)
    assert stuck.status_code == 286
    assert 'data-test="stuck"' in stuck.text and "No background worker has picked the test up" in stuck.text
    assert "hx-get" not in stuck.text
    # A new click is not swallowed by the stuck job: it enqueues another.
    save_and_test(client, auth, iid, crm, "")
    assert len(connection_tests(app, iid)) == 2


def _messages(records: list[logging.LogRecord]) -> str:
    out = []
    for record in records:
        out.append(record.getMessage())
        out.append(repr(record.args))
        if record.exc_text:
            out.append(record.exc_text)
    return "\n".join(out)


def test_nothing_logs_the_crm_password_or_authorization(app, partner_admin, client, auth, crm, caplog):
    iid = partner_admin["integration_id"]
    with caplog.at_level(logging.DEBUG):
        _, ok = one_test(app, client, auth, iid, crm, crm.password)
        _, failed = one_test(app, client, auth, iid, crm, WRONG)
    assert 'data-test="passed"' in ok.text and 'data-code="auth_failed"' in failed.text
    text = _messages(caplog.records)
    # The run did log at DEBUG (urllib3's request lines, the worker), so the check is not vacuous.
    assert "Organization.svc/web" in text and any(r.levelno == logging.DEBUG for r in caplog.records)
    assert crm.password not in text and WRONG not in text
    assert "TlRMTVNT" not in text  # base64 of NTLMSSP: an NTLM Authorization header value
    assert not re.search(r"(?i)authorization\s*[:=]\s*(?!\[redacted\])\S", text)
    # Nor do the job's arguments in Redis or its row carry it.
    with app.app_context():
        for row in connection_tests(app, iid):
            job = Job.fetch(row.id, connection=queues.redis())
            assert crm.password not in repr(job.args) + repr(job.kwargs)
            assert WRONG not in repr(job.args) + repr(job.kwargs)
            assert crm.password not in row.steps_json + row.result_json + row.message
            assert WRONG not in row.steps_json + row.result_json + row.message


@pytest.fixture(autouse=True)
def _empty_queue(app):
    """No test leaves a job queued for the next (the app fixture flushes Redis too; this is belt and braces)."""
    yield
    with app.app_context():
        queues.queue(queues.QUEUE_TESTS).empty()
