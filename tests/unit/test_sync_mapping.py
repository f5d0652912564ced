"""The sync's pure mappings, platform record -> CRM attributes and back, without a database or a CRM."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace

from portal.connectors.dynamics.xml import EntityReference, Money, OptionSetValue
from portal.sync import mapping


def _lead(**fields):
    base = {name: "" for name in mapping.LEAD_ATTRS}
    base.update(email="ann@example.net", full_name="Ann Lee", **fields)
    return SimpleNamespace(**base)


def test_a_new_lead_carries_email_subject_lead_source_and_a_last_name():
    attrs = mapping.lead_attributes(_lead(company="Acme", city="Oslo"), "lead", creating=True, platform="ZiftONE",
                                    lead_source_value=100000000)
    assert attrs["emailaddress1"] == "ann@example.net" and attrs["lastname"] == "ann"
    assert attrs["subject"] == "ZiftONE: Acme" and attrs["address1_city"] == "Oslo"
    assert attrs["leadsourcecode"] == OptionSetValue(100000000)
    assert "firstname" not in attrs  # empty fields are not sent


def test_an_update_sends_only_standard_fields_and_contacts_have_no_company():
    lead = _lead(company="Acme", first_name="Ann")
    assert mapping.lead_attributes(lead, "lead", creating=False, platform="P") == {"companyname": "Acme",
                                                                                   "firstname": "Ann"}
    contact = mapping.lead_attributes(lead, "contact", creating=True, platform="P", lead_source_value=1)
    assert "companyname" not in contact and "leadsourcecode" not in contact and "subject" not in contact


def test_campaign_attributes_follow_the_data_level():
    cp = SimpleNamespace(id=7, name="Spring", type_code=3, starts_on=date(2026, 4, 1), ends_on=None,
                         description="d", objective="o", budget=1200.5, expected_revenue=9000,
                         expected_response=12, promotion_code="SPRING")
    basic = mapping.campaign_attributes(cp, "basic", "ZiftONE")
    assert basic == {"name": "Spring", "codename": "ZiftONE-7", "typecode": OptionSetValue(3),
                     "proposedstart": date(2026, 4, 1)}
    standard = mapping.campaign_attributes(cp, "standard", "ZiftONE")
    assert standard["budgetedcost"] == Money(Decimal("1200.5")) and "expectedrevenue" not in standard
    full = mapping.campaign_attributes(cp, "full", "ZiftONE")
    assert full["expectedresponse"] == 12 and full["promotioncodename"] == "SPRING"


def test_an_event_note_carries_its_reference_which_reads_back():
    event = SimpleNamespace(id=42, occurred_at=datetime(2026, 3, 1, 10, 5, tzinfo=UTC), details="page /pricing")
    note = mapping.event_note(event, "Email click", "lead", "abc", "ZiftONE")
    assert note.entity == "annotation" and note.attributes["objectid"] == EntityReference("abc", "lead")
    assert note.attributes["notetext"] == "Email click on 2026-03-01 10:05 UTC.\npage /pricing"
    assert mapping.event_of_note(note.attributes["subject"]) == 42
    assert mapping.event_of_note("ZiftONE: custom fields [ref:C3]") is None
    assert mapping.event_of_note("[ref:Exx]") is None


def test_crm_values_read_back_as_platform_values():
    opp = SimpleNamespace(attributes={"name": "Deal", "statecode": OptionSetValue(1), "actualvalue": Money(
        Decimal("10.50")), "estimatedvalue": "7"})
    values = mapping.opportunity_values(opp, 5, "originating-lead")
    assert values["state"] == "Won" and values["actual_value"] == Decimal("10.50")
    assert values["estimated_value"] == Decimal("7") and values["lead_id"] == 5
    assert mapping.option("2") == 2 and mapping.option("x") is None and mapping.money(None) is None
    assert mapping.lead_status(1, "Qualified") == "Qualified · Qualified" and mapping.lead_status(0, "") == "Open"
    assert mapping.person_values({"firstname": "Bo", "companyname": "X"}, "contact")["first_name"] == "Bo"
    assert "company" not in mapping.person_values({}, "contact")
