"""The engine against a sandbox as strict as a real server: SQL Server LIKE, lost answers, auth tickets, limits."""

from __future__ import annotations

import pytest

from portal.extensions import db
from portal.models import CrmIntegration

from .sync_helpers import configure, event_ids, failures, make_leads, note_refs, run_steps


@pytest.fixture
def ready(connected):
    """An empty sandbox (with the platform's lead source) and the partner's integration."""
    connected["crm"].reset(seed=False, platform_option=True)
    return connected


def test_a_lost_notes_answer_is_found_by_reference_not_written_twice(app, ready):
    """Item 1: the look-up of notes already sent escapes its LIKE pattern, so SQL Server's rules find them."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, event_types=["email_click", "email_open"])
    ids = make_leads(app, org, 40, prefix="lost", events=("email_click", "email_open"))
    run_steps(app, iid, ["push_marketing_leads"])
    # The CRM writes the 80 notes, but the answer of that batch never comes back.
    crm.set_faults(lose_answer_ratio=1.0, every_nth=1)
    first = run_steps(app, iid, ["push_events"])
    crm.clear_faults()
    assert first["status"] == "partial", first
    assert len(note_refs(crm)) == 80 and set(note_refs(crm).values()) == {1}
    second = run_steps(app, iid, ["push_events"])
    assert second["status"] == "finished", second
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, ids)) and set(refs.values()) == {1}, "a note was written twice"
    assert failures(app, iid) == []


def test_bad_auth_ticket_is_an_authentication_failure_not_server_busy(app, ready):
    """Item 2: -2147180286 is BadAuthTicket: the run stops at once, the banner says so, it counts toward Off."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, enabled=True, auth_failure_limit=2)
    make_leads(app, org, 3, prefix="ticket")
    crm.set_faults(bad_auth_ticket=True)
    before = sum(crm.stats()["faults"].values())
    run = run_steps(app, iid, kind="nightly")
    assert run["status"] == "failed" and run["created"] == 0, run
    assert "ticket" in run["message"].lower()
    # Refused once, not tried again six times as if the CRM were busy.
    assert sum(crm.stats()["faults"].values()) - before <= 2
    with app.app_context():
        integ = db.session.get(CrmIntegration, iid)
        assert integ.error_code == "auth_failed" and integ.auth_failures == 1
    run_steps(app, iid, kind="nightly")
    with app.app_context():
        assert db.session.get(CrmIntegration, iid).enabled is False  # switched Off after the limit
    crm.clear_faults()
    assert crm.records("lead") == []
