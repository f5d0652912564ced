"""S8: contact lists made from the CRM's marketing lists of leads or contacts (never accounts); the live read."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree
from sqlalchemy import delete, select

from ...connectors.dynamics import DynamicsError
from ...connectors.dynamics.soap import fetch_xml
from ...connectors.dynamics.xml import OptionSetValue, parse_xml
from ...extensions import db
from ...models import utcnow
from ...platform_models import ContactList, ContactListMember
from ..context import Context
from ..mapping import people_columns
from ..people import import_people
from .base import Step, pull_contacts_off

MEMBER_OF = {2: "contact", 4: "lead"}  # the list's createdfromcode -> its members' entity (accounts, 1: never)
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


def read_marketing_lists(gateway) -> list[CrmList]:
    """The CRM's active marketing lists of leads or contacts, by name."""
    query = fetch_xml("list", LIST_COLUMNS, [("createdfromcode", "in", list(MEMBER_OF)), ("statecode", "eq", 0)],
                      order=["listid"])
    found = []
    for rec in gateway.fetch(query):
        attrs = rec.attributes
        code = attrs.get("createdfromcode")
        member = MEMBER_OF.get(code.value if isinstance(code, OptionSetValue) else code)
        if member is None:
            continue
        found.append(CrmList(id=rec.id, name=attrs.get("listname") or "CRM list", member_type=member,
                             dynamic=bool(attrs.get("type")), member_count=int(attrs.get("membercount") or 0),
                             query=attrs.get("query") or ""))
    return sorted(found, key=lambda crm_list: crm_list.name.lower())


def live_marketing_lists(integration) -> list[CrmList]:
    """Read the CRM's marketing lists now, for the Create from CRM list form."""
    from ..gateway import CrmGateway

    gateway = CrmGateway(integration, 1)
    try:
        return read_marketing_lists(gateway)
    finally:
        gateway.close()


class ContactLists(Step):
    """Contact lists made on the Contact lists page: new ones imported, kept ones refreshed, the rest left as made.

    Only lists made there are pulled. A kept list is refreshed every night (members added and removed); one not
    kept is imported once; one whose CRM list was deleted says so and keeps its members.
    """

    name = "contact_lists"
    depends_on = ("pull_records",)  # members already pulled as leads are matched, not created

    def run(self, ctx: Context) -> None:
        """Import or refresh each contact list made from a CRM marketing list."""
        c = ctx.counts
        wanted = db.session.scalars(select(ContactList).where(
            ContactList.organization_id == ctx.org_id, ContactList.crm_list_id.is_not(None))
            .order_by(ContactList.id)).all()
        if pull_contacts_off(ctx.integration):
            # A list just made on the Contact lists page is still imported once; nothing is refreshed.
            wanted = [cl for cl in wanted if cl.last_synced_at is None]
            c.note = "Kept lists are not refreshed: Pull Contacts is not selected (Usage Profile)."
        if not wanted:
            c.note = c.note or "No contact list made from a CRM list yet."
            return
        in_crm = {crm_list.id.lower(): crm_list for crm_list in read_marketing_lists(ctx.gateway)}
        for local in wanted:
            crm_list = in_crm.get(local.crm_list_id.lower())
            if crm_list is None:
                if local.crm_missing_at is None:
                    ctx.assign(local, {"crm_missing_at": utcnow()})
                    ctx.commit()
                c.skipped += 1
                continue
            if local.last_synced_at is not None and not local.keep_in_sync:
                c.skipped += 1  # imported once, as asked
                continue
            ctx.assign(local, {"crm_missing_at": None, "dynamic": crm_list.dynamic,
                               "member_type": crm_list.member_type, "crm_list_name": crm_list.name})
            if ctx.writes:
                # Members are replaced as a whole: those removed from the CRM's list leave it here too.
                db.session.execute(delete(ContactListMember).where(ContactListMember.list_id == local.id))
            ctx.commit()
            member = crm_list.member_type
            columns = people_columns(member)
            if crm_list.dynamic and crm_list.query:
                members_query = with_columns(crm_list.query, member, columns)
            else:
                members_query = fetch_xml(member, columns, order=[f"{member}id"], links=[{
                    "name": "listmember", "from": "entityid", "to": f"{member}id", "intersect": True,
                    "conditions": [("listid", "eq", crm_list.id)]}])
            skipped_before = c.skipped
            count = import_people(ctx, member, ctx.gateway.fetch(members_query), into_list=local)
            ctx.assign(local, {"member_count": count, "skipped_without_email": c.skipped - skipped_before,
                               "last_synced_at": utcnow()})
            ctx.commit()


def with_columns(query: str, entity: str, columns: list[str]) -> str:
    """A dynamic list's own FetchXML, with the columns we need and a stable order for paging."""
    root = parse_xml(query.encode())
    ent = root.find("entity")
    if ent is None or ent.get("name") != entity:
        raise DynamicsError(f"The dynamic list's query is not about {entity} records.")
    for el in list(ent):
        if el.tag in ("attribute", "all-attributes", "order"):
            ent.remove(el)
    for index, name in enumerate(columns):
        ent.insert(index, etree.Element("attribute", name=name))
    ent.insert(len(columns), etree.Element("order", attribute=f"{entity}id", descending="false"))
    for attr in ("count", "page", "paging-cookie"):
        root.attrib.pop(attr, None)
    return etree.tostring(root, encoding="unicode")
