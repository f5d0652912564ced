"""Reading the sync ledger for the Sync history pages: runs by page, one run's failures, CSV export, refusals."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from flask import current_app
from sqlalchemy import Select, and_, bindparam, case, func, literal_column, or_, select, true

from .extensions import db
from .models import OWN_INTEGRATION, CrmIntegration, UTCDateTime, page_key, utc_moment, utcnow, values_text
from .platform_models import RunStatus, SyncFailure, SyncRun
from .wording import counted

PAGE_SIZE = 50  # runs per page of the history
WHEN = "%Y-%m-%d %H:%M:%S UTC"  # a moment as the history pages write it
FAILURES_SHOWN = 200  # failures listed on a run's page; the CSV export has them all
CSV_CHUNK = 1000  # failures read at once while exporting, so memory stays flat
KIND_LABELS = {"push": "Push", "nightly": "Nightly", "manual": "Sync now", "retry": "Retry"}
ACTIVE = (RunStatus.queued, RunStatus.running)
CSV_COLUMNS = ("run_id", "step", "operation", "entity", "local_type", "local_id", "crm_id", "code", "message",
               "action", "raw", "status", "attempts", "created_at")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# What the ledger calls each step (the engine's steps take their titles from here).
STEP_TITLES = {
    "pull_records": "Pull leads and contacts with an email",
    "contact_lists": "Marketing lists as contact lists",
    "push_marketing_leads": "Push marketing-automation leads over the threshold",
    "push_distributed_leads": "Push distributed leads",
    "push_events": "Write marketing events as notes",
    "pull_activities": "Pull CRM activities on our leads",
    "pull_status": "Pull lead status",
    "pull_opportunities": "Pull opportunities",
    "push_campaigns": "Push campaigns",
    "push": "Push distributed leads",
    "retry": "Retry failed records",
    "acceptance": "Accept or reject in the CRM",
}


def new_run(integration: CrmIntegration, kind: str, *, dry_run: bool = False, trigger: str = "",
            job_id: str | None = None, full: bool = False) -> SyncRun:
    """A queued run row (made before the job is enqueued, so the page can show it at once)."""
    run = SyncRun(integration_id=integration.id, kind=kind, dry_run=dry_run, trigger=trigger, job_id=job_id,
                  full=full)
    db.session.add(run)
    db.session.commit()
    return run


def running_run(integration_id: int) -> SyncRun | None:
    """A nightly or manual run of this integration that is queued or running."""
    return db.session.scalar(select(SyncRun).where(
        SyncRun.integration_id == integration_id, SyncRun.kind.in_(["nightly", "manual"]),
        SyncRun.status.in_([RunStatus.queued, RunStatus.running])).order_by(SyncRun.id.desc()).limit(1))


class RunLine(NamedTuple):
    """A run as the history's list reads it: the values its line shows, read from the text the database writes of
    them (see :func:`history_page`), not an ORM object.

    ``done`` and ``percent`` are SyncRun's own properties, so the list and a run's page cannot disagree. ``settled``
    (1 or 0, from the database) says the line is drawn from its values alone: the run ended and its duration, if
    it has one, has an end (a run whose worker died between the fault and the end measures to the clock).
    """

    id: int
    integration_id: int
    kind: str
    trigger: str
    dry_run: bool
    full: bool
    status: RunStatus
    current_step: str
    progress_done: int
    progress_total: int
    created_count: int
    updated_count: int
    skipped_count: int
    failed_count: int
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    settled: int

    done = SyncRun.done
    percent = SyncRun.percent

    @classmethod
    def read(cls, line: str) -> RunLine:
        """The run from its line's text (a JSON array of the fields, in order, as models.values_text writes it)."""
        values = json.loads(line)
        for index, convert in _READ:
            if values[index] is not None:
                values[index] = convert(values[index])
        return cls._make(values)


def _moment(text: str) -> datetime:
    """A moment the database wrote as its UTC wall time (or, SQLite, as stored), zone-aware."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# How a field that JSON does not carry as such is read back (the rest are numbers, texts and null as they are).
_READ = [(RunLine._fields.index(name), convert) for name, convert in (
    ("dry_run", bool), ("full", bool), ("status", RunStatus),
    ("created_at", _moment), ("started_at", _moment), ("finished_at", _moment))]


class HistoryHead(NamedTuple):
    """What the history page shows of its integration; ``label`` and ``state`` are CrmIntegration's own."""

    id: int
    kind: str
    connection_kind: str
    enabled: bool
    error_code: str

    is_online = CrmIntegration.is_online
    label = CrmIntegration.label
    state = CrmIntegration.state


class HistoryPage(NamedTuple):
    """A page of the history: its integration, its runs' lines (newest first) and the id to ask for older ones.

    Each line is the text the database writes of the values a run's line shows (``RunLine.read`` reads it; it is
    also the key of that line's markup). ``key`` is every line as one text (models.page_key), or None while a line
    still changes (see RunLine.settled); ``unchanged`` says the key is the one the caller knew, and then no line
    was read.
    """

    head: HistoryHead
    lines: tuple[str, ...]
    older: int | None
    key: str | None
    unchanged: bool

    @property
    def runs(self) -> list[RunLine]:
        """The runs of the page, read from their lines."""
        return [RunLine.read(line) for line in self.lines]


# One statement a page: the integration, only if it is the organization's, with a page of its runs (the outer join
# keeps the integration when it has none) and the key of that page. Given the key it last drew (``known``), the
# caller gets the runs only when the key changed. Each run comes as one text of the values its line shows (a few
# columns cost the driver far less than many); the steps (kilobytes of JSON a run) are not read.
# Built once: building a statement per request costs more CPU than running it (SQLAlchemy caches the SQL only).
_HEAD = [getattr(CrmIntegration, name) for name in HistoryHead._fields]
_ACTIVE_WORDS = [literal_column(f"'{status.value}'") for status in ACTIVE]  # fixed words, written in the SQL
_SHOWN = [name for name in RunLine._fields if name != "settled"]


def _history_statement(*, before: bool) -> Select:
    """The page's statement: the newest runs, or (BEFORE) those older than the ``before`` id.

    The page's runs are chosen first (by the index on the integration and the id), and only theirs are written as
    text. Its SQL is kept short and its parameters few, so that the driver keeps its own parsing of it too.
    """
    older = (SyncRun.id < bindparam("before"),) if before else ()
    run = (select(*(getattr(SyncRun, name) for name in _SHOWN))
           .where(SyncRun.integration_id == bindparam("integration_id"), *older)
           .order_by(SyncRun.id.desc()).limit(PAGE_SIZE + 1).subquery("newest")).c
    settled = case((or_(run.status.in_(_ACTIVE_WORDS), and_(run.finished_at.is_(None), run.started_at.is_not(None))),
                    literal_column("0")), else_=literal_column("1"))
    line = values_text(*[utc_moment(run[name]) if isinstance(run[name].type, UTCDateTime) else run[name]
                         for name in _SHOWN], settled)
    page = select(run.id, settled.label("settled"), line.label("line")).cte("page")
    key = page_key(page, "id", first=func.max, ready="settled")
    return (select(*_HEAD, key.key_once.label("page_key"), page.c.line)
            .select_from(CrmIntegration.__table__.join(key.keyed, true()).outerjoin(page, key.unread))
            .where(*OWN_INTEGRATION).order_by(page.c.id.desc()))


_HISTORY = _history_statement(before=False)
_HISTORY_BEFORE = _history_statement(before=True)


def history_page(integration_id: int, organization_id: int, before: int | None = None, known: str = ""
                 ) -> HistoryPage | None:
    """The organization's integration and one page of its runs, newest first, in one query; and the id to ask for
    older runs, if any. None when the organization has no such integration (another tenant's counts as unknown).

    KNOWN is the page's key as the caller last drew it: when it still is the key, no run is read (``unchanged``).
    The runs' lines are the texts the database wrote (``lines``); ``runs`` reads them.
    """
    params = {"integration_id": integration_id, "organization_id": organization_id, "known": known}
    if before is None:
        rows = db.session.connection().execute(_HISTORY, params).all()
    else:
        rows = db.session.connection().execute(_HISTORY_BEFORE, {**params, "before": before}).all()
    if not rows:
        return None
    split = len(_HEAD)
    first = rows[0]
    head, key = HistoryHead._make(first[:split]), first[split]
    if first[split + 1] is None:  # no (older) runs, or the page is the one the caller knew
        return HistoryPage(head, (), None, key, unchanged=bool(known) and key == known)
    lines = tuple(row[split + 1] for row in rows[:PAGE_SIZE])
    return HistoryPage(head, lines, RunLine.read(lines[-1]).id if len(rows) > PAGE_SIZE else None, key,
                       unchanged=False)


def run_of(integration: CrmIntegration, run_id: int) -> SyncRun | None:
    """A run of this integration, or None (a run id of another integration counts as unknown)."""
    run = db.session.get(SyncRun, run_id)
    if run is None or run.integration_id != integration.id:
        return None
    return run


def failures_of(run: SyncRun, limit: int = FAILURES_SHOWN) -> tuple[list[SyncFailure], int]:
    """The first failures of a run, oldest first, and how many it has in all."""
    total = db.session.scalar(select(func.count()).select_from(SyncFailure).where(SyncFailure.run_id == run.id))
    rows = db.session.scalars(select(SyncFailure).where(SyncFailure.run_id == run.id)
                              .order_by(SyncFailure.id).limit(limit)).all()
    return list(rows), total or 0


def pending_count(run: SyncRun) -> int:
    """How many of the run's failures are still pending (what Retry all would send)."""
    return db.session.scalar(select(func.count()).select_from(SyncFailure).where(
        SyncFailure.run_id == run.id, SyncFailure.status == "pending")) or 0


def waiting_for_worker(run: SyncRun, stale_seconds: float | None = None, now: datetime | None = None) -> bool:
    """True when a queued run has waited longer than a worker normally takes to pick it up."""
    if stale_seconds is None:
        stale_seconds = current_app.config.get("WORKER_STALE_SECONDS", 5)
    return run.status == RunStatus.queued and ((now or utcnow()) - run.created_at).total_seconds() > stale_seconds


def pending_failure_ids(run: SyncRun, wanted: Sequence[int] | None = None) -> list[int]:
    """Ids of the run's failures still pending, limited to ``wanted`` when given."""
    query = select(SyncFailure.id).where(SyncFailure.run_id == run.id, SyncFailure.integration_id == run.integration_id,
                                         SyncFailure.status == "pending")
    if wanted is not None:
        query = query.where(SyncFailure.id.in_(list(wanted)))
    return list(db.session.scalars(query.order_by(SyncFailure.id)))


def active_retry(integration_id: int) -> SyncRun | None:
    """A retry run of this integration that is queued or running."""
    return db.session.scalar(select(SyncRun).where(
        SyncRun.integration_id == integration_id, SyncRun.kind == "retry", SyncRun.status.in_(ACTIVE))
        .order_by(SyncRun.id.desc()).limit(1))


def start_refusal(integration: CrmIntegration, kind: str) -> str | None:
    """Why a run of this kind cannot start now (settings not saved and tested, or a run in progress), or None."""
    problem = integration.connection_refusal()
    if problem:
        return f"Not started. {problem}"
    busy = running_run(integration.id)
    if busy is not None:
        what = "A preview" if busy.dry_run else f"A {KIND_LABELS.get(busy.kind, busy.kind).lower()} run"
        return (f"Not started. {what} (#{busy.id}) is already {busy.status.value}: "
                "wait for it to finish, then try again.")
    if kind == "retry":
        retry = active_retry(integration.id)
        if retry is not None:
            return f"Not started. A retry (#{retry.id}) is already {retry.status.value}: wait for it to finish."
    return None


def retry_refusal(run: SyncRun) -> str | None:
    """Why this run's failures cannot be retried from it (still going, or a preview), or None."""
    if run.dry_run:
        return "A preview writes nothing, so its records are not retried: use Sync now for a real run."
    if not run.done:
        return "This run is still going: retry its failed records once it has finished."
    return None


def duration(run: SyncRun, now: datetime | None = None) -> str:
    """How long the run took (or has taken so far), for a person: "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min"."""
    if run.started_at is None:
        return ""
    seconds = ((run.finished_at or now or utcnow()) - run.started_at).total_seconds()
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def step_title(name: str) -> str:
    """A step's title as the pages show it."""
    return STEP_TITLES.get(name, name.replace("_", " ").capitalize() if name else "")


def kind_label(run: SyncRun) -> str:
    """What started the run, in words."""
    if run.dry_run:
        return "Preview"
    return "Resync everything" if run.full else KIND_LABELS.get(run.kind, run.kind)


def stopped(run: SyncRun) -> bool:
    """True for a failed run that a fault stopped (its message says why), not one that tried every record."""
    from .sync.recorder import summary  # the sync package reads the ledger: imported when first needed

    return run.status == RunStatus.failed and run.message != summary(run)


def finish_sentence(run: SyncRun) -> str:
    """How a run that just ended is announced: what it was, its number, and how it ended."""
    what = f"{kind_label(run)} #{run.id}"
    if run.status == RunStatus.failed:
        if stopped(run):
            return f"{what} stopped: {run.message}"
        return f"{what} failed: every record it tried failed ({counted(run.failed_count, 'record')})."
    if run.status == RunStatus.partial:
        return f"{what} finished with {counted(run.failed_count, 'failed record')}: {run.message}."
    return f"{what} finished: {run.message}."


def csv_safe(value: object) -> str:
    """A cell as text, with a leading quote when a spreadsheet would otherwise read it as a formula."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_STARTS) else text


def failures_csv(run: SyncRun) -> Iterator[str]:
    """The run's failures as CSV text, a header then chunks of rows, read from the database in id order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    last_id = 0
    while True:
        chunk = db.session.scalars(select(SyncFailure).where(SyncFailure.run_id == run.id, SyncFailure.id > last_id)
                                   .order_by(SyncFailure.id).limit(CSV_CHUNK)).all()
        if not chunk:
            return
        for failure in chunk:
            writer.writerow([csv_safe(getattr(failure, name)) for name in CSV_COLUMNS])
        last_id = chunk[-1].id
        yield flush()


# A plain sentence per kind of failure; the CRM's own words stay behind "raw response".
PLAIN_FAILURES = {
    "privilege": "The CRM user is not allowed to {operation} {entities} in the CRM.",
    "not_found": "The record no longer exists in the CRM.",
    "duplicate": "The CRM refused the record as a duplicate of one it already has.",
    "server_busy": "The CRM was too busy to take the record.",
    "timeout": "The CRM did not answer in time.",
}
_OPERATIONS = {"set-state": "change the status of", "link": "link"}
_ENTITY_PLURALS = {"annotation": "notes", "opportunity": "opportunities", "activitypointer": "activities"}


def plain_failure(failure: SyncFailure) -> str:
    """What happened to a failed record, in one plain sentence (never the CRM's raw fault text)."""
    template = PLAIN_FAILURES.get(failure.code)
    if template:
        entities = _ENTITY_PLURALS.get(failure.entity, f"{failure.entity}s" if failure.entity else "records")
        operation = _OPERATIONS.get(failure.operation, failure.operation or "write")
        return template.format(operation=operation, entities=entities)
    return failure.message or "The CRM refused the record."


def raw_failure(failure: SyncFailure) -> str:
    """The CRM's own answer: the raw fault, or its message when that is all there is."""
    if failure.raw:
        return failure.raw
    return failure.message if failure.message and failure.message != plain_failure(failure) else ""


def record_names(failures: Sequence[SyncFailure]) -> dict[tuple[str, int], str]:
    """The people behind failed records, by (local type, id): "First Last <email>" for leads and their events."""
    from .platform_models import Lead, MarketingEvent

    lead_ids = {f.local_id for f in failures if f.local_type == "lead" and f.local_id is not None}
    event_ids = {f.local_id for f in failures if f.local_type == "event" and f.local_id is not None}
    event_leads = dict(db.session.execute(select(MarketingEvent.id, MarketingEvent.lead_id)
                                          .where(MarketingEvent.id.in_(event_ids))).all()) if event_ids else {}
    wanted = lead_ids | set(event_leads.values())
    leads = {lead.id: lead for lead in db.session.scalars(select(Lead).where(Lead.id.in_(wanted)))} if wanted else {}

    def name(lead_id: int) -> str | None:
        lead = leads.get(lead_id)
        if lead is None:
            return None
        who = lead.full_name.strip()
        return f"{who} <{lead.email}>" if who else lead.email

    names = {("lead", i): n for i in lead_ids if (n := name(i))}
    names.update({("event", e): f"an event of {n}" for e, lead_id in event_leads.items() if (n := name(lead_id))})
    return names
