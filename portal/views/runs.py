"""Sync history: an integration's runs with live progress, Sync now, Preview, a run's failures, Retry and CSV."""

from __future__ import annotations

from collections.abc import Sequence

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user
from markupsafe import Markup, escape

from .. import ledger, schedule
from ..access import admin_required, own_integration
from ..extensions import db
from ..forms import CsrfOnlyForm
from ..models import CrmIntegration, audit
from ..page_cache import app_cache, drawn_pieces, kept_lines, with_token
from ..platform_models import SyncRun
from . import DB_INT_MAX, id_arg
from .htmx import answer, fragment, is_htmx, poll, require_csrf

bp = Blueprint("runs", __name__, url_prefix="/settings/crm")


# The ledger's formatting helpers, as a global so that imported macros see them too.
bp.add_app_template_global(ledger, "ledger")

_BADGES = {"finished": "on", "partial": "error", "failed": "error"}


@bp.app_template_global()
def when(moment) -> Markup:
    """A moment as the history pages write it (a <time>), or a muted dash."""
    if moment is None:
        return Markup('<span class="muted">—</span>')
    return Markup(f'<time datetime="{moment.isoformat()}">{moment:{ledger.WHEN}}</time>')  # noqa: S704 - a date


@bp.app_template_global()
def status_badge(run: SyncRun) -> Markup:
    """A run's status as a badge (one of RunStatus's fixed words), and a second one for a dry run."""
    status = run.status.value
    dry = ' <span class="badge badge-off" data-dry-run>dry run</span>' if run.dry_run else ""
    return Markup(f'<span class="badge badge-{_BADGES.get(status, "off")}" data-status="{status}">{status}</span>{dry}')  # noqa: S704


def _number(count) -> str:
    """A count as the page writes it: an int as it is, anything else escaped (an int needs no escaping)."""
    return str(count) if type(count) is int else str(escape(count))


@bp.app_template_global()
def run_row(run: SyncRun, run_url: str | None = None, focus: bool = False, announce: bool = False) -> Markup:
    """One run's line of the history, written in one call (the page draws fifty: a template call per cell cost more).

    A queued or running line polls its status every second (its progress drawn by the ``progress`` macro, as on the
    run's page); RUN_URL is the runs' address (the caller builds it once a page). The run that Sync now or Preview
    queued is the focus target when its button is gone (FOCUS); the poll that finds a run done says so once (ANNOUNCE).
    """
    run_id = run.id
    if run_url is None:
        run_url = url_for("runs.detail", integration_id=run.integration_id, run_id=run_id).rpartition("/")[0] + "/"
    link = f"{escape(run_url)}{run_id}"
    status = run.status.value  # one of RunStatus's fixed words
    done = run.done
    poll_attrs = ""
    if not done:
        status_url = escape(url_for("runs.status", integration_id=run.integration_id, run_id=run_id))
        poll_attrs = f' hx-get="{status_url}" hx-trigger="every 1s" hx-swap="outerHTML"'
    said = f"<span hidden data-announce>{escape(ledger.finish_sentence(run))}</span>" if announce else ""
    trigger = f'<br><small class="muted">{escape(run.trigger)}</small>' if run.trigger else ""
    if not done:
        progress = current_app.jinja_env.get_template("runs/_macros.html").module.progress(run)
        below = f"{progress}\n    "
    else:
        below = f'<br><small class="muted" data-message>{escape(run.message)}</small>' if run.message else ""
    started, finished = run.started_at, run.finished_at
    started_cell = (when(started) if started is not None
                    else f'<span class="muted">—</span><br><small class="muted">queued {when(run.created_at)}</small>')
    failed = run.failed_count
    failed_cell = f'<a href="{link}#failures">{_number(failed)}</a>' if failed else "0"
    # Every text went through escape(); the rest are numbers, dates, fixed words or the progress macro's own markup.
    return Markup(  # noqa: S704
        f'<tr id="run-{run_id}" class="run-row" data-run="{run_id}" data-status="{status}"\n  {poll_attrs}>\n'
        f'  <th scope="row"><a href="{link}"{" data-focus" if focus else ""}>#{run_id}</a>{said}</th>\n'
        f"  <td>{escape(ledger.kind_label(run))}{trigger}</td>\n"
        f"  <td>\n    {status_badge(run)}\n    {below}\n  </td>\n"
        f"  <td>{started_cell}</td>\n"
        f"  <td>{when(finished)}</td>\n"
        f"  <td data-duration>{ledger.duration(run)}</td>\n"
        f'  <td data-count="created">{_number(run.created_count)}</td>\n'
        f'  <td data-count="updated">{_number(run.updated_count)}</td>\n'
        f'  <td data-count="skipped">{_number(run.skipped_count)}</td>\n'
        f'  <td data-count="failed">{failed_cell}</td>\n</tr>'
    )


# A settled run's line never changes unless a value it shows does: drawn once per process and kept (page_cache),
# keyed by its text (every value the line shows, the run's and its integration's ids among them, as the database
# wrote them) and the runs' address; holding nothing of a user or a session. A line that is not settled
# (RunLine.settled: queued or running, it polls and shows progress; ended without its end, its duration runs to
# the clock) is never kept, so always drawn afresh; so is the line that announces a run's end.
def _drawn_line(key: tuple[str, str]) -> tuple[str, bool]:
    """A run's line from its key (its text and the runs' address), and whether it may be kept (it is settled)."""
    line, run_url = key
    run = ledger.RunLine.read(line)
    return run_row(run, run_url), bool(run.settled)


@bp.app_template_global()
def run_lines(lines: Sequence[str], run_url: str, focus_newest: bool = False) -> Markup:
    """The history's lines (ledger.HistoryPage.lines), newest first; after Sync now or Preview (FOCUS_NEWEST) the
    newest is the focus target, and says so once if it is already done."""
    drawn = kept_lines(app_cache("history-lines", scale=16), [(line, run_url) for line in lines], _drawn_line)
    if focus_newest and lines:
        newest = ledger.RunLine.read(lines[0])
        drawn[0] = run_row(newest, run_url, focus=True, announce=newest.done)
    return Markup("".join(drawn))  # noqa: S704 - every line drawn by run_row


def _run_or_404(integration: CrmIntegration, run_id: int) -> SyncRun:
    run = ledger.run_of(integration, run_id)
    if run is None:
        abort(404)
    return run


def _history_context(integration_id: int, before: int | None, known: str = "") -> dict:
    """The page of runs of the signed-in organization's integration (404 for any other), in one statement; KNOWN is
    the page's key as last drawn (see ledger.history_page)."""
    found = ledger.history_page(integration_id, current_user.organization_id, before, known)
    if found is None:
        abort(404)
    busy = found.key is None and any(not run.done for run in found.runs)  # a key: every line is settled
    return {"row": found.head, "runs": found.lines, "older": found.older, "before": before, "page": found,
            "refresh_while_busy": busy}


# A kept page: its key (ledger.HistoryPage.key), its list of runs, the integration as the body showed it, and the
# body's pieces around its CSRF tokens (None until a whole page is asked for: an htmx refresh needs the list only).
_Kept = tuple[str, Markup, ledger.HistoryHead, tuple[str, ...] | None]


def _history_parts(integration_id: int, *, whole: bool) -> tuple[dict, Markup, tuple[str, ...] | None]:
    """The page's context, its list of runs (runs/_runs.html) and, when WHOLE, its body (runs/_history_body.html)
    as the pieces around its CSRF tokens.

    A page whose every line is settled is kept per process with its key (every value of its runs, written by the
    database); while the key is unchanged the database reads no run, and the kept list (and body, while the
    integration shows the same) is served. Kept per integration (whose tenancy the statement checks first), page
    and address: nothing of a user or a session is kept.
    """
    before = id_arg("before")
    slot = (integration_id, before, request.script_root)
    cache = app_cache("history-pages")
    kept: _Kept | None = cache.get(slot)
    ctx = _history_context(integration_id, before, kept[0] if kept else "")
    page = ctx["page"]
    body = None
    if page.unchanged and kept:
        section = kept[1]
        if not whole:
            return ctx, section, None
        if kept[3] is not None and kept[2] == page.head:
            return ctx, section, kept[3]
    else:
        section = Markup(render_template("runs/_runs.html", **ctx))  # noqa: S704 - a rendered template
    if whole:
        body = drawn_pieces("runs/_history_body.html", runs_section=section, **ctx)
    if page.key is not None:
        cache.put(slot, (page.key, section, page.head, body))
    return ctx, section, body


@bp.route("/<int:integration_id>/runs")
@admin_required
def history(integration_id: int):
    """The integration's runs, newest first, 50 a page; queued and running ones show live progress."""
    ctx, section, body = _history_parts(integration_id, whole=not is_htmx())
    if body is None:
        return answer(section)
    resp = make_response(render_template("runs/history.html", body=with_token(body), **ctx))
    resp.headers["Vary"] = "HX-Request"
    return resp


def _start(integration_id: int, *, dry_run: bool, full: bool = False):
    """Sync now, Preview or Resync everything: refuse with a reason, or queue the run; then the list or PRG."""
    integration = own_integration(integration_id)
    require_csrf()
    refusal = ledger.start_refusal(integration, "manual")
    status = 200
    if refusal:
        flash(refusal, "error")
        status = 409
    else:
        what = "Preview" if dry_run else "Resync everything" if full else "Sync now"
        run = schedule.start_run(integration, "manual", dry_run=dry_run, full=full,
                                 trigger=f"{what} · {current_user.email}"[:100])
        audit(current_user, integration.organization_id, "asked for a preview" if dry_run
              else "started a full resync" if full else "started a sync", [], integration.id)
        db.session.commit()
        flash(f"Preview #{run.id} queued: it reads the CRM and changes nothing." if dry_run
              else f"Run #{run.id} queued: it reads every CRM record again." if full
              else f"Run #{run.id} queued.", "success")
    if is_htmx():
        # The button that queued the run keeps focus (portal.js); should it be gone, the new run takes it.
        return fragment("runs/_runs.html", status=status, focus_newest=status == 200,
                        **_history_context(integration.id, id_arg("before")))
    return redirect(url_for("runs.history", integration_id=integration.id))


@bp.route("/<int:integration_id>/runs/sync", methods=["POST"])
@admin_required
def sync_now(integration_id: int):
    """Sync now: queue a manual run of the nightly steps."""
    return _start(integration_id, dry_run=False)


@bp.route("/<int:integration_id>/runs/resync", methods=["POST"])
@admin_required
def resync(integration_id: int):
    """Resync everything: a manual run that reads every CRM record, not only those changed since the last run."""
    return _start(integration_id, dry_run=False, full=True)


@bp.route("/<int:integration_id>/runs/preview", methods=["POST"])
@admin_required
def preview(integration_id: int):
    """Preview: a dry run that counts what a run would create, update and skip, with samples."""
    return _start(integration_id, dry_run=True)


def _detail_context(integration: CrmIntegration, run: SyncRun) -> dict:
    failures, total = ledger.failures_of(run)
    pending = ledger.pending_count(run) if total else 0
    return {"row": integration, "run": run, "failures": failures, "failure_total": total, "pending": pending,
            "shown_limit": ledger.FAILURES_SHOWN, "csrf_form": CsrfOnlyForm(),
            "record_names": ledger.record_names(failures)}


@bp.route("/<int:integration_id>/runs/<int:run_id>")
@admin_required
def detail(integration_id: int, run_id: int):
    """One run: its steps, its failed records with what to do, Retry and Export CSV."""
    integration = own_integration(integration_id)
    run = _run_or_404(integration, run_id)
    ctx = _detail_context(integration, run)
    if is_htmx():
        return fragment("runs/_run_body.html", **ctx)
    resp = make_response(render_template("runs/detail.html", **ctx))
    resp.headers["Vary"] = "HX-Request"
    return resp


@bp.route("/<int:integration_id>/runs/<int:run_id>/status")
@admin_required
def status(integration_id: int, run_id: int):
    """A run's row (or, with part=body, its page body) read from SQL; 286 stops the polling once it is done.

    The answer that finds the run done is the last one polled, so it is the one that announces the outcome.
    """
    integration = own_integration(integration_id)
    run = _run_or_404(integration, run_id)
    if request.args.get("part") == "body":
        body = render_template("runs/_run_body.html", announce=run.done, **_detail_context(integration, run))
    else:
        body = render_template("runs/_run_row.html", row=integration, run=run, announce=run.done)
    return poll(body, run.done, no_store=True)


@bp.route("/<int:integration_id>/runs/<int:run_id>/retry", methods=["POST"])
@admin_required
def retry(integration_id: int, run_id: int):
    """Retry one failed record (failure_id) or all the run's pending ones, as a retry run."""
    integration = own_integration(integration_id)
    run = _run_or_404(integration, run_id)
    require_csrf()
    one = request.form.get("failure_id", type=int)
    if request.form.get("failure_id") and (one is None or not 1 <= one <= DB_INT_MAX):
        abort(400)
    ids = ledger.pending_failure_ids(run, [one] if one is not None else None)
    refusal = ledger.retry_refusal(run)
    if not ids and not refusal:
        refusal = ("Nothing to retry: this record is no longer pending." if one is not None
                   else "Nothing to retry: this run has no pending failures.")
    refusal = refusal or ledger.start_refusal(integration, "retry")
    if refusal:
        flash(refusal, "error")
        if is_htmx():
            return fragment("runs/_run_body.html", status=409, **_detail_context(integration, run))
        return redirect(url_for("runs.detail", integration_id=integration.id, run_id=run.id))
    new = schedule.start_run(integration, "retry", failure_ids=ids,
                             trigger=f"Retry of #{run.id} · {current_user.email}"[:100])
    audit(current_user, integration.organization_id, f"retried {len(ids)} failed record(s)", [], integration.id)
    db.session.commit()
    flash(f"Retry #{new.id} queued for {len(ids)} record{'s' if len(ids) != 1 else ''}.", "success")
    target = url_for("runs.detail", integration_id=integration.id, run_id=new.id)
    if is_htmx():
        resp = make_response("", 200)
        resp.headers["HX-Redirect"] = target
        return resp
    return redirect(target)


@bp.route("/<int:integration_id>/runs/<int:run_id>/failures.csv")
@admin_required
def failures_csv(integration_id: int, run_id: int):
    """Every failed record of the run as CSV, streamed; cells that a spreadsheet would run are neutralised."""
    integration = own_integration(integration_id)
    run = _run_or_404(integration, run_id)
    resp = Response(stream_with_context(ledger.failures_csv(run)), mimetype="text/csv")
    resp.headers["Content-Disposition"] = f'attachment; filename="sync-run-{run.id}-failures.csv"'
    resp.headers["Cache-Control"] = "no-store"
    return resp
