"""Idempotent demo data: leads, contacts, lists, a campaign, opportunities, tasks and users."""

from __future__ import annotations

import uuid
from pathlib import Path

from .crm import Crm
from .ntlm import read_users
from .values import EntityIn, EntityReference, OptionSetValue

# Fixed namespace so that seeded ids are the same on every machine and every run.
SEED_NS = uuid.UUID("0b7a3a52-5f7e-4a43-8e4c-2d7c1f4b9a10")

FIRST = [
    "Avery",
    "Blake",
    "Casey",
    "Devon",
    "Emery",
    "Finley",
    "Harper",
    "Jordan",
    "Kai",
    "Logan",
    "Morgan",
    "Noel",
    "Parker",
    "Quinn",
    "Reese",
    "Sage",
    "Taylor",
    "Rowan",
    "Skyler",
    "Jules",
]
LAST = [
    "Oakridge",
    "Millbrook",
    "Stonefield",
    "Riverton",
    "Fairview",
    "Hillcrest",
    "Lakeside",
    "Westbrook",
    "Northgate",
    "Brightwater",
    "Ashdown",
    "Elmstead",
    "Foxley",
    "Greenhill",
    "Harrowgate",
    "Ivydale",
    "Juniper",
    "Kingsmere",
    "Larkspur",
    "Moorland",
]
COMPANIES = ["Contoso", "Fabrikam", "Northwind", "Adventure Works", "Tailspin", "Litware", "Proseware"]


def _id(name: str) -> str:
    return str(uuid.uuid5(SEED_NS, name))


def seed(crm: Crm, users_file: Path | None = None) -> dict[str, int]:
    """Create the demo records that are missing; return how many were created per entity."""
    created: dict[str, int] = {}

    def make(entity: str, key: str, attrs: dict[str, object]) -> str:
        rid = _id(f"{entity}:{key}")
        if crm.store.get(entity, rid) is None:
            crm.create(EntityIn(entity, rid, dict(attrs)), None)
            created[entity] = created.get(entity, 0) + 1
        return rid

    if users_file is not None and users_file.exists():
        for domain, user in read_users(users_file):
            crm.user_for(f"{domain}\\{user}")

    campaign = make(
        "campaign",
        "spring",
        {
            "name": "Spring Partner Push",
            "codename": "CMP-0001",
            "typecode": OptionSetValue(3),
            "description": "Seeded campaign",
        },
    )
    leads = []
    for i in range(36):
        first, last = FIRST[i % len(FIRST)], LAST[(i * 7) % len(LAST)]
        attrs: dict[str, object] = {
            "firstname": first,
            "lastname": last,
            "subject": f"Interest in product {i % 5 + 1}",
            "companyname": COMPANIES[i % len(COMPANIES)],
            "jobtitle": "Manager" if i % 2 else "Engineer",
            "telephone1": f"+1 555 01{i:02d}",
            "address1_city": "Springfield",
            "address1_country": "US",
            "leadsourcecode": OptionSetValue(i % 10 + 1),
        }
        # Every sixth lead has no email, to exercise "records without email are skipped".
        if i % 6 != 5:
            attrs["emailaddress1"] = f"{first}.{last}{i}@example.com".lower()
        if i % 4 == 0:
            attrs["campaignid"] = EntityReference("campaign", campaign)
        leads.append(make("lead", str(i), attrs))
    contacts = []
    for i in range(30):
        first, last = FIRST[(i + 3) % len(FIRST)], LAST[(i * 3) % len(LAST)]
        attrs = {"firstname": first, "lastname": last, "jobtitle": "Buyer", "telephone1": f"+1 555 02{i:02d}"}
        if i % 5 != 4:
            attrs["emailaddress1"] = f"{first[0]}{last}.{i}@example.org".lower()
        contacts.append(make("contact", str(i), attrs))

    static_leads = make(
        "list",
        "static-leads",
        {
            "listname": "Trade show leads (static)",
            "type": False,
            "createdfromcode": OptionSetValue(4),
        },
    )
    for lead in leads[:8]:
        crm.add_member(static_leads, lead, None)
    static_contacts = make(
        "list",
        "static-contacts",
        {
            "listname": "Newsletter contacts (static)",
            "type": False,
            "createdfromcode": OptionSetValue(2),
        },
    )
    for contact in contacts[:6]:
        crm.add_member(static_contacts, contact, None)
    make(
        "list",
        "dynamic-leads",
        {
            "listname": "Springfield leads from the web (dynamic)",
            "type": True,
            "createdfromcode": OptionSetValue(4),
            "query": (
                '<fetch version="1.0" output-format="xml-platform" mapping="logical" distinct="false">'
                '<entity name="lead"><attribute name="fullname"/><attribute name="emailaddress1"/>'
                '<attribute name="leadid"/><order attribute="fullname" descending="false"/>'
                '<filter type="and"><condition attribute="address1_city" operator="eq" value="Springfield"/>'
                '<condition attribute="leadsourcecode" operator="in"><value>8</value><value>4</value></condition>'
                "</filter></entity></fetch>"
            ),
        },
    )
    make(
        "list",
        "dynamic-contacts",
        {
            "listname": "Buyers (dynamic)",
            "type": True,
            "createdfromcode": OptionSetValue(2),
            "query": (
                '<fetch><entity name="contact"><attribute name="fullname"/><attribute name="emailaddress1"/>'
                '<filter><condition attribute="jobtitle" operator="eq" value="Buyer"/>'
                '<condition attribute="emailaddress1" operator="not-null"/></filter></entity></fetch>'
            ),
        },
    )
    make(
        "opportunity",
        "from-lead",
        {
            "name": "Expansion deal",
            "originatingleadid": EntityReference("lead", leads[0]),
            "parentcontactid": EntityReference("contact", contacts[0]),
            "customerid": EntityReference("contact", contacts[0]),
            "campaignid": EntityReference("campaign", campaign),
        },
    )
    make(
        "opportunity",
        "by-contact",
        {
            "name": "Renewal",
            "parentcontactid": EntityReference("contact", contacts[1]),
            "customerid": EntityReference("contact", contacts[1]),
        },
    )
    for n, subject in enumerate(["Call back about pricing", "Send the brochure", "Book a demo"]):
        make(
            "task",
            f"lead0-{n}",
            {
                "subject": subject,
                "regardingobjectid": EntityReference("lead", leads[0]),
                "prioritycode": OptionSetValue(n % 3),
            },
        )
    make(
        "phonecall",
        "lead1",
        {
            "subject": "Intro call",
            "regardingobjectid": EntityReference("lead", leads[1]),
            "phonenumber": "+1 555 0101",
            "directioncode": True,
        },
    )
    return created
