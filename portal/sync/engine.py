"""Carrying out a run: hold the integration's lock, run its steps (or a push, or a retry), record the outcome.

Preview is the same run with its writes turned off (``Context.writes``): every step runs the same code.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from flask import current_app
from sqlalchemy import select

from ..connectors.dynamics import DynamicsError
from ..extensions import db
from ..lifecycle import record_failure, record_success
from ..models import CrmIntegration, utcnow
from ..platform_models import Acceptance, CrmLink, Lead, MarketingEvent, RunStatus, SyncFailure, SyncRun
from ..wording import counted
from .context import Context
from .gateway import CrmGateway
from .inflight import NoSlot
from .locks import close_stopped_runs, integration_lock
from .notes import push_events
from .pushing import push_custom_notes, push_leads
from .recorder import record_failure as record_failed_record
from .recorder import summary
from .steps import NIGHTLY_STEPS, REGISTRY

log = logging.getLogger(__name__)

class TimeLimitReached(Exception):  # noqa: N818 - named for what happened, as the user reads it
    """Raised in a run's thread when its job's time is up (the worker raises it; see ``jobs.worker``)."""

    def __init__(self, seconds: int | float = 0):
        super().__init__(f"The job's time limit ({seconds} s) was reached.")
        self.seconds = seconds


WAITING = "Waiting: another run of this integration is in progress; this one starts when it has finished."


def execute(run_id: int, steps: Sequence[str] | None = None, lead_ids: Sequence[int] | None = None,
            failure_ids: Sequence[int] | None = None, gateway: CrmGateway | None = None) -> SyncRun:
    """Carry out a run: the steps of a nightly run, a push of given leads, or a retry of failures."""
    session = db.session()
    # A run commits after every batch; without expiring, the rows it holds are not reloaded one by one after
    # each commit (a run writes its own rows, so what it holds stays right).
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        return _execute(run_id, steps, lead_ids, failure_ids, gateway)
    finally:
        session.expire_on_commit = expire


def _execute(run_id: int, steps: Sequence[str] | None, lead_ids: Sequence[int] | None,
             failure_ids: Sequence[int] | None, gateway: CrmGateway | None) -> SyncRun:
    run = db.session.get(SyncRun, run_id)
    integration = db.session.get(CrmIntegration, run.integration_id)
    with integration_lock(integration.id, run.kind, run.id) as got:
        if not got:
            # Nothing a user or the schedule asked for is dropped: the run stays queued and its job comes back
            # (``schedule.requeue_waiting``) until the run in progress has finished.
            run.message = WAITING
            db.session.commit()
            return run
        run.status, run.started_at = RunStatus.running, utcnow()
        db.session.commit()
        close_stopped_runs(integration.id, run.id)
        own_gateway, timed_out, waiting = gateway is None, False, ""
        if gateway is None and run.kind in ("push", "acceptance"):
            gateway, own_gateway = kept_gateway(integration), False
        try:
            if gateway is None:
                gateway = CrmGateway(integration, current_app.config.get("SYNC_PARALLEL_BATCHES", 2))
            ctx = Context(integration, run, gateway)
            if run.kind == "push":
                _push(ctx, lead_ids)
            elif run.kind == "retry":
                _retry(ctx, failure_ids)
            else:
                for name in steps or NIGHTLY_STEPS:
                    with ctx.rec.step(name):
                        REGISTRY[name](ctx)
            run = db.session.get(SyncRun, run_id)
            # Every record it tried failed: nothing reached the CRM, so the run failed (not "partial").
            tried_ok = run.created_count + run.updated_count + run.skipped_count
            run.status = (RunStatus.finished if not run.failed_count
                          else RunStatus.partial if tried_ok else RunStatus.failed)
            run.message = summary(run)
            if not run.dry_run:
                _record_outcome(db.session.get(CrmIntegration, integration.id), run)
        except NoSlot as exc:
            # Only a push gives up waiting for a slot: it stays queued and its job comes back (nothing is lost;
            # what it sent is linked, and claims make the next try skip it).
            db.session.rollback()
            waiting = f"Waiting: {exc} This push is sent when one is free."
        except TimeLimitReached as exc:
            timed_out = True
            _abort(run_id, integration.id, DynamicsError(
                f"The run took longer than its time limit ({exc.seconds} s) and was stopped.",
                action="Nothing is lost: the next run picks up the records this one did not finish. If it keeps "
                       "happening, check that the CRM answers (Test connection) or ask for a longer time limit."))
            raise
        except DynamicsError as exc:
            _abort(run_id, integration.id, exc,
                   pending_leads=list(lead_ids or ()) if run.kind == "push" and exc.retryable else ())
        except Exception as exc:
            log.exception("sync run %s crashed", run_id)
            _abort(run_id, integration.id, DynamicsError(f"The run stopped on an internal error: {exc}",
                                                         action="Retry the run; if it fails again, report it."))
        finally:
            run = db.session.get(SyncRun, run_id)
            if waiting:
                run.status, run.message = RunStatus.queued, waiting
            else:
                run.finished_at = utcnow()
                run.progress_done = run.progress_total
            if own_gateway and gateway is not None:
                gateway.close(wait=not timed_out)  # a lane stuck in a request must not hold the worker
            elif timed_out and gateway is not None:
                drop_kept_gateway(integration.id)
            db.session.commit()
    return run


def _push(ctx: Context, lead_ids: Sequence[int] | None) -> None:
    """A push of distributed leads at once (S1), with their events and custom fields."""
    with ctx.rec.step("push"):
        leads = db.session.scalars(select(Lead).where(Lead.id.in_(list(lead_ids or ())),
                                                      Lead.organization_id == ctx.org_id)).all()
        linked = push_leads(ctx, list(leads), allow_updates=ctx.integration.ld_allow_field_updates)
        if linked:
            push_events(ctx, linked, all_types=True)
            push_custom_notes(ctx, linked)


def _retry(ctx: Context, failure_ids: Sequence[int] | None) -> None:
    """Retry failed records: their leads and events are pushed again; campaigns by the campaign step."""
    query = select(SyncFailure).where(SyncFailure.integration_id == ctx.integration.id,
                                      SyncFailure.status == "pending")
    if failure_ids:
        query = query.where(SyncFailure.id.in_(list(failure_ids)))
    failures = db.session.scalars(query).all()
    lead_ids = {f.local_id for f in failures if f.local_type == "lead" and f.local_id}
    event_leads = set(db.session.scalars(select(MarketingEvent.lead_id).where(MarketingEvent.id.in_(
        [f.local_id for f in failures if f.local_type == "event" and f.local_id] or [-1]))))
    has_campaigns = any(f.local_type == "campaign" for f in failures)
    with ctx.rec.step("retry"):
        if lead_ids:
            leads = db.session.scalars(select(Lead).where(Lead.id.in_(lead_ids))).all()
            push_leads(ctx, list(leads), allow_updates=False)
        if lead_ids or event_leads:
            push_events(ctx, sorted(lead_ids | event_leads))
        if has_campaigns:
            REGISTRY["push_campaigns"](ctx)


# Most recently used last. Each kept gateway holds a socket to its CRM: a push worker that pushes for thousands
# of partners within KEEP_SECONDS would otherwise run out of file descriptors (the soft limit is often 1,024),
# and then every job on it fails. ``SYNC_KEPT_GATEWAYS`` caps them; the least recently used is closed first.
_KEPT: OrderedDict[int, tuple[str, CrmGateway, float]] = OrderedDict()
KEEP_SECONDS = 300


def drop_kept_gateway(integration_id: int) -> None:
    """Forget the kept gateway of an integration (its session may be stuck in a request)."""
    kept = _KEPT.pop(integration_id, None)
    if kept is not None:
        kept[1].close(wait=False)


def kept_gateway(integration: CrmIntegration) -> CrmGateway:
    """A gateway kept between pushes of one integration in this worker: the NTLM handshake is done once.

    It is replaced when the connection settings change, and dropped after five idle minutes or when more than
    ``SYNC_KEPT_GATEWAYS`` integrations' gateways are kept (the least recently used goes).
    """
    now = time.monotonic()
    for key, (_, gw, used) in list(_KEPT.items()):
        if now - used > KEEP_SECONDS:
            gw.close()
            del _KEPT[key]
    fingerprint = integration.connection_fingerprint()
    kept = _KEPT.get(integration.id)
    if kept is None or kept[0] != fingerprint:
        if kept is not None:
            kept[1].close()
        # A push waits only briefly for an in-flight slot: behind a hung or busy CRM it comes back later
        # instead of holding the push worker that other tenants' pushes need.
        kept = (fingerprint, CrmGateway(integration, 1, slot_wait=float(
            current_app.config.get("SYNC_PUSH_SLOT_WAIT", 1))), now)
    _KEPT[integration.id] = (kept[0], kept[1], now)
    _KEPT.move_to_end(integration.id)
    while len(_KEPT) > max(1, int(current_app.config.get("SYNC_KEPT_GATEWAYS", 100))):
        _, (_, oldest, _) = _KEPT.popitem(last=False)
        oldest.close()
    return kept[1]


def _record_outcome(integration: CrmIntegration, run: SyncRun) -> None:
    """A run that ended: lower the banner, unless every record it tried failed (then nothing reached the CRM)."""
    if run.status != RunStatus.failed:
        record_success(integration)
        return
    record_failure(integration, "records_failed",
                   f"A sync run could not write any of its {counted(run.failed_count, 'record')} to the CRM.",
                   "Open Sync history to read why each record failed, put it right (in the CRM or in the record), "
                   "then choose Retry all.")


def _abort(run_id: int, integration_id: int, exc: DynamicsError, pending_leads: Sequence[int] = ()) -> None:
    """A run stopped by a fault: say why, raise the banner, and keep a stopped push's leads for a retry."""
    db.session.rollback()
    run = db.session.get(SyncRun, run_id)
    run.status = RunStatus.failed
    run.message = f"{exc.message} What to do: {exc.action}"
    # A push stopped by a transient fault: its leads wait as retryable failures, so the retry comes soon
    # (not only with the nightly catch-up).
    linked = set(db.session.scalars(select(CrmLink.local_id).where(
        CrmLink.integration_id == integration_id, CrmLink.local_type == "lead",
        CrmLink.local_id.in_(list(pending_leads) or [-1]))))
    entity = db.session.get(CrmIntegration, integration_id).record_leads_as
    for lead_id in [i for i in pending_leads if i not in linked]:
        record_failed_record(run, "push", "create", entity, exc, local_type="lead", local_id=lead_id)
        run.failed_count += 1
    if not run.dry_run:
        record_failure(db.session.get(CrmIntegration, integration_id), exc.code, exc.message, exc.action)
    db.session.commit()


def push_acceptance(lead: Lead, integration: CrmIntegration) -> None:
    """Accepted or rejected in the portal or by email: qualify or disqualify the CRM lead too (S12)."""
    link = db.session.scalar(select(CrmLink).where(CrmLink.integration_id == integration.id,
                                                   CrmLink.local_type == "lead", CrmLink.local_id == lead.id))
    if link is None or link.entity != "lead" or lead.acceptance == Acceptance.pending:
        return
    state, status = (1, 3) if lead.acceptance == Acceptance.accepted else (2, 6)
    gateway = CrmGateway(integration, 1)
    try:
        gateway.service().set_state("lead", link.crm_id, state, status)
    finally:
        gateway.close()
    lead.crm_state_code, lead.crm_status_code = state, status
    lead.crm_status = "Qualified" if state == 1 else "Disqualified · No Longer Interested"
    db.session.commit()
