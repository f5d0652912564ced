"""Pure mappings between platform records and CRM attributes: no database, no network."""

from __future__ import annotations

from datetime import UTC, datetime
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
    # Updates carry the email too: a change made in the platform reaches the CRM (the pull would otherwise
    # bring the old address back as another lead).
    attrs["emailaddress1"] = lead.email
    if creating:
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


def _reference(subject: str, tag: str) -> int | None:
    """The id in a note subject's closing ``[ref:<tag><id>]``, or None."""
    marker = f"[ref:{tag}"
    start = subject.rfind(marker)
    if start < 0 or not subject.endswith("]"):
        return None
    try:
        return int(subject[start + len(marker):-1])
    except ValueError:
        return None


def event_of_note(subject: str) -> int | None:
    """The event id a note's subject refers to, or None."""
    return _reference(subject, "E")


def custom_note_lead(subject: str) -> int | None:
    """The lead id a custom-fields note's subject refers to, or None."""
    return _reference(subject, "C")


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


# A platform campaign status -> the CRM's (statecode, statuscode): Active 0-5, Inactive 6 (section 5 of the notes).
CAMPAIGN_STATES = {"proposed": (0, 0), "ready_to_launch": (0, 1), "launched": (0, 2), "completed": (0, 3),
                   "canceled": (0, 4), "suspended": (0, 5), "inactive": (1, 6)}


def campaign_state(cp: Any) -> tuple[int, int]:
    """The CRM (statecode, statuscode) of a campaign's status."""
    return CAMPAIGN_STATES.get(cp.status or "proposed", (0, 0))


def campaign_attributes(cp: Any, level: str, platform: str, *, creating: bool = False) -> dict:
    """A campaign's CRM attributes at the chosen data level (G4); every level carries the status.

    A new campaign is created with its status when it is an active one; any other status change goes through
    SetState (an inactive campaign needs a change of state, which an Update cannot make on every version).
    """
    attrs: dict = {"name": cp.name, "codename": campaign_code(platform, cp.id),
                   "typecode": OptionSetValue(cp.type_code)}
    state, status = campaign_state(cp)
    if creating and state == 0:
        attrs["statuscode"] = OptionSetValue(status)
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


def changed(row: Any, values: dict) -> dict:
    """The values that differ from the row's: the one rule by which every pulled record is compared."""
    return {key: value for key, value in values.items() if _comparable(getattr(row, key, None)) != _comparable(value)}


def _comparable(value: Any) -> Any:
    # Money and numbers compare as Decimals (5000 == 5000.00); datetimes in UTC, naive ones taken as UTC.
    if isinstance(value, float | int) and not isinstance(value, bool):
        return Decimal(str(value))
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value


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
