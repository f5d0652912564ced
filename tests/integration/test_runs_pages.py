"""Sync history: the runs of an integration, live progress, Sync now, Preview, failures, Retry and CSV export."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import url_for
from rq import SimpleWorker
from rq.job import Job
from sqlalchemy import select

from portal import ledger, queues
from portal.extensions import db
from portal.models import CrmIntegration, utcnow
from portal.platform_models import RunStatus, SyncFailure, SyncRun
from portal.views.runs import run_lines, run_row, status_badge, when

from ..conftest import PASSWORD, Auth, count_statements, without_tokens
from .sync_helpers import configure, make_leads

HX = {"HX-Request": "true"}


def mark_tested(app, integration_id: int) -> None:
    """As if Save and Test CRM Connection had passed on the saved settings."""
    with app.app_context():
        row = db.session.get(CrmIntegration, integration_id)
        row.last_test_ok, row.last_test_at = True, utcnow()
        row.last_test_fingerprint = row.connection_fingerprint()
        db.session.commit()


def add_run(app, integration_id: int, **fields) -> int:
    """A run row as the engine leaves it (finished with counts unless told otherwise)."""
    now = utcnow()
    values = {"kind": "nightly", "trigger": "schedule", "status": RunStatus.finished, "created_at": now,
              "started_at": now, "finished_at": now + timedelta(seconds=3), "created_count": 2,
              "updated_count": 1, "skipped_count": 4, "failed_count": 0, **fields}
    with app.app_context():
        run = SyncRun(integration_id=integration_id, **values)
        db.session.add(run)
        db.session.commit()
        return run.id


def add_failure(app, run_id: int, **fields) -> int:
    """A failed record of a run."""
    with app.app_context():
        run = db.session.get(SyncRun, run_id)
        values = {"step": "push_marketing_leads", "operation": "create", "entity": "lead", "local_type": "lead",
                  "local_id": 7, "code": "crm_fault", "message": "The CRM refused the record.",
                  "action": "Fix the record and retry.", "raw": "<s:Fault>boom</s:Fault>", "retryable": False,
                  **fields}
        failure = SyncFailure(run_id=run_id, integration_id=run.integration_id, **values)
        db.session.add(failure)
        db.session.commit()
        return failure.id


def runs_of(app, integration_id: int) -> list[SyncRun]:
    with app.app_context():
        rows = db.session.scalars(select(SyncRun).where(SyncRun.integration_id == integration_id)
                                  .order_by(SyncRun.id)).all()
        for row in rows:
            db.session.expunge(row)
        return list(rows)


def set_run(app, run_id: int, **fields) -> None:
    with app.app_context():
        run = db.session.get(SyncRun, run_id)
        for key, value in fields.items():
            setattr(run, key, value)
        db.session.commit()


def post(client, auth, path: str, data: dict | None = None, htmx: bool = True):
    """POST a button's form with the page's CSRF token, as htmx does (or as a plain form)."""
    token = auth.token()
    headers = {**HX, "X-CSRFToken": token} if htmx else {}
    return client.post(path, data={"csrf_token": token, **(data or {})}, headers=headers)


def job_args(app, run: SyncRun) -> tuple:
    with app.app_context():
        return Job.fetch(run.job_id, connection=queues.redis()).args


def rows_in(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="run-(\d+)"', html)]


@pytest.fixture
def tested(app, connected) -> dict:
    """The signed-in partner's integration, saved with the sandbox's settings and tested."""
    mark_tested(app, connected["integration_id"])
    return connected


# ----------------------------------------------------------------------------------------------- the history


def test_empty_history_explains_and_is_linked_from_listing_and_edit_page(partner_admin, client):
    iid = partner_admin["integration_id"]
    page = client.get(f"/settings/crm/{iid}/runs")
    assert page.status_code == 200
    assert "No runs yet" in page.text and "Preview" in page.text and "data-empty" in page.text
    assert f'action="/settings/crm/{iid}/runs/sync"' in page.text
    assert f'action="/settings/crm/{iid}/runs/preview"' in page.text
    assert 'name="csrf_token"' in page.text
    link = f'href="/settings/crm/{iid}/runs"'
    assert link in client.get("/settings/crm").text
    assert link in client.get(f"/settings/crm/{iid}/edit").text


def test_history_lists_runs_newest_first_with_counts_and_pages_of_50(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    ids = [add_run(app, iid, kind=("nightly", "push", "manual", "retry")[i % 4], created_count=i,
                   dry_run=i == 54, trigger=f"trigger {i}") for i in range(55)]
    page = client.get(f"/settings/crm/{iid}/runs")
    assert rows_in(page.text) == list(reversed(ids))[:50]
    newest = re.search(rf'<tr id="run-{ids[-1]}".*?</tr>', page.text, re.S).group(0)
    assert "Preview" in newest and "data-dry-run" in newest and "trigger 54" in newest
    assert 'data-count="created">54<' in newest and 'data-count="skipped">4<' in newest
    assert "3.0 s" in newest and 'data-status="finished"' in newest
    assert "hx-get" not in newest  # a finished run does not poll
    kinds = {re.search(rf'<tr id="run-{ids[i]}".*?<td>(\w[\w ]*)', page.text, re.S).group(1) for i in range(50, 54)}
    assert kinds == {"Nightly", "Push", "Sync now", "Retry"}
    older = re.search(r'href="([^"]+)" data-page="older"', page.text).group(1).replace("&amp;", "&")
    second = client.get(older)
    assert rows_in(second.text) == list(reversed(ids))[50:]
    assert 'data-page="newest"' in second.text and 'data-page="older"' not in second.text


def test_history_runs_a_fixed_number_of_statements(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    for _ in range(5):
        add_run(app, iid)
    add_run(app, iid, status=RunStatus.running, finished_at=None, current_step="pull_records")
    client.get(f"/settings/crm/{iid}/runs")  # warm caches that are not per-row
    with count_statements(app) as few:
        assert client.get(f"/settings/crm/{iid}/runs").status_code == 200
    for i in range(54):
        add_run(app, iid, status=RunStatus.partial if i % 2 else RunStatus.finished, failed_count=i % 2)
    with count_statements(app) as many:
        page = client.get(f"/settings/crm/{iid}/runs")
    assert len(rows_in(page.text)) == 50
    assert len(many) == len(few), (few, many)


def test_queued_run_polls_its_status_until_done_then_286(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    run_id = add_run(app, iid, kind="manual", status=RunStatus.queued, started_at=None, finished_at=None,
                     created_count=0, updated_count=0, skipped_count=0)
    status_url = f"/settings/crm/{iid}/runs/{run_id}/status"
    page = client.get(f"/settings/crm/{iid}/runs")
    assert f'hx-get="{status_url}" hx-trigger="every 1s"' in page.text
    assert "<progress" in page.text and "Queued" in page.text

    set_run(app, run_id, status=RunStatus.running, started_at=utcnow(), current_step="pull_records",
            progress_done=5, progress_total=10)
    polled = client.get(status_url, headers=HX)
    assert polled.status_code == 200
    assert '<progress value="50" max="100"' in polled.text
    assert "Pull leads and contacts with an email" in polled.text and "hx-trigger" in polled.text
    body = client.get(f"{status_url}?part=body", headers=HX)
    assert body.status_code == 200 and 'id="run-body"' in body.text and "every 1s" in body.text

    set_run(app, run_id, status=RunStatus.finished, finished_at=utcnow(), created_count=3, message="created 3")
    done = client.get(status_url, headers=HX)
    assert done.status_code == 286
    assert "hx-trigger" not in done.text and "<progress" not in done.text
    assert 'data-count="created">3<' in done.text and 'data-status="finished"' in done.text
    assert client.get(f"{status_url}?part=body", headers=HX).status_code == 286


# ----------------------------------------------------------------------------------- Sync now and Preview


def test_sync_now_enqueues_exactly_one_run_and_refuses_a_second(app, tested, client, auth):
    iid = tested["integration_id"]
    first = post(client, auth, f"/settings/crm/{iid}/runs/sync")
    assert first.status_code == 200, first.text
    runs = runs_of(app, iid)
    assert [(r.kind, r.dry_run, r.status) for r in runs] == [("manual", False, RunStatus.queued)]
    assert runs[0].job_id and "Sync now" in runs[0].trigger
    assert f'id="run-{runs[0].id}"' in first.text
    assert 'hx-swap-oob="true"' in first.text and f"Run #{runs[0].id} queued." in first.text
    with app.app_context():
        assert queues.queue(queues.QUEUE_NIGHTLY).count == 1
    assert job_args(app, runs[0])[0] == runs[0].id

    second = post(client, auth, f"/settings/crm/{iid}/runs/sync")
    assert second.status_code == 409
    assert f"(#{runs[0].id}) is already queued" in second.text
    preview = post(client, auth, f"/settings/crm/{iid}/runs/preview")
    assert preview.status_code == 409
    assert len(runs_of(app, iid)) == 1
    with app.app_context():
        assert queues.queue(queues.QUEUE_NIGHTLY).count == 1

    # Without JavaScript: Post/Redirect/Get, and the refusal is on the page it lands on.
    plain = post(client, auth, f"/settings/crm/{iid}/runs/sync", htmx=False)
    assert plain.status_code == 302 and plain.headers["Location"].endswith(f"/settings/crm/{iid}/runs")
    assert "is already queued" in client.get(plain.headers["Location"]).text


def test_sync_now_refused_until_the_connection_is_saved_and_tested(app, partner_admin, client, auth):
    iid = partner_admin["integration_id"]
    resp = post(client, auth, f"/settings/crm/{iid}/runs/sync")
    assert resp.status_code == 409
    assert "Not started. Save the CRM Connection Settings first" in resp.text
    assert runs_of(app, iid) == []


def test_preview_queues_a_dry_run(app, tested, client, auth):
    iid = tested["integration_id"]
    resp = post(client, auth, f"/settings/crm/{iid}/runs/preview")
    assert resp.status_code == 200
    (run,) = runs_of(app, iid)
    assert (run.kind, run.dry_run, run.status) == ("manual", True, RunStatus.queued)
    assert "changes nothing" in resp.text and "data-dry-run" in resp.text


def run_worker(app) -> None:
    """A real RQ worker in this process, on the test Redis, until the nightly queue is empty."""
    with app.app_context():
        SimpleWorker([queues.queue(queues.QUEUE_NIGHTLY)], connection=queues.redis()).work(burst=True)


def test_queued_run_is_carried_out_by_a_worker_and_shows_its_counts(app, tested, client, auth):
    iid = tested["integration_id"]
    tested["crm"].reset(seed=True, platform_option=True)
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True)
    assert post(client, auth, f"/settings/crm/{iid}/runs/sync").status_code == 200
    (run,) = runs_of(app, iid)
    assert client.get(f"/settings/crm/{iid}/runs/{run.id}/status", headers=HX).status_code == 200
    run_worker(app)
    (run,) = runs_of(app, iid)
    assert run.status == RunStatus.finished, run.message
    assert run.created_count > 0
    done = client.get(f"/settings/crm/{iid}/runs/{run.id}/status", headers=HX)
    assert done.status_code == 286
    assert f'data-count="created">{run.created_count}<' in done.text and run.message in done.text
    page = client.get(f"/settings/crm/{iid}/runs/{run.id}")
    assert page.status_code == 200
    assert 'data-step="pull_records"' in page.text and "Pull leads and contacts with an email" in page.text
    assert "No record failed." in page.text


def test_preview_on_a_worker_shows_what_a_run_would_do_with_samples(app, tested, client, auth):
    iid, org = tested["integration_id"], tested["org_id"]
    tested["crm"].reset(seed=True, platform_option=True)
    configure(app, iid, marketing_automation=True, ma_sync_leads=True, ma_score_threshold=50)
    make_leads(app, org, 3, score=80, prefix="preview")
    assert post(client, auth, f"/settings/crm/{iid}/runs/preview").status_code == 200
    run_worker(app)
    (run,) = runs_of(app, iid)
    assert run.dry_run and run.status == RunStatus.finished, run.message
    page = client.get(f"/settings/crm/{iid}/runs/{run.id}").text
    assert "data-preview" in page and "Would create" in page
    step = re.search(r'<tr data-step="push_marketing_leads".*?</tr>', page, re.S).group(0)
    assert 'data-count="created">3<' in step
    assert "create lead preview0@example.net" in step
    assert tested["crm"].records("lead", emailaddress1="preview0@example.net") == []  # nothing written


# ------------------------------------------------------------------------------- a run's failures and Retry


def test_run_page_shows_failures_with_message_action_and_raw_on_demand(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    run_id = add_run(app, iid, status=RunStatus.partial, failed_count=2, steps_json=(
        '[{"name": "push_marketing_leads", "title": "Push marketing-automation leads over the threshold", '
        '"status": "finished", "created": 2, "updated": 0, "skipped": 1, "failed": 2, "read": 0, '
        '"note": "1 without email", "samples": [], "seconds": 0.42}]'))
    first = add_failure(app, run_id, crm_id="7c8a3b1e-0000-4000-8000-000000000001",
                        message="The value of Topic is too long.", action="Shorten the field in the lead.",
                        raw="<s:Fault><faultstring>String too long & more</faultstring></s:Fault>")
    add_failure(app, run_id, status="resolved", local_id=8, message="Resolved since.")
    page = client.get(f"/settings/crm/{iid}/runs/{run_id}")
    assert page.status_code == 200
    row = re.search(rf'<tr id="failure-{first}".*?</tr>', page.text, re.S).group(0)
    assert "The value of Topic is too long." in row and "What to do: Shorten the field in the lead." in row
    assert "<details data-raw>" in row
    assert "&lt;faultstring&gt;String too long &amp; more&lt;/faultstring&gt;" in row  # escaped, not markup
    assert "lead #7" in row and "7c8a3b1e-0000-4000-8000-000000000001" in row and "create lead" in row
    assert 'data-action="retry"' in row and f'name="failure_id" value="{first}"' in row
    assert "Retry all (1)" in page.text
    assert f'href="/settings/crm/{iid}/runs/{run_id}/failures.csv"' in page.text
    steps = re.search(r'<tr data-step="push_marketing_leads".*?</tr>', page.text, re.S).group(0)
    assert "1 without email" in steps and "0.42" in steps and 'data-count="failed">2<' in steps
    resolved = re.search(r'<tr id="failure-\d+"[^>]*>(?:(?!</tr>).)*Resolved since\.(?:(?!</tr>).)*</tr>',
                         page.text, re.S).group(0)
    assert 'data-action="retry"' not in resolved


def test_retry_one_and_all_queue_a_retry_run_with_the_right_failures(app, tested, client, auth):
    iid = tested["integration_id"]
    run_id = add_run(app, iid, status=RunStatus.partial, failed_count=4)
    pending = [add_failure(app, run_id, local_id=i) for i in range(3)]
    add_failure(app, run_id, status="resolved")
    other_run = add_run(app, iid, status=RunStatus.partial, failed_count=1)
    elsewhere = add_failure(app, other_run)

    one = post(client, auth, f"/settings/crm/{iid}/runs/{run_id}/retry", {"failure_id": pending[1]})
    assert one.status_code == 200 and one.headers["HX-Redirect"].startswith(f"/settings/crm/{iid}/runs/")
    retry = runs_of(app, iid)[-1]
    assert (retry.kind, retry.status) == ("retry", RunStatus.queued)
    assert one.headers["HX-Redirect"] == f"/settings/crm/{iid}/runs/{retry.id}"
    assert job_args(app, retry)[3] == [pending[1]]

    busy = post(client, auth, f"/settings/crm/{iid}/runs/{run_id}/retry")
    assert busy.status_code == 409 and "A retry" in busy.text
    set_run(app, retry.id, status=RunStatus.finished, finished_at=utcnow())

    everything = post(client, auth, f"/settings/crm/{iid}/runs/{run_id}/retry", htmx=False)
    all_retry = runs_of(app, iid)[-1]
    assert everything.status_code == 302 and everything.headers["Location"].endswith(f"/runs/{all_retry.id}")
    assert job_args(app, all_retry)[3] == pending  # the run's pending failures only
    set_run(app, all_retry.id, status=RunStatus.finished, finished_at=utcnow())

    # A failure of another run is not retried from this one.
    wrong = post(client, auth, f"/settings/crm/{iid}/runs/{run_id}/retry", {"failure_id": elsewhere})
    assert wrong.status_code == 409 and "no longer pending" in wrong.text
    assert len([r for r in runs_of(app, iid) if r.kind == "retry"]) == 2
    # An id no row can have is refused before the database sees it.
    huge = post(client, auth, f"/settings/crm/{iid}/runs/{run_id}/retry", {"failure_id": str(2**63)})
    assert huge.status_code == 400
    assert len([r for r in runs_of(app, iid) if r.kind == "retry"]) == 2

    # Not from a preview (it wrote nothing), nor while the run is still going.
    preview = add_run(app, iid, kind="manual", dry_run=True, status=RunStatus.partial, failed_count=1)
    add_failure(app, preview)
    assert 'data-action="retry' not in client.get(f"/settings/crm/{iid}/runs/{preview}").text
    refused = post(client, auth, f"/settings/crm/{iid}/runs/{preview}/retry")
    assert refused.status_code == 409 and "A preview writes nothing" in refused.text
    going = add_run(app, iid, kind="push", status=RunStatus.running, finished_at=None)
    add_failure(app, going)
    refused = post(client, auth, f"/settings/crm/{iid}/runs/{going}/retry")
    assert refused.status_code == 409 and "still going" in refused.text
    assert len([r for r in runs_of(app, iid) if r.kind == "retry"]) == 2
    with app.app_context():
        assert queues.queue(queues.QUEUE_PUSH).count == 2


def test_failures_export_as_csv_with_quoting_and_no_formulas(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    run_id = add_run(app, iid, status=RunStatus.partial, failed_count=2)
    tricky = 'Bad value, "Topic"\nsecond line'
    first = add_failure(app, run_id, message=tricky, action="Fix it, then retry.", raw="<a b=\"c\"/>",
                        crm_id="7c8a3b1e-0000-4000-8000-000000000001")
    add_failure(app, run_id, message='=HYPERLINK("http://evil.example","x")', action="+1 call", raw="@SUM(A1)",
                local_type="event", local_id=None, code="-bad")
    resp = client.get(f"/settings/crm/{iid}/runs/{run_id}/failures.csv")
    assert resp.status_code == 200
    assert resp.mimetype == "text/csv" and resp.headers["Content-Disposition"].startswith("attachment;")
    assert f'filename="sync-run-{run_id}-failures.csv"' in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(resp.text, newline="")))
    assert rows[0] == ["run_id", "step", "operation", "entity", "local_type", "local_id", "crm_id", "code", "message",
                       "action", "raw", "status", "attempts", "created_at"]
    assert len(rows) == 3
    one = dict(zip(rows[0], rows[1], strict=True))
    assert one["run_id"] == str(run_id) and one["message"] == tricky and one["action"] == "Fix it, then retry."
    assert one["raw"] == '<a b="c"/>' and one["local_id"] == "7" and one["status"] == "pending"
    assert one["crm_id"] == "7c8a3b1e-0000-4000-8000-000000000001" and one["attempts"] == "1"
    assert '"Bad value, ""Topic""\nsecond line"' in resp.text  # quoted, quotes doubled, the newline kept inside
    two = dict(zip(rows[0], rows[2], strict=True))
    assert two["message"] == "'=HYPERLINK(\"http://evil.example\",\"x\")"
    assert (two["action"], two["raw"], two["code"], two["local_id"]) == ("'+1 call", "'@SUM(A1)", "'-bad", "")
    assert first


# ---------------------------------------------------------------------------------------------- tenancy


def test_runs_of_another_organization_are_404(app, factory, partner_admin, client, auth):
    other_org = factory.org("Other Partner", "partner", ("Acme Supplier",))
    factory.user("admin@other.example", "Other Partner", "admin")
    other_iid = factory.integration(other_org, password="Other-Secret-1", username="other-user")
    other_run = add_run(app, other_iid, status=RunStatus.partial, failed_count=1, trigger="other-trigger")
    add_failure(app, other_run, message="other-secret-message")
    mine = partner_admin["integration_id"]
    token = auth.token()
    for path in (f"/settings/crm/{mine}/runs/{other_run}", f"/settings/crm/{mine}/runs/{other_run}/status",
                 f"/settings/crm/{mine}/runs/{other_run}/status?part=body",
                 f"/settings/crm/{mine}/runs/{other_run}/failures.csv", f"/settings/crm/{other_iid}/runs",
                 f"/settings/crm/{other_iid}/runs?before={other_run + 1}",
                 f"/settings/crm/{other_iid}/runs/{other_run}"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert "other-secret-message" not in resp.text and "other-trigger" not in resp.text
    resp = client.post(f"/settings/crm/{mine}/runs/{other_run}/retry", data={"csrf_token": token},
                       headers={"X-CSRFToken": token})
    assert resp.status_code == 404
    assert "other-trigger" not in client.get(f"/settings/crm/{mine}/runs").text
    assert "other-trigger" not in client.get(f"/settings/crm/{mine}/runs?before={other_run + 1}").text
    # and the other organization's administrator sees it
    client.post("/logout", data={"csrf_token": token})
    auth.login("admin@other.example", PASSWORD)
    assert "other-trigger" in client.get(f"/settings/crm/{other_iid}/runs").text


# ------------------------------------------------------------------------------------- a run's line, in Python
RUN_ROW_BEFORE = Path(__file__).resolve().parents[1] / "fixtures" / "markup" / "run_row_macro_before.html"
HOSTILE = 'say "hi" & <b>bye</b> \'single\' \x01\x1f\x7f'


def _old_cells(run: SyncRun) -> dict:
    started, finished = run.started_at, run.finished_at
    return {"kind": ledger.kind_label(run), "status": run.status.value, "done": run.done,
            "started_iso": started.isoformat() if started else "",
            "started": f"{started:{ledger.WHEN}}" if started else "",
            "finished_iso": finished.isoformat() if finished else "",
            "finished": f"{finished:{ledger.WHEN}}" if finished else "", "duration": ledger.duration(run)}


def every_kind_of_run(app, iid: int) -> list[int]:
    """Finished, partial, failed, dry-run, queued (new and waiting), running and full runs; texts with markup."""
    now = utcnow()
    return [
        add_run(app, iid),
        add_run(app, iid, trigger=HOSTILE, message=HOSTILE, status=RunStatus.partial, failed_count=3),
        add_run(app, iid, kind="manual", dry_run=True, status=RunStatus.failed, message="<script>x</script>",
                failed_count=0),
        add_run(app, iid, kind="push", trigger="", status=RunStatus.queued, started_at=None, finished_at=None),
        add_run(app, iid, kind="retry", status=RunStatus.running, started_at=now - timedelta(hours=2), finished_at=None,
                current_step="push_marketing_leads",
                progress_done=2, progress_total=5),
        add_run(app, iid, status=RunStatus.queued, started_at=None, finished_at=None,
                created_at=now - timedelta(minutes=5)),
        add_run(app, iid, kind="manual", full=True, status=RunStatus.finished, started_at=None, message="m & <n>"),
    ]


def test_run_lines_write_what_the_macro_wrote_and_escape_every_value(app, partner_admin):
    iid = partner_admin["integration_id"]
    ids = every_kind_of_run(app, iid)
    with app.test_request_context():
        before = RUN_ROW_BEFORE.read_text()
        old = app.jinja_env.from_string(before, globals={"old_cells": _old_cells}).module
        old_row = old.run_row
        run_url = url_for("runs.detail", integration_id=iid, run_id=0).rpartition("/")[0] + "/"
        for run_id in ids:
            run = db.session.get(SyncRun, run_id)
            assert status_badge(run) == str(old.status_badge(run))
            for moment in (run.created_at, run.started_at, run.finished_at):
                assert when(moment) == str(old.when(moment))
            for url in (None, run_url):
                for focus, announce in ((False, False), (True, False), (True, True), (False, True)):
                    expected = str(old_row(run, url, focus=focus, announce=announce))
                    assert run_row(run, url, focus=focus, announce=announce) == expected, (run_id, url, focus, announce)
        drawn = run_row(db.session.get(SyncRun, ids[1]), announce=True)
    assert "<b>" not in drawn and "\x01\x1f\x7f" in drawn
    # The trigger, the message and the finish sentence.
    assert drawn.count("say &#34;hi&#34; &amp; &lt;b&gt;bye&lt;/b&gt; &#39;single&#39;") == 3


# ------------------------------------------------------------------------- the page's lines, read and drawn once


def _line(html: str, run_id: int) -> str:
    return re.search(rf'<tr id="run-{run_id}".*?</tr>', html, re.S).group(0)


def test_history_lines_from_the_page_query_write_what_the_macro_wrote_twice_over(app, partner_admin):
    """The page's lines (read from the texts the database wrote, settled ones kept once drawn) are the old macro's,
    escaped, drawn or kept."""
    iid = partner_admin["integration_id"]
    ids = every_kind_of_run(app, iid)
    with app.test_request_context():
        old = app.jinja_env.from_string(RUN_ROW_BEFORE.read_text(), globals={"old_cells": _old_cells}).module
        run_url = url_for("runs.detail", integration_id=iid, run_id=0).rpartition("/")[0] + "/"
        org = db.session.get(CrmIntegration, iid).organization_id
        for _ in range(2):  # drawn, then (finished lines) kept
            page = ledger.history_page(iid, org)
            runs, lines = page.runs, page.lines
            assert (page.head.id, page.older) == (iid, None) and [run.id for run in runs] == list(reversed(ids))
            expected = "".join(str(old.run_row(db.session.get(SyncRun, run.id), run_url)) for run in runs)
            assert run_lines(lines, run_url) == expected
            newest = str(old.run_row(db.session.get(SyncRun, ids[-1]), run_url, focus=True, announce=True))
            assert run_lines(lines, run_url, focus_newest=True).startswith(newest)
        drawn = run_lines(lines, run_url)
    assert "<b>" not in drawn and "<script>" not in drawn and "m &amp; &lt;n&gt;" in drawn


def test_a_run_whose_values_change_shows_them_at_once(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    run_id = add_run(app, iid, message="created 2")
    running = add_run(app, iid, kind="push", status=RunStatus.running, finished_at=None, current_step="push",
                      progress_done=1, progress_total=4)
    path = f"/settings/crm/{iid}/runs"
    first = _line(client.get(path).text, run_id)
    assert _line(client.get(path).text, run_id) == first  # kept, the same
    assert 'data-progress="25"' in _line(client.get(path).text, running)

    set_run(app, run_id, created_count=7, message="created 7")
    line = _line(client.get(path).text, run_id)
    assert 'data-count="created">7<' in line and "created 7" in line
    set_run(app, run_id, status=RunStatus.partial, failed_count=1, skipped_count=9, trigger="Retry <x>")
    line = _line(client.get(path).text, run_id)
    assert 'data-status="partial"' in line and 'data-count="skipped">9<' in line and "#failures" in line
    assert "Retry &lt;x&gt;" in line
    set_run(app, run_id, finished_at=utcnow() + timedelta(minutes=3), kind="retry", dry_run=True)
    line = _line(client.get(path).text, run_id)
    assert "min" in line and "Preview" in line and "data-dry-run" in line

    set_run(app, running, progress_done=3)  # a running line is drawn afresh every time
    assert 'data-progress="75"' in _line(client.get(path).text, running)
    set_run(app, running, status=RunStatus.finished, finished_at=utcnow(), message="done now")
    line = _line(client.get(path).text, running)
    assert "hx-get" not in line and "done now" in line and "<progress" not in line


def test_lines_kept_for_one_tenant_are_never_shown_to_another(app, factory, partner_admin, client, auth):
    other_org = factory.org("Other Partner", "partner", ("Acme Supplier",))
    factory.user("admin@other.example", "Other Partner", "admin")
    other_iid = factory.integration(other_org, password="Other-Secret-1", username="other-user")
    other_runs = [add_run(app, other_iid, trigger="other-trigger", message="other-message") for _ in range(3)]
    mine = partner_admin["integration_id"]
    my_run = add_run(app, mine, trigger="my-trigger")
    other = app.test_client()
    Auth(other).login("admin@other.example")
    assert "other-trigger" in other.get(f"/settings/crm/{other_iid}/runs").text  # drawn and kept

    for path in (f"/settings/crm/{other_iid}/runs", f"/settings/crm/{other_iid}/runs?before={other_runs[-1] + 1}"):
        for headers in ({}, HX):
            resp = client.get(path, headers=headers)
            assert resp.status_code == 404, path
            assert "other-trigger" not in resp.text and "other-message" not in resp.text
    page = client.get(f"/settings/crm/{mine}/runs").text
    assert rows_in(page) == [my_run] and "other-" not in page
    assert "my-trigger" not in other.get(f"/settings/crm/{other_iid}/runs").text


def test_history_buttons_carry_the_session_own_csrf_token(app, factory, partner_admin, client, auth):
    iid = partner_admin["integration_id"]
    factory.user("second@acme.example", "Acme Partner", "admin")
    second = app.test_client()
    Auth(second).login("second@acme.example")
    tokens = []
    for who in (client, second):
        page = who.get(f"/settings/crm/{iid}/runs").text
        fields = re.findall(r'<input name="csrf_token" type="hidden" value="([^"]+)">', page)
        assert len(fields) == 3 and len(set(fields)) == 1
        assert f'"X-CSRFToken": "{fields[0]}"' in page  # the page's own token
        tokens.append(fields[0])
    assert tokens[0] != tokens[1]
    resp = client.post(f"/settings/crm/{iid}/runs/sync", data={"csrf_token": tokens[1]})
    assert resp.status_code == 400  # another session's token is refused


def test_paging_before_an_id_and_past_the_oldest(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    ids = [add_run(app, iid, created_count=i) for i in range(52)]
    newest = list(reversed(ids))
    second = client.get(f"/settings/crm/{iid}/runs?before={newest[49]}")
    assert rows_in(second.text) == newest[50:] and 'data-page="older"' not in second.text
    middle = client.get(f"/settings/crm/{iid}/runs?before={newest[10]}", headers=HX)
    assert rows_in(middle.text) == newest[11:] and 'data-page="newest"' in middle.text
    past = client.get(f"/settings/crm/{iid}/runs?before={ids[0]}")
    assert past.status_code == 200 and rows_in(past.text) == [] and "No older runs." in past.text
    assert client.get(f"/settings/crm/{iid}/runs?before=junk").text.count('<tr id="run-') == 50


def test_kept_lines_are_bounded(app):
    from portal.page_cache import app_cache

    with app.test_request_context():
        cache = app_cache("history-lines", scale=16)
        assert 0 < cache.size <= 100_000 and cache.max_chars


def test_a_run_s_moments_are_written_in_utc_whatever_the_database_s_time_zone(app, partner_admin, client):
    from ..conftest import session_time_zone

    iid = partner_admin["integration_id"]
    moment = datetime(2026, 11, 30, 9, 5, 7, tzinfo=UTC)
    add_run(app, iid, created_at=moment, started_at=moment, finished_at=moment + timedelta(seconds=3))
    with session_time_zone(app, "Pacific/Auckland"):
        text = client.get(f"/settings/crm/{iid}/runs").text
    assert '<time datetime="2026-11-30T09:05:07+00:00">2026-11-30 09:05:07 UTC</time>' in text
    assert '<time datetime="2026-11-30T09:05:10+00:00">2026-11-30 09:05:10 UTC</time>' in text


def test_a_stopped_run_without_its_end_is_not_kept_at_the_duration_of_its_first_drawing(app, partner_admin, client,
                                                                                       monkeypatch):
    """A run that ended with no finished_at (its worker died between the fault and the end) measures its duration
    against the clock: its line is drawn afresh, as before, not kept with the clock of the first drawing."""
    iid = partner_admin["integration_id"]
    now = utcnow()
    run_id = add_run(app, iid, status=RunStatus.failed, started_at=now - timedelta(hours=1), finished_at=None,
                     message="stopped")
    path = f"/settings/crm/{iid}/runs"
    monkeypatch.setattr(ledger, "utcnow", lambda: now)
    assert "1 h 00 min" in _line(client.get(path).text, run_id)
    monkeypatch.setattr(ledger, "utcnow", lambda: now + timedelta(hours=2))
    assert "3 h 00 min" in _line(client.get(path).text, run_id)


# ------------------------------------------------------------------------ an unchanged page, read as its key alone


def test_an_unchanged_page_is_read_as_its_key_alone_and_any_change_reads_it_again(app, partner_admin):
    iid = partner_admin["integration_id"]
    ids = [add_run(app, iid, trigger=trigger) for trigger in ("a,b", "c")]
    with app.app_context():
        org = db.session.get(CrmIntegration, iid).organization_id
        first = ledger.history_page(iid, org)
        assert first.key and not first.unchanged and [run.id for run in first.runs] == ids[::-1]
        again = ledger.history_page(iid, org, known=first.key)
        assert again.unchanged and again.lines == () and again.key == first.key and again.head == first.head
    set_run(app, ids[0], trigger="a")  # the same characters across the page, in other values
    set_run(app, ids[1], trigger="b,c")
    with app.app_context():
        moved = ledger.history_page(iid, org, known=first.key)
        assert not moved.unchanged and moved.key != first.key
        assert [run.trigger for run in moved.runs] == ["b,c", "a"]
    running = add_run(app, iid, status=RunStatus.running, finished_at=None)
    with app.app_context():
        busy = ledger.history_page(iid, org, known=moved.key)  # a line that still changes: no key, read each time
        assert busy.key is None and not busy.unchanged and busy.runs[0].id == running
        assert ledger.history_page(iid, org, known="").key is None


def test_lines_of_different_values_never_share_a_text_and_read_back_as_they_are(app, partner_admin):
    """Each line is the database's text of its values: values that look alike (null and "null", quotes, commas,
    brackets, control characters, long texts) make different texts, and each is read back exactly."""
    iid = partner_admin["integration_id"]
    triggers = ["", "null", "None", '"', "\\", '\\"', "a,b", '["x"]', "é ü", "\x01\x1f\x7f", "x" * 100]
    with app.app_context():
        if db.engine.dialect.name == "sqlite":  # PostgreSQL refuses NUL in a text; SQLite keeps it
            triggers += ["\x00a", "\x00b"]
    ids = [add_run(app, iid, kind="manual", trigger=trigger, message=trigger * 3) for trigger in triggers]
    with app.app_context():
        org = db.session.get(CrmIntegration, iid).organization_id
        page = ledger.history_page(iid, org)
    texts = [line.split(",", 1)[1] for line in page.lines]  # without the run's id
    assert len(set(texts)) == len(triggers)
    read = {run.id: run for run in page.runs}
    assert [(read[run_id].trigger, read[run_id].message) for run_id in ids] == [(t, t * 3) for t in triggers]


def test_the_kept_page_follows_its_integration_s_state(app, partner_admin, client):
    iid = partner_admin["integration_id"]
    run_id = add_run(app, iid)
    path = f"/settings/crm/{iid}/runs"
    first = client.get(path).text
    assert without_tokens(client.get(path).text) == without_tokens(first) and "badge-error" not in first  # kept
    with app.app_context():
        db.session.get(CrmIntegration, iid).set_error("auth_failed", "The CRM refused the sign-in.", "Check it.")
        db.session.commit()
    page = client.get(path).text
    assert 'class="badge badge-error"' in page and rows_in(page) == [run_id]


def test_an_htmx_refresh_after_a_whole_page_gets_the_list_only_and_never_a_stale_head(app, partner_admin, client):
    """A whole page keeps its body; the next htmx request (the list alone) is answered with the list, never with the
    body kept before the integration's state changed."""
    iid = partner_admin["integration_id"]
    add_run(app, iid, message="settled")
    path = f"/settings/crm/{iid}/runs"
    assert "<!doctype" in client.get(path).text.lower()  # drawn and kept with its body
    fragment = client.get(path, headers=HX).text
    assert fragment.lstrip().startswith('<section id="runs"') and '<nav aria-label="breadcrumb">' not in fragment
    with app.app_context():
        db.session.get(CrmIntegration, iid).error_code = "auth_failed"
        db.session.commit()
    fragment = client.get(path, headers=HX).text
    assert fragment.lstrip().startswith('<section id="runs"') and "data-state=" not in fragment
    assert 'class="badge badge-error"' in client.get(path).text
