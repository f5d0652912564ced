"""Contact lists (/lists): made from the CRM's marketing lists read live; kept lists refreshed, others imported once."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import CrmIntegration, utcnow
from portal.platform_models import ContactList, ContactListMember, Lead, SyncRun

from .sync_helpers import configure, make_lists, run_steps

CRM_LISTS = {"Trade show leads (static)", "Newsletter contacts (static)", "Springfield leads from the web (dynamic)",
             "Buyers (dynamic)"}
SPRINGFIELD = "Springfield leads from the web (dynamic)"


@pytest.fixture
def seeded(connected):
    """The sandbox with its demo data; the integration tested and pulling contacts."""
    connected["crm"].reset(seed=True, platform_option=True)
    return connected


def ready(app, iid: int, **fields) -> None:
    """As if Save and Test CRM Connection had passed; Marketing Automation with Pull Contacts unless told."""
    fields = {"marketing_automation": True, "ma_pull_contacts": True, **fields}
    configure(app, iid, **fields)
    with app.app_context():
        row = db.session.get(CrmIntegration, iid)
        row.last_test_ok, row.last_test_at = True, utcnow()
        row.last_test_fingerprint = row.connection_fingerprint()
        db.session.commit()


def member_emails(app, list_id: int) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(Lead.email_normalized).join(
            ContactListMember, ContactListMember.lead_id == Lead.id).where(ContactListMember.list_id == list_id)))


def crm_service(app, iid: int):
    """The connector's Organization Service on the sandbox, to change the CRM as a person there would."""
    from portal.sync.gateway import CrmGateway

    with app.app_context():
        return CrmGateway(db.session.get(CrmIntegration, iid), 1).service()


def test_only_lists_made_here_are_pulled(app, seeded):
    iid, org = seeded["integration_id"], seeded["org_id"]
    ready(app, iid)
    step = run_steps(app, iid, ["contact_lists"])["steps"]["contact_lists"]
    assert "No contact list made from a CRM list yet" in step["note"]
    with app.app_context():
        assert db.session.scalar(select(ContactList).where(ContactList.organization_id == org)) is None


def test_create_from_crm_list_reads_the_crm_live_and_imports(app, seeded, client, auth):
    iid, crm = seeded["integration_id"], seeded["crm"]
    ready(app, iid)
    crm.insert_records("list", [{"listname": "Key accounts", "type": False, "createdfromcode": 1, "statecode": 0}])
    page = client.get("/lists/new")
    assert page.status_code == 200
    offered = re.findall(r'<option [^>]*value="([0-9a-f-]{36})"[^>]*>([^<]+)</option>', page.text)
    # Each option says what its members are, for the name of the keep-in-sync switch.
    assert re.search(r'<option data-members="Contacts" [^>]*>Newsletter contacts \(static\)', page.text)
    assert {label.rsplit(" (", 1)[0] for _, label in offered} == CRM_LISTS
    assert "Key accounts" not in page.text  # never a list of accounts
    springfield = next(value for value, label in offered if label.startswith("Springfield"))
    assert "(dynamic, leads, " in dict((v, label) for v, label in offered)[springfield]

    token = auth.token()
    resp = client.post("/lists/new", data={"csrf_token": token, "crm_list_id": springfield,
                                           "name": "Springfield web leads", "keep_in_sync": "y"})
    assert resp.status_code == 302
    list_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        made = db.session.get(ContactList, list_id)
        assert (made.name, made.crm_list_name, made.dynamic, made.member_type, made.keep_in_sync) == (
            "Springfield web leads", SPRINGFIELD, True, "lead", True)
        queued = db.session.scalars(select(SyncRun).where(SyncRun.integration_id == iid)).all()
        assert len(queued) == 1 and queued[0].trigger.startswith("Contact list")
    # The same CRM list twice is refused with a reason, not stored.
    again = client.post("/lists/new", data={"csrf_token": token, "crm_list_id": springfield, "name": "Again"})
    assert again.status_code == 422 and "is already made from this list" in again.text
    missing = client.post("/lists/new", data={"csrf_token": token, "crm_list_id": springfield, "name": ""})
    assert missing.status_code == 422 and "Name the contact list." in missing.text
    junk = client.post("/lists/new", data={"csrf_token": token, "crm_list_id": "not-a-list", "name": "A\x00B"})
    assert junk.status_code == 422 and "Use letters, digits and punctuation only." in junk.text

    run_steps(app, iid, ["contact_lists"])
    assert len(member_emails(app, list_id)) == 5
    listing = client.get("/lists").text
    assert "Springfield web leads" in listing and re.search(r'data-count[^>]*>5<', listing)


def test_a_kept_list_gains_and_loses_members_nightly_an_unkept_one_is_imported_once(app, seeded):
    iid, crm = seeded["integration_id"], seeded["crm"]
    ready(app, iid)
    kept = make_lists(app, iid, {SPRINGFIELD})[SPRINGFIELD]
    run_steps(app, iid, ["contact_lists"])
    before = member_emails(app, kept)
    assert len(before) == 5

    leaving = next(r for r in crm.records("lead", limit=100)
                   if r.get("emailaddress1") and r.get("leadsourcecode") in (4, 8))
    crm_service(app, iid).update("lead", leaving["leadid"], {"address1_city": "Shelbyville"})
    crm.insert_records("lead", [{"emailaddress1": "new.springfield@example.com", "lastname": "New",
                                 "address1_city": "Springfield", "leadsourcecode": 4}])
    run_steps(app, iid, ["contact_lists"])
    after = member_emails(app, kept)
    assert "new.springfield@example.com" in after
    assert leaving["emailaddress1"].lower() not in after
    assert len(after) == 5

    with app.app_context():
        db.session.get(ContactList, kept).keep_in_sync = False
        db.session.commit()
    crm.insert_records("lead", [{"emailaddress1": "later.springfield@example.com", "lastname": "Later",
                                 "address1_city": "Springfield", "leadsourcecode": 4}])
    step = run_steps(app, iid, ["contact_lists"])["steps"]["contact_lists"]
    assert step["skipped"] >= 1 and member_emails(app, kept) == after


def test_a_list_deleted_in_the_crm_says_so(app, seeded, client):
    iid = seeded["integration_id"]
    ready(app, iid)
    made = make_lists(app, iid, {"Trade show leads (static)"})["Trade show leads (static)"]
    run_steps(app, iid, ["contact_lists"])
    with app.app_context():
        crm_id = db.session.get(ContactList, made).crm_list_id
    crm_service(app, iid).delete("list", crm_id)
    run_steps(app, iid, ["contact_lists"])
    with app.app_context():
        gone = db.session.get(ContactList, made)
        assert gone.crm_missing_at is not None and gone.member_count == 7  # its members stay
    page = client.get(f"/lists/{made}").text
    assert "The CRM's marketing list was deleted." in page
    assert "Deleted in the CRM" in client.get("/lists").text


def test_members_are_paged_and_searched_literally(app, seeded, client):
    iid = seeded["integration_id"]
    ready(app, iid)
    buyers = make_lists(app, iid, {"Buyers (dynamic)"})["Buyers (dynamic)"]
    run_steps(app, iid, ["contact_lists"])
    first = client.get(f"/lists/{buyers}").text
    assert first.count("data-member=") == 24 and 'data-page="next"' not in first
    one = sorted(member_emails(app, buyers))[0]
    found = client.get(f"/lists/{buyers}", query_string={"q": one.split("@")[0].upper()}).text
    assert found.count("data-member=") >= 1 and one in found
    assert client.get(f"/lists/{buyers}", query_string={"q": "%"}).text.count("data-member=") == 0  # not a wildcard
    assert client.get(f"/lists/{buyers}?q=%00%ED%A0%80&page=x").status_code == 200  # NUL, a surrogate, no page
    from portal import contact_lists

    with app.app_context():
        contact_lists.MEMBERS_PER_PAGE, saved = 10, contact_lists.MEMBERS_PER_PAGE
        try:
            page3 = contact_lists.members(db.session.get(ContactList, buyers), page=3)
        finally:
            contact_lists.MEMBERS_PER_PAGE = saved
        assert (len(page3.rows), page3.total, page3.more) == (4, 24, False)


def test_another_organization_never_sees_a_list(app, seeded, factory):
    from ..conftest import Auth

    iid = seeded["integration_id"]
    ready(app, iid)
    made = make_lists(app, iid, {"Buyers (dynamic)"})["Buyers (dynamic)"]
    factory.org("Other Partner", "partner")
    factory.user("admin@other.example", "Other Partner", "admin")
    other = app.test_client()
    Auth(other).login("admin@other.example")
    assert other.get(f"/lists/{made}").status_code == 404
    assert "Buyers" not in other.get("/lists").text


def test_without_a_tested_connection_the_form_says_why(app, seeded, client):
    page = client.get("/lists/new")
    assert page.status_code == 200 and "Test the connection first" in page.text


def test_a_page_number_beyond_any_real_page_is_not_an_error(app, seeded, client):
    ready(app, seeded["integration_id"])
    with app.app_context():
        row = ContactList(organization_id=seeded["org_id"], name="L", crm_list_id="x", crm_list_name="x")
        db.session.add(row)
        db.session.commit()
        list_id = row.id
    for page in ("99999999999999999999", "9223372036854775807"):
        assert client.get(f"/lists/{list_id}?page={page}").status_code == 200


def test_a_crm_list_name_longer_than_the_portal_keeps_is_shortened(app, seeded, client, auth):
    ready(app, seeded["integration_id"])
    seeded["crm"].insert_records("list", [{"listname": "N" * 300, "type": False, "createdfromcode": 2,
                                           "statecode": 0}])
    page = client.get("/lists/new")
    value = next(v for v, label in re.findall(r'<option [^>]*value="([^"]+)"[^>]*>([^<]+)</option>', page.text)
                 if label.startswith("NNN"))
    resp = client.post("/lists/new", data={"csrf_token": auth.token(), "crm_list_id": value, "name": "Long"})
    assert resp.status_code in (200, 302, 303)
    with app.app_context():
        kept = db.session.scalar(select(ContactList).where(ContactList.crm_list_id == value))
        assert kept is not None and kept.crm_list_name == "N" * 200


def test_a_second_page_does_not_wait_on_a_crm_read_already_in_flight(app, seeded, client):
    iid = seeded["integration_id"]
    ready(app, iid)
    with app.app_context():
        from portal import queues

        queues.redis().set(f"portal:crm-lists:{iid}:reading", "1", ex=30)
    seeded["crm"].set_faults(latency_ms=20_000)  # a CRM this slow would hold the page for 20 s if it were asked
    page = client.get("/lists/new")
    assert page.status_code == 200
    assert "being read for another page of yours" in page.text
