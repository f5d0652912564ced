"""The fault soak: thousands of leads with events pushed into a CRM having a very bad day, until done."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from portal.extensions import db
from portal.platform_models import SyncFailure

from .sync_helpers import configure, emails_in_crm, event_ids, make_leads, note_refs, run_steps

LEADS = 3000
MAX_RUNS = 25


def test_fault_soak_every_lead_and_note_once(app, connected):
    """20% Server Busy, 5% dropped before and 5% after the write, one batch held past its deadline."""
    crm, iid, org = connected["crm"], connected["integration_id"], connected["org_id"]
    crm.reset(seed=False, platform_option=True)
    app.config.update(SYNC_BATCH_BASE_SECONDS=3.0, SYNC_BATCH_RECORD_SECONDS=0.01, SYNC_PARALLEL_BATCHES=2,
                      SYNC_BUSY_BACKOFF_SECONDS=0.02)
    configure(app, iid, marketing_automation=True, event_types=["email_click"])
    ids = make_leads(app, org, LEADS, prefix="soak", events=("email_click",))
    # Every 5th request answers Server Busy (20%); every 20th is dropped before it is carried out (5%), and the
    # answer of every 20th write is lost after it (5%). Batches of 200 (a lowered limit) meet many faults.
    crm.set_faults(busy_ratio=1.0, every_nth=5, max_batch_size=200)
    crm.set_faults(drop_ratio=1.0, lose_answer_ratio=1.0, every_nth=20)
    # The second write is carried out, but its answer is held past the batch's deadline and never comes.
    crm.set_faults(hang_ratio=1.0, every_nth=2, hang_writes_only=True, hang_limit=1)
    started = time.monotonic()
    runs = []
    for _ in range(MAX_RUNS):
        runs.append(run_steps(app, iid, ["push_marketing_leads", "push_events"]))
        with app.app_context():
            pending = db.session.scalar(select(func.count()).select_from(SyncFailure).where(
                SyncFailure.integration_id == iid, SyncFailure.status == "pending"))
        if runs[-1]["status"] == "finished" and not pending:
            break
    elapsed = time.monotonic() - started
    faults = crm.stats()["faults"]
    crm.clear_faults()
    leads, notes = emails_in_crm(crm), note_refs(crm)
    print(f"\nfault soak: {LEADS} leads, {len(event_ids(app, ids))} events, {len(runs)} runs in {elapsed:.1f} s; "
          f"faults {dict(sorted(faults.items()))}; in the CRM: {len(leads)} leads (max {max(leads.values())} "
          f"per email), {len(notes)} notes (max {max(notes.values())} per event)")
    assert runs[-1]["status"] == "finished", runs[-1]
    assert faults.get("busy", 0) and faults.get("drop", 0) and faults.get("lose_answer", 0) and faults.get("hang")
    assert len(leads) == LEADS and set(leads.values()) == {1}, "a lead is missing or doubled"
    assert set(notes) == set(event_ids(app, ids)) and set(notes.values()) == {1}, "a note is missing or doubled"
