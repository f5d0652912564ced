"""Pure mappings between platform records and CRM attributes: no database, no network."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

from ..connectors.dynamics.soap import CreateRequest
from ..connectors.dynamics.xml import EntityReference, Money, OptionSetValue

# Platform field -> CRM attribute, for leads; contacts have no company name.
LEAD_ATTRS = {
    "first_name": "firstname", "last_name": "lastname", "company": "companyname", "job_title": "jobtitle",
    "phone": "telephone1", "mobile_phone": "mobilephone", "website": "websiteurl",
    "address_line1": "address1_line1", "address_line2": "address1_line2", "city": "address1_city",
    "state": "address1_stateorprovince", "postal_code": "address1_postalcode", "country": "address1_country",
    "description": "description",
}
CONTACT_ATTRS = {k: v for k, v in LEAD_ATTRS.items() if k != "company"}
LEAD_STATE = {0: "Open", 1: "Qualified", 2: "Disqualified"}
OPPORTUNITY_STATE = {0: "Open", 1: "Won", 2: "Lost"}
EVENT_REF = "[ref:E{id}]"  # in a note's subject: finds the note of an event again
CUSTOM_REF = "[ref:C{id}]"  # in the subject of a distributed lead's custom-fields note


def attrs_of(entity: str) -> dict[str, str]:
    """Platform field -> CRM attribute for a lead or a contact."""
    return LEAD_ATTRS if entity == "lead" else CONTACT_ATTRS


def people_columns(entity: str) -> list[str]:
    """The CRM columns read for a person (lead or contact)."""
    return [f"{entity}id", "emailaddress1", *CONTACT_ATTRS.values(), *(["companyname"] if entity == "lead" else [])]


def lead_attributes(lead: Any, entity: str, *, creating: bool, platform: str,
                    lead_source_value: int | None = None) -> dict:
    """The CRM attributes of a lead: all standard fields; lead source on new leads (C1)."""
    attrs = {crm: getattr(lead, ours) for ours, crm in attrs_of(entity).items() if getattr(lead, ours)}
    if creating:
        attrs["emailaddress1"] = lead.email
        if not attrs.get("lastname"):
            attrs["lastname"] = lead.email.split("@", 1)[0]  # lastname is required by Dynamics
        if entity == "lead":
            attrs["subject"] = f"{platform}: {lead.company or lead.full_name}"
            if lead_source_value is not None:
                attrs["leadsourcecode"] = OptionSetValue(lead_source_value)
    return attrs


def person_values(attributes: dict, entity: str) -> dict[str, str]:
    """A CRM lead's or contact's standard fields as platform lead fields."""
    return {ours: attributes.get(crm) or "" for ours, crm in attrs_of(entity).items()}


def event_note(event: Any, label: str, entity: str, crm_id: str, platform: str) -> CreateRequest:
    """A marketing event as a note on its lead's CRM record, carrying the event's reference."""
    when = event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return CreateRequest("annotation", {
        "subject": f"{platform}: {label} {EVENT_REF.format(id=event.id)}",
        "notetext": f"{label} on {when}." + (f"\n{event.details}" if event.details else ""),
        "objectid": EntityReference(crm_id, entity),
        "objecttypecode": entity,
    })


def event_of_note(subject: str) -> int | None:
    """The event id a note's subject refers to, or None."""
    start = subject.rfind("[ref:E")
    if start < 0 or not subject.endswith("]"):
        return None
    try:
        return int(subject[start + 6:-1])
    except ValueError:
        return None


def custom_fields_note(lead_id: int, fields: dict, entity: str, crm_id: str, platform: str) -> CreateRequest:
    """A distributed lead's custom fields as one note on its CRM record (G3)."""
    return CreateRequest("annotation", {
        "subject": f"{platform}: custom fields {CUSTOM_REF.format(id=lead_id)}",
        "notetext": "\n".join(f"{name}: {value}" for name, value in sorted(fields.items())),
        "objectid": EntityReference(crm_id, entity),
        "objecttypecode": entity,
    })


def campaign_code(platform: str, campaign_id: int) -> str:
    """The code that names a platform campaign in the CRM."""
    return f"{platform}-{campaign_id}"


def campaign_attributes(cp: Any, level: str, platform: str) -> dict:
    """A campaign's CRM attributes at the chosen data level (G4)."""
    attrs: dict = {"name": cp.name, "codename": campaign_code(platform, cp.id),
                   "typecode": OptionSetValue(cp.type_code)}
    if cp.starts_on:
        attrs["proposedstart"] = cp.starts_on
    if cp.ends_on:
        attrs["proposedend"] = cp.ends_on
    if level in ("standard", "full"):
        if cp.description:
            attrs["description"] = cp.description
        if cp.objective:
            attrs["objective"] = cp.objective
        if cp.budget is not None:
            attrs["budgetedcost"] = Money(Decimal(str(cp.budget)))
    if level == "full":
        if cp.expected_revenue is not None:
            attrs["expectedrevenue"] = Money(Decimal(str(cp.expected_revenue)))
        if cp.expected_response is not None:
            attrs["expectedresponse"] = int(cp.expected_response)
        if cp.promotion_code:
            attrs["promotioncodename"] = cp.promotion_code
    return attrs


def activity_values(act: Any) -> dict:
    """A CRM activity's fields as the platform keeps them."""
    a = act.attributes
    return {
        "activity_type": str(a.get("activitytypecode") or ""),
        "subject": (a.get("subject") or "")[:400],
        "status": act.formatted_values.get("statuscode") or act.formatted_values.get("statecode") or "",
        "priority": act.formatted_values.get("prioritycode") or "",
        "due_at": a.get("scheduledend"),
    }


def opportunity_values(opp: Any, lead_id: int | None, rule: str) -> dict:
    """A CRM opportunity's fields as the platform keeps them."""
    a = opp.attributes
    return {
        "name": (a.get("name") or "")[:300], "rule": rule, "lead_id": lead_id,
        "state": OPPORTUNITY_STATE.get(option(a.get("statecode")), "Open"),
        "estimated_value": money(a.get("estimatedvalue")), "actual_value": money(a.get("actualvalue")),
        "estimated_close": a.get("estimatedclosedate"),
    }


def lead_status(state: int | None, label: str) -> str:
    """A lead's CRM status as the pages show it: "Open · New", "Qualified · Qualified"."""
    return f"{LEAD_STATE.get(state, state)} · {label}" if label else LEAD_STATE.get(state, "")


def option(value: Any) -> int | None:
    """An option set value as an int (None when there is none)."""
    if isinstance(value, OptionSetValue):
        return value.value
    return int(value) if isinstance(value, int | str) and str(value).lstrip("-").isdigit() else None


def money(value: Any) -> Decimal | None:
    """A money value as a Decimal (None when there is none)."""
    if isinstance(value, Money):
        return value.value
    if value is None:
        return None
    return Decimal(str(value))
