"""Contact lists from the CRM's marketing lists: the live read of those lists and the nightly refresh (S8).

Only lists made on the Contact lists page are pulled: a list kept in sync with the CRM is refreshed every night
(members added and removed); one that is not kept is imported once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from .connectors.dynamics.soap import fetch_xml
from .connectors.dynamics.xml import OptionSetValue
from .extensions import db
from .models import CrmIntegration, utcnow
from .platform_models import ContactList, ContactListMember

if TYPE_CHECKING:
    from .sync import CrmGateway, Runner

# createdfromcode: the kind of members (accounts, 1, are never pulled: they have no person to market to).
MEMBER_TYPES = {2: "contact", 4: "lead"}
LIST_COLUMNS = ["listid", "listname", "type", "createdfromcode", "query", "membercount"]


@dataclass(frozen=True)
class CrmList:
    """One of the CRM's active marketing lists of leads or contacts."""

    id: str
    name: str
    member_type: str
    dynamic: bool
    member_count: int
    query: str


def read_marketing_lists(gateway: CrmGateway) -> list[CrmList]:
    """The CRM's active marketing lists of leads or contacts, by name."""
    query = fetch_xml("list", LIST_COLUMNS, [("createdfromcode", "in", list(MEMBER_TYPES)), ("statecode", "eq", 0)],
                      order=["listid"])
    found = []
    for rec in gateway.fetch(query):
        attrs = rec.attributes
        code = attrs.get("createdfromcode")
        code = code.value if isinstance(code, OptionSetValue) else code
        if code not in MEMBER_TYPES:
            continue
        found.append(CrmList(id=rec.id, name=attrs.get("listname") or "CRM list", member_type=MEMBER_TYPES[code],
                             dynamic=bool(attrs.get("type")), member_count=int(attrs.get("membercount") or 0),
                             query=attrs.get("query") or ""))
    return sorted(found, key=lambda crm_list: crm_list.name.lower())


def live_marketing_lists(integration: CrmIntegration) -> list[CrmList]:
    """Read the CRM's marketing lists now, for the Create from CRM list form."""
    from .sync import CrmGateway

    gateway = CrmGateway(integration, 1)
    try:
        return read_marketing_lists(gateway)
    finally:
        gateway.close()


def refresh_contact_lists(runner: Runner) -> None:
    """The contact_lists step: import new lists, refresh kept ones, note the ones deleted in the CRM."""
    from .sync import CONTACT_ATTRS, _with_columns

    integ, counts = runner.integration, runner.counts
    wanted = db.session.scalars(select(ContactList).where(
        ContactList.organization_id == runner.org_id, ContactList.crm_list_id.is_not(None))
        .order_by(ContactList.id)).all()
    pulling = integ.marketing_automation and integ.ma_pull_contacts and integ.record_leads_as != "contact"
    if not pulling:
        # A list just made on the Contact lists page is still imported once; nothing is refreshed.
        wanted = [cl for cl in wanted if cl.last_synced_at is None]
        counts.note = "Kept lists are not refreshed: Pull Contacts is not selected (Usage Profile)."
    if not wanted:
        if not counts.note:
            counts.note = "No contact list made from a CRM list yet."
        return
    in_crm = {crm_list.id.lower(): crm_list for crm_list in read_marketing_lists(runner.gateway)}
    for local in wanted:
        crm_list = in_crm.get(local.crm_list_id.lower())
        if crm_list is None:
            if not runner.dry_run and local.crm_missing_at is None:
                local.crm_missing_at = utcnow()
                runner.commit()
            counts.skipped += 1
            continue
        if local.last_synced_at is not None and not local.keep_in_sync:
            counts.skipped += 1  # imported once, as asked
            continue
        if runner.dry_run:
            counts.updated += 1
            continue
        local.crm_missing_at = None
        local.dynamic, local.member_type, local.crm_list_name = crm_list.dynamic, crm_list.member_type, crm_list.name
        list_id = local.id
        # Members are replaced as a whole: those removed from the CRM's list leave it here too.
        db.session.execute(delete(ContactListMember).where(ContactListMember.list_id == list_id))
        runner.commit()
        member = crm_list.member_type
        columns = [f"{member}id", "emailaddress1", *CONTACT_ATTRS.values(),
                   *(["companyname"] if member == "lead" else [])]
        if crm_list.dynamic and crm_list.query:
            members_query = _with_columns(crm_list.query, member, columns)
        else:
            members_query = fetch_xml(member, columns, order=[f"{member}id"], links=[{
                "name": "listmember", "from": "entityid", "to": f"{member}id", "intersect": True,
                "conditions": [("listid", "eq", crm_list.id)]}])
        skipped_before = counts.skipped
        count = runner._import_people(member, members_query, into_list=db.session.get(ContactList, list_id))
        local = db.session.get(ContactList, list_id)
        local.member_count = count
        local.skipped_without_email = counts.skipped - skipped_before
        local.last_synced_at = utcnow()
        runner.commit()
