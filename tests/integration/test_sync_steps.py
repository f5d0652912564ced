"""Every nightly step and its settings, in-process, against the sandbox CRM over real NTLM."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal import sync
from portal.extensions import db
from portal.models import CrmIntegration
from portal.platform_models import (
    Acceptance,
    Campaign,
    ContactList,
    ContactListMember,
    CrmActivity,
    Lead,
    LeadOrigin,
    Opportunity,
    normalize_email,
)
from portal.sync.gateway import CrmGateway

from .sync_helpers import (
    PLATFORM_OPTION,
    add_event,
    configure,
    emails_in_crm,
    event_ids,
    link_count,
    make_leads,
    make_lists,
    note_refs,
    run_steps,
    use_online,
)


@pytest.fixture(params=["onprem", "online"])
def seeded(request, app, connected):
    """The sandbox with its demo data and the platform's lead source option, reached on-premises or online.

    Every test below runs against both kinds: the same sync engine, over NTLM and SOAP or OAuth and the Web API.
    """
    connected["crm"].reset(seed=True, platform_option=True)
    if request.param == "online":
        use_online(app, connected)
    return {**connected, "kind": request.param}


def crm_lead_emails(crm) -> set[str]:
    return {normalize_email(r["emailaddress1"]) for r in crm.records("lead", limit=1000) if r.get("emailaddress1")}


def test_email_look_ups_fit_the_connection_however_long_the_addresses(app, seeded):
    crm, iid = seeded["crm"], seeded["integration_id"]
    known = normalize_email(next(r for r in crm.records("lead", limit=100) if r.get("emailaddress1"))["emailaddress1"])
    # A thousand of these in one FetchXML make a Web API URL over the 65,536 characters allowed in a $batch.
    emails = [f"nobody{i}-{'x' * 40}@x.example" for i in range(2500)] + [known]
    with app.app_context():
        gateway = CrmGateway(db.session.get(CrmIntegration, iid), 1)
        try:
            found = gateway.find_by_email("lead", emails)
        finally:
            gateway.close()
    assert set(found) == {known}


# -------------------------------------------------------------------------------- S7 pull_records


def test_pull_records_imports_people_with_email_and_counts_the_rest(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True)
    run = run_steps(app, iid, ["pull_records"])
    step = run["steps"]["pull_records"]
    assert run["status"] == "finished", run
    leads_with = crm_lead_emails(crm)
    contacts_with = {normalize_email(r["emailaddress1"]) for r in crm.records("contact", limit=1000)
                     if r.get("emailaddress1")}
    assert (len(leads_with), len(contacts_with)) == (30, 24)
    assert step["read"] == 36 + 30 and step["skipped"] == 6 + 6 and step["created"] == 54
    with app.app_context():
        got = {ld.email_normalized: ld for ld in db.session.scalars(select(Lead).where(Lead.organization_id == org))}
        assert set(got) == leads_with | contacts_with
        assert all(ld.origin == LeadOrigin.crm for ld in got.values())
        seeded_lead = next(r for r in crm.records("lead", limit=100) if r.get("emailaddress1"))
        mine = got[normalize_email(seeded_lead["emailaddress1"])]
        assert (mine.first_name, mine.last_name, mine.company, mine.phone) == (
            seeded_lead["firstname"], seeded_lead["lastname"], seeded_lead["companyname"], seeded_lead["telephone1"])
    assert link_count(app, iid, "lead") == 54
    again = run_steps(app, iid, ["pull_records"])["steps"]["pull_records"]
    assert again["created"] == 0 and again["updated"] == 0 and again["skipped"] == 12


def test_pull_records_off_says_why(app, seeded):
    iid = seeded["integration_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=False)
    step = run_steps(app, iid, ["pull_records"])["steps"]["pull_records"]
    assert step["created"] == step["read"] == 0 and "Pull Contacts is not selected" in step["note"]


def test_pull_records_not_offered_when_leads_are_recorded_as_contacts(app, seeded):
    iid, org = seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True, record_leads_as="contact")
    run = run_steps(app, iid, ["pull_records", "contact_lists"])
    assert run["steps"]["pull_records"]["read"] == 0 and run["steps"]["pull_records"]["note"]
    assert run["steps"]["contact_lists"]["read"] == 0 and run["steps"]["contact_lists"]["note"]
    with app.app_context():
        assert db.session.scalar(select(Lead).where(Lead.organization_id == org)) is None


# -------------------------------------------------------------------------------- S8 contact_lists


def test_contact_lists_static_dynamic_never_accounts(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    crm.insert_records("list", [{"listname": "Key accounts", "type": False, "createdfromcode": 1, "statecode": 0}])
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True)
    make_lists(app, iid)  # only lists made on the Contact lists page are pulled
    run = run_steps(app, iid, ["contact_lists"])
    assert run["status"] == "finished", run
    with app.app_context():
        lists = {cl.name: cl for cl in
                 db.session.scalars(select(ContactList).where(ContactList.organization_id == org))}
        assert set(lists) == {"Trade show leads (static)", "Newsletter contacts (static)",
                              "Springfield leads from the web (dynamic)", "Buyers (dynamic)"}  # no account list
        static = lists["Trade show leads (static)"]
        # Static: the listmember rows (8 seeded leads, one of them without email).
        assert (static.dynamic, static.member_type, static.member_count, static.skipped_without_email) == (
            False, "lead", 7, 1)
        assert (lists["Newsletter contacts (static)"].member_count,
                lists["Newsletter contacts (static)"].skipped_without_email) == (5, 1)
        dynamic = lists["Springfield leads from the web (dynamic)"]
        # Dynamic: the list's own query (Springfield and lead source 4 or 8: seeded leads 3, 7, 13, 17, 23, 27, 33).
        assert (dynamic.dynamic, dynamic.member_count, dynamic.skipped_without_email) == (True, 5, 2)
        members = set(db.session.scalars(select(Lead.email_normalized).join(
            ContactListMember, ContactListMember.lead_id == Lead.id).where(ContactListMember.list_id == dynamic.id)))
        expected = {normalize_email(r["emailaddress1"]) for r in crm.records("lead", limit=100)
                    if r.get("emailaddress1") and r.get("leadsourcecode") in (4, 8)}
        assert members == expected and len(members) == 5
        assert lists["Buyers (dynamic)"].member_count == 24
        # A dynamic list not kept in sync stays as it is.
        dynamic.keep_in_sync = False
        dynamic_id = dynamic.id
        db.session.commit()
    lead3 = next(r for r in crm.records("lead", limit=100) if r.get("emailaddress1") and r.get("leadsourcecode") == 4)
    crm.insert_records("lead", [{"emailaddress1": "new.springfield@example.com", "lastname": "New",
                                 "address1_city": "Springfield", "leadsourcecode": 4}])
    again = run_steps(app, iid, ["contact_lists"])["steps"]["contact_lists"]
    assert again["skipped"] >= 1
    with app.app_context():
        frozen = db.session.get(ContactList, dynamic_id)
        assert frozen.member_count == 5
        count = len(db.session.scalars(select(ContactListMember).where(ContactListMember.list_id == dynamic_id)).all())
        assert count == 5
        frozen.keep_in_sync = True
        db.session.commit()
    run_steps(app, iid, ["contact_lists"])
    with app.app_context():
        assert db.session.get(ContactList, dynamic_id).member_count == 6
    assert lead3


# -------------------------------------------------------------------------------- S5, S3, S4, C1 push_marketing_leads


def test_push_marketing_leads_over_the_threshold_with_all_fields(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_sync_leads=True, ma_score_threshold=50)
    over = make_leads(app, org, 3, score=51, prefix="hot")
    make_leads(app, org, 2, score=50, prefix="edge")  # equal to the threshold: not sent
    make_leads(app, org, 2, score=10, prefix="cold")
    make_leads(app, org, 2, score=90, prefix="dist", origin=LeadOrigin.distributed)  # not marketing
    run = run_steps(app, iid, ["push_marketing_leads"])
    assert run["status"] == "finished", run
    assert run["steps"]["push_marketing_leads"]["created"] == 3
    in_crm = crm_lead_emails(crm)
    assert {f"hot{i}@example.net" for i in range(3)} <= in_crm
    assert not {e for e in in_crm if e.startswith(("edge", "cold", "dist"))}
    rec = crm.records("lead", email="hot1@example.net")[0]
    assert rec["leadsourcecode"] == PLATFORM_OPTION  # C1
    assert (rec["firstname"], rec["lastname"], rec["companyname"], rec["jobtitle"], rec["telephone1"],
            rec["mobilephone"], rec["address1_line1"], rec["address1_city"], rec["address1_stateorprovince"],
            rec["address1_postalcode"], rec["address1_country"]) == (
        "First1", "Last1", "Company 1", "Buyer", "+1 555 70001", "+1 555 80001", "1 Main Street", "Portland", "OR",
        "97201", "US")  # S4
    assert link_count(app, iid, "lead") == len(over)
    again = run_steps(app, iid, ["push_marketing_leads"])["steps"]["push_marketing_leads"]
    assert again["created"] == 0 and again["skipped"] == 3
    assert emails_in_crm(crm)["hot1@example.net"] == 1


@pytest.mark.parametrize("allow_updates", [False, True])
def test_existing_crm_record_is_linked_not_duplicated(app, seeded, allow_updates):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    crm.insert_records("lead", [{"emailaddress1": "Match0@Example.NET", "firstname": "Crm", "lastname": "Person",
                                 "companyname": "Kept Ltd"}])
    configure(app, iid, marketing_automation=True, ma_allow_field_updates=allow_updates)
    make_leads(app, org, 2, score=70, prefix="match")
    run = run_steps(app, iid, ["push_marketing_leads"])
    step = run["steps"]["push_marketing_leads"]
    assert run["status"] == "finished", run
    assert step["created"] == 1 and step["skipped"] == 1
    counts = emails_in_crm(crm)
    assert counts["match0@example.net"] == 1 and counts["match1@example.net"] == 1
    rec = crm.records("lead", email="Match0@Example.NET")[0]
    if allow_updates:
        assert step["updated"] == 1 and (rec["firstname"], rec["companyname"]) == ("First0", "Company 0")
    else:
        assert step["updated"] == 0 and (rec["firstname"], rec["companyname"]) == ("Crm", "Kept Ltd")
    assert link_count(app, iid, "lead") == 2


def test_field_change_reaches_the_crm_only_when_allowed(app, seeded):
    from portal.models import utcnow

    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_allow_field_updates=False)
    (lead_id,) = make_leads(app, org, 1, score=70, prefix="chg")
    run_steps(app, iid, ["push_marketing_leads"])
    with app.app_context():
        lead = db.session.get(Lead, lead_id)
        lead.job_title, lead.fields_changed_at = "Director", utcnow()
        db.session.commit()
    run_steps(app, iid, ["push_marketing_leads"])
    assert crm.records("lead", email="chg0@example.net")[0]["jobtitle"] == "Buyer"
    configure(app, iid, ma_allow_field_updates=True)
    step = run_steps(app, iid, ["push_marketing_leads"])["steps"]["push_marketing_leads"]
    assert step["updated"] == 1
    assert crm.records("lead", email="chg0@example.net")[0]["jobtitle"] == "Director"
    assert emails_in_crm(crm)["chg0@example.net"] == 1


def test_leads_recorded_as_contacts_are_created_as_contacts(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, record_leads_as="contact")
    make_leads(app, org, 2, score=70, prefix="asc")
    run = run_steps(app, iid, ["push_marketing_leads"])
    assert run["status"] == "finished", run
    assert not crm.records("lead", email="asc0@example.net")
    contact = crm.records("contact", email="asc0@example.net")[0]
    assert (contact["firstname"], contact["lastname"], contact["jobtitle"]) == ("First0", "Last0", "Buyer")


# -------------------------------------------------------------------------------- S6 push_events


def test_push_events_writes_selected_types_once(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, event_types=["email_click", "form_submission"])
    ids = make_leads(app, org, 2, score=70, prefix="ev", events=("email_click", "email_open", "form_submission"))
    run = run_steps(app, iid, ["push_marketing_leads", "push_events"])
    assert run["status"] == "finished", run
    assert run["steps"]["push_events"]["created"] == 4
    notes = crm.records("annotation", limit=1000)
    assert len(notes) == 4
    lead_guid = crm.records("lead", email="ev0@example.net")[0]["leadid"]
    mine = [n for n in notes if n["objectid"]["Id"] == lead_guid]
    assert len(mine) == 2 and all(n["objectid"]["LogicalName"] == "lead" for n in mine)
    assert sorted(n["subject"].split(": ", 1)[1].split(" [")[0] for n in mine) == ["Email click", "Form submission"]
    assert set(note_refs(crm).values()) == {1}
    assert len(event_ids(app, ids)) == 6
    again = run_steps(app, iid, ["push_events"])
    assert again["steps"]["push_events"]["created"] == 0
    assert len(crm.records("annotation", limit=1000)) == 4
    new_event = add_event(app, ids[0], "email_click")
    third = run_steps(app, iid, ["push_events"])
    assert third["steps"]["push_events"]["created"] == 1 and note_refs(crm)[new_event] == 1


# -------------------------------------------------------------------------------- S6 back, S9, S10 pulls


def test_pull_activities_status_and_opportunities(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True, ma_pull_opportunities=True,
              lead_distribution=True, ld_pull_opportunities=True)
    seeded_leads = sorted(crm.records("lead", limit=100), key=lambda r: r["leadid"])
    # Link the seeded lead 0 (3 tasks, an opportunity originating from it) by pulling records.
    run = run_steps(app, iid, ["pull_records", "pull_activities", "pull_opportunities"])
    assert run["status"] == "finished", run
    with app.app_context():
        acts = db.session.scalars(select(CrmActivity).where(CrmActivity.organization_id == org)).all()
        subjects = {a.subject for a in acts}
        assert {"Call back about pricing", "Send the brochure", "Book a demo", "Intro call"} <= subjects
        task = next(a for a in acts if a.subject == "Book a demo")
        assert task.activity_type == "task" and task.status and task.priority
        opps = {o.name: o for o in db.session.scalars(select(Opportunity).where(Opportunity.organization_id == org))}
        assert "Expansion deal" in opps and opps["Expansion deal"].rule == "originating-lead"
        assert opps["Expansion deal"].lead_id is not None
    assert seeded_leads


def test_pull_opportunities_by_contact_email_for_distributed_leads(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, lead_distribution=True, ld_pull_opportunities=True, marketing_automation=False)
    contact = next(r for r in crm.records("contact", limit=100)
                   if r.get("emailaddress1") and r["contactid"] == _opp_contact(crm, "Renewal"))
    with app.app_context():
        lead = Lead(organization_id=org, email=contact["emailaddress1"].upper(),
                    email_normalized=normalize_email(contact["emailaddress1"]), origin=LeadOrigin.distributed)
        db.session.add(lead)
        db.session.commit()
        lead_id = lead.id
    run = run_steps(app, iid, ["pull_opportunities"])
    assert run["status"] == "finished", run
    with app.app_context():
        opp = db.session.scalar(select(Opportunity).where(Opportunity.organization_id == org,
                                                          Opportunity.name == "Renewal"))
        assert opp is not None and opp.rule == "contact-email" and opp.lead_id == lead_id
    configure(app, iid, lead_distribution=False, marketing_automation=False)
    off = run_steps(app, iid, ["pull_opportunities"])["steps"]["pull_opportunities"]
    assert "Off" in off["note"] and off["read"] == 0


def _opp_contact(crm, name: str) -> str:
    opp = crm.records("opportunity", name=name)[0]
    return opp["parentcontactid"]["Id"]


def test_pull_status_qualify_accepts_and_disqualify_rejects(app, seeded):
    from portal.connection import config_for
    from portal.connectors.dynamics.factory import open_service
    from portal.models import CrmIntegration

    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, lead_distribution=True, ld_sync_supplier_leads=True)
    ids = make_leads(app, org, 3, origin=LeadOrigin.distributed, prefix="st")
    run = run_steps(app, iid, ["push_distributed_leads"])
    assert run["steps"]["push_distributed_leads"]["created"] == 3
    guid = {i: crm.records("lead", email=f"st{i}@example.net")[0]["leadid"] for i in range(3)}
    with app.app_context():
        svc, transport = open_service(config_for(db.session.get(CrmIntegration, iid)))
        with transport:
            svc.set_state("lead", guid[0], 1, 3)  # qualified
            svc.set_state("lead", guid[1], 2, 6)  # disqualified
    run = run_steps(app, iid, ["pull_status"])
    assert run["status"] == "finished", run
    assert run["steps"]["pull_status"]["updated"] == 3  # the third was never pulled before: Open
    with app.app_context():
        leads = {ld.id: ld for ld in db.session.scalars(select(Lead).where(Lead.id.in_(ids)))}
        assert (leads[ids[0]].acceptance, leads[ids[0]].acceptance_via) == (Acceptance.accepted, "crm")
        assert (leads[ids[1]].acceptance, leads[ids[1]].acceptance_via) == (Acceptance.rejected, "crm")
        assert leads[ids[2]].acceptance == Acceptance.pending
        assert leads[ids[0]].crm_status.startswith("Qualified")
    assert run_steps(app, iid, ["pull_status"])["steps"]["pull_status"]["updated"] == 0


# -------------------------------------------------------------------------------- S11 push_campaigns


@pytest.mark.parametrize("level", ["basic", "standard", "full"])
def test_push_campaigns_at_each_data_level(app, seeded, level):
    from datetime import UTC, datetime

    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, create_campaigns=True, campaign_data_level=level)
    with app.app_context():
        cp = Campaign(organization_id=org, name="Autumn launch", description="Launch of the autumn range",
                      objective="Pipeline", budget=1500, expected_revenue=25000, expected_response=40,
                      promotion_code="AUT26", starts_on=datetime(2026, 9, 1, tzinfo=UTC))
        db.session.add(cp)
        db.session.commit()
        cp_id = cp.id
    run = run_steps(app, iid, ["push_campaigns"])
    assert run["status"] == "finished", run
    assert run["steps"]["push_campaigns"]["created"] == 1
    rec = crm.records("campaign", codename=f"ZiftONE-{cp_id}")[0]
    assert rec["name"] == "Autumn launch"
    assert ("description" in rec) == (level in ("standard", "full"))
    assert ("budgetedcost" in rec) == (level in ("standard", "full"))
    assert ("promotioncodename" in rec) == (level == "full")
    assert ("expectedrevenue" in rec) == (level == "full")
    # Nothing changed: nothing sent; a change follows.
    assert run_steps(app, iid, ["push_campaigns"])["steps"]["push_campaigns"]["skipped"] == 1
    with app.app_context():
        db.session.get(Campaign, cp_id).name = "Autumn launch 2026"
        db.session.commit()
    step = run_steps(app, iid, ["push_campaigns"])["steps"]["push_campaigns"]
    assert step["updated"] == 1
    recs = crm.records("campaign", codename=f"ZiftONE-{cp_id}")
    assert len(recs) == 1 and recs[0]["name"] == "Autumn launch 2026"


def test_push_campaigns_off_sends_nothing(app, seeded):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, create_campaigns=False)
    with app.app_context():
        db.session.add(Campaign(organization_id=org, name="Not sent"))
        db.session.commit()
    before = len(crm.records("campaign"))
    step = run_steps(app, iid, ["push_campaigns"])["steps"]["push_campaigns"]
    assert step["created"] == 0 and "Off" in step["note"]
    assert len(crm.records("campaign")) == before


# -------------------------------------------------------------------------------- dry run


def test_dry_run_reports_and_writes_nothing(app, seeded, runner):
    crm, iid, org = seeded["crm"], seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, ma_pull_contacts=True, event_types=["email_click"],
              create_campaigns=True)
    make_leads(app, org, 4, score=80, prefix="dry", events=("email_click",))
    with app.app_context():
        db.session.add(Campaign(organization_id=org, name="Dry campaign"))
        db.session.commit()
    before = crm.stats()["records"]
    result = runner.invoke(args=["sync", "run", "--integration", str(iid), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Dry run (nothing written)" in result.output and "would create" in result.output
    assert "e.g. create lead dry0@example.net" in result.output
    engine = run_steps(app, iid, dry_run=True)
    assert engine["status"] == "finished", engine
    assert engine["steps"]["push_marketing_leads"]["created"] == 4
    assert engine["steps"]["pull_records"]["created"] == 54
    assert engine["steps"]["push_campaigns"]["created"] == 1
    assert engine["steps"]["contact_lists"]["created"] == 0  # no contact list made from a CRM list here
    assert crm.stats()["records"] == before
    assert link_count(app, iid) == 0
    with app.app_context():
        assert db.session.scalar(select(ContactList).where(ContactList.organization_id == org)) is None
        assert len(db.session.scalars(select(Lead).where(Lead.organization_id == org)).all()) == 4


def test_a_full_nightly_run_records_every_step(app, seeded):
    iid, org = seeded["integration_id"], seeded["org_id"]
    configure(app, iid, marketing_automation=True, lead_distribution=True)
    make_leads(app, org, 2, score=80, prefix="all", events=("email_click",))
    run = run_steps(app, iid, kind="nightly")
    assert run["status"] == "finished", run
    assert list(run["steps"]) == sync.NIGHTLY_STEPS
    assert all(s["status"] == "finished" for s in run["steps"].values())
