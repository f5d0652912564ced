"""The engine against a sandbox as strict as a real server: SQL Server LIKE, lost answers, auth tickets, limits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.connectors.dynamics import OrganizationService, Transport
from portal.connectors.dynamics.xml import EntityReference, Money
from portal.extensions import db
from portal.models import CrmIntegration, utcnow
from portal.platform_models import Acceptance, Campaign, Lead, LeadOrigin, Opportunity, normalize_email

from .sync_helpers import (
    configure,
    emails_in_crm,
    event_ids,
    failures,
    make_leads,
    note_refs,
    run_steps,
    wait_for,
)


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
    assert first["status"] == "failed", first  # every note it sent is pending: none is known to be written
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


@contextlib.contextmanager
def crm_user(app, iid: int) -> Iterator[OrganizationService]:
    """A CRM user working in the CRM itself, with the integration's connection settings."""
    from portal.connection import config_for

    with app.app_context():
        svc = OrganizationService(Transport(config_for(db.session.get(CrmIntegration, iid))))
    try:
        yield svc
    finally:
        svc.transport.close()


def integration(app, iid: int) -> CrmIntegration:
    with app.app_context():
        row = db.session.get(CrmIntegration, iid)
        db.session.expunge(row)
        return row


def test_a_lowered_batch_limit_is_kept_for_the_integration_and_logged(app, ready):
    """Item 3: the server's MaxBatchSize is learned, the records go in batches of it, and it is remembered."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True)
    make_leads(app, org, 25, prefix="small")
    crm.set_faults(max_batch_size=10)
    run = run_steps(app, iid, ["push_marketing_leads"])
    assert run["status"] == "finished" and run["created"] == 25, run
    assert "at most 10" in run["steps"]["push_marketing_leads"]["note"]
    assert integration(app, iid).batch_size_limit == 10
    assert len(emails_in_crm(crm)) == 25
    # The next run starts with batches of 10: the server has nothing to refuse.
    refused = crm.stats()["faults"]
    make_leads(app, org, 15, prefix="small", start=25)
    again = run_steps(app, iid, ["push_marketing_leads"])
    assert again["created"] == 15 and crm.stats()["faults"] == refused


def test_a_batch_past_its_deadline_is_looked_up_before_anything_is_sent_again(app, ready):
    """Item 4: a deadline that grows with the batch; what the server did create is found, nothing doubled."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    app.config.update(SYNC_BATCH_BASE_SECONDS=0.5, SYNC_BATCH_RECORD_SECONDS=0.005, SYNC_PARALLEL_BATCHES=1)
    configure(app, iid, marketing_automation=True, event_types=["email_click"])
    ids = make_leads(app, org, 60, prefix="late", events=("email_click",))
    crm.set_faults(per_record_ms=25)  # 60 leads take 1.5 s on the server; their batch may take 0.8 s
    first = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert first["status"] == "failed", first  # no lead is known to be written yet
    assert "did not finish within" in first["steps"]["push_marketing_leads"]["note"]
    pending = failures(app, iid)
    assert len(pending) == 60 and all(f["retryable"] for f in pending)
    # The server finishes the batch all the same.
    wait_for(lambda: len(emails_in_crm(crm)) == 60, 30, "the server to finish the late batch")
    crm.clear_faults()
    second = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert second["status"] == "finished", second
    counts = emails_in_crm(crm)
    assert len(counts) == 60 and set(counts.values()) == {1}, "a lead was written twice"
    refs = note_refs(crm)
    assert set(refs) == set(event_ids(app, ids)) and set(refs.values()) == {1}
    assert failures(app, iid) == []


def test_stored_control_characters_never_stop_a_run(app, ready):
    """Item 8: a value stored before it was refused at the door is cleaned when the SOAP body is built."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, event_types=["email_click"])
    make_leads(app, org, 2, prefix="ctl", events=("email_click",), first_name="Ann\x01", city="Port\x0bland")
    run = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert run["status"] == "finished" and run["created"] == 4, run
    (rec,) = crm.records("lead", email="ctl0@example.net")
    assert rec["firstname"] == "Ann " and rec["address1_city"] == "Port land"


def test_no_record_can_abort_a_run(app, ready):
    """Item 8: a record the engine cannot even build becomes a failed record with a message, detail and Retry."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True, ld_custom_fields_in_notes=True)
    ids = make_leads(app, org, 3, prefix="cf", origin=LeadOrigin.distributed, custom_fields_json='{"tier": "gold"}')
    with app.app_context():
        db.session.get(Lead, ids[1]).custom_fields_json = '{"tier": '  # stored broken, long ago
        db.session.commit()
    run = run_steps(app, iid, ["push_distributed_leads"])
    assert run["status"] == "partial", run
    assert len(emails_in_crm(crm)) == 3
    (bad,) = failures(app, iid)
    assert bad["local_id"] == ids[1] and bad["message"] and bad["raw"] and bad["action"]
    notes = [n for n in crm.records("annotation", limit=100) if "custom fields" in (n.get("subject") or "")]
    assert len(notes) == 2


def test_a_value_too_long_for_the_crm_fails_naming_field_length_and_limit(app, ready):
    """Item 9: checked against the CRM's own limits before sending; or cut, when the administrator chose it."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True,
              max_lengths={"lead": {"companyname": 100, "address1_city": 80, "firstname": 50}})
    make_leads(app, org, 2, prefix="fits")
    (long_id,) = make_leads(app, org, 1, prefix="long", company="C" * 150)
    run = run_steps(app, iid, ["push_marketing_leads"])
    assert run["status"] == "partial" and run["created"] == 2, run
    (bad,) = failures(app, iid)
    assert bad["local_id"] == long_id and not bad["retryable"]
    assert "companyname" in bad["message"] or "Company" in bad["message"]
    assert "150" in bad["message"] and "100" in bad["message"]
    configure(app, iid, cut_long_values=True)
    retry = run_steps(app, iid, kind="retry")
    assert retry["status"] == "finished", retry
    (rec,) = crm.records("lead", email="long0@example.net")
    assert rec["companyname"] == "C" * 100
    assert "cut" in retry["steps"]["retry"]["note"].lower()


def test_an_opportunity_value_change_in_the_crm_reaches_the_platform(app, ready):
    """Item 10: every pulled field is compared, the estimated value too."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_opportunities=True)
    make_leads(app, org, 1, prefix="deal")
    run_steps(app, iid, ["push_marketing_leads"])
    guid = crm.records("lead", email="deal0@example.net")[0]["leadid"]
    with crm_user(app, iid) as svc:
        opp = svc.create("opportunity", {"name": "Deal", "originatingleadid": EntityReference(guid, "lead"),
                                         "estimatedvalue": Money(Decimal("5000"))})
        run_steps(app, iid, ["pull_opportunities"])
        svc.update("opportunity", opp, {"estimatedvalue": Money(Decimal("6500"))})
    step = run_steps(app, iid, ["pull_opportunities"])["steps"]["pull_opportunities"]
    assert step["updated"] == 1
    with app.app_context():
        row = db.session.scalar(select(Opportunity).where(Opportunity.crm_id == opp))
        assert row.estimated_value == Decimal("6500")


def test_campaign_status_reaches_the_crm(app, ready):
    """Item 11: Basic sends the status; an inactive campaign goes through SetState."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, create_campaigns=True, campaign_data_level="basic")
    with app.app_context():
        cp = Campaign(organization_id=org, name="Spring", status="ready_to_launch",
                      starts_on=datetime(2026, 4, 1, tzinfo=UTC))
        db.session.add(cp)
        db.session.commit()
        cp_id = cp.id

    def crm_status() -> tuple[int, int]:
        (rec,) = crm.records("campaign", codename=f"ZiftONE-{cp_id}")
        return rec["statecode"], rec["statuscode"]

    assert run_steps(app, iid, ["push_campaigns"])["status"] == "finished"
    assert crm_status() == (0, 1)  # Active, Ready To Launch
    for status, expected in (("launched", (0, 2)), ("inactive", (1, 6)), ("completed", (0, 3))):
        with app.app_context():
            row = db.session.get(Campaign, cp_id)
            row.status, row.updated_at = status, utcnow()
            db.session.commit()
        run = run_steps(app, iid, ["push_campaigns"])
        assert run["status"] == "finished", run
        assert crm_status() == expected, status


def _platform_leads(app, org: int) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Lead).where(Lead.organization_id == org))


def test_a_crm_side_email_change_updates_the_linked_lead(app, ready):
    """Item 12: the CRM id is the identity; the status the CRM sets later lands on the lead that was sent."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True, lead_distribution=True,
              ld_sync_supplier_leads=True)
    (lead_id,) = make_leads(app, org, 1, prefix="moved", origin=LeadOrigin.distributed)
    run_steps(app, iid, ["push_distributed_leads"])
    guid = crm.records("lead", email="moved0@example.net")[0]["leadid"]
    with crm_user(app, iid) as svc:
        svc.update("lead", guid, {"emailaddress1": "moved.new@example.net"})
        before = _platform_leads(app, org)
        run = run_steps(app, iid, ["pull_records"])
        assert run["status"] == "finished", run
        assert _platform_leads(app, org) == before, "a second platform lead was made for the same CRM lead"
        with app.app_context():
            assert normalize_email(db.session.get(Lead, lead_id).email) == "moved.new@example.net"
        svc.set_state("lead", guid, 1, 3)  # qualified in the CRM
    run_steps(app, iid, ["pull_status"])
    with app.app_context():
        assert db.session.get(Lead, lead_id).acceptance == Acceptance.accepted


def test_a_platform_side_email_change_is_sent_and_not_imported_back(app, ready):
    """Item 12: an update carries emailaddress1, so the pull does not bring the old address back as a lead."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, ma_allow_field_updates=True, ma_pull_contacts=True)
    (lead_id,) = make_leads(app, org, 1, prefix="renamed")
    run_steps(app, iid, ["push_marketing_leads"])
    with app.app_context():
        lead = db.session.get(Lead, lead_id)
        lead.email, lead.email_normalized, lead.fields_changed_at = ("renamed.new@example.net",
                                                                     "renamed.new@example.net", utcnow())
        db.session.commit()
    run = run_steps(app, iid, ["push_marketing_leads", "pull_records"])
    assert run["status"] == "finished", run
    assert crm.records("lead", email="renamed.new@example.net")
    assert not crm.records("lead", email="renamed0@example.net")
    assert _platform_leads(app, org) == 1


def test_a_link_to_a_record_deleted_in_the_crm_is_dropped_and_the_lead_created_again(app, ready):
    """Item 12: the README's rule: the link goes and the lead is created again, instead of failing every night."""
    crm, iid, org = ready["crm"], ready["integration_id"], ready["org_id"]
    configure(app, iid, marketing_automation=True, ma_allow_field_updates=True, event_types=["email_click"])
    (lead_id,) = make_leads(app, org, 1, prefix="gone", events=("email_click",))
    run_steps(app, iid, ["push_marketing_leads", "push_events"])
    guid = crm.records("lead", email="gone0@example.net")[0]["leadid"]
    with crm_user(app, iid) as svc:
        svc.delete("lead", guid)
    with app.app_context():
        db.session.get(Lead, lead_id).fields_changed_at = utcnow()
        db.session.commit()
    first = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    second = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert second["status"] == "finished" and failures(app, iid) == [], (first, second)
    (again,) = crm.records("lead", email="gone0@example.net")
    assert again["leadid"] != guid
    assert len([n for n in crm.records("annotation", limit=100) if n["objectid"]["Id"] == again["leadid"]]) == 1
