"""S8: CRM marketing lists of leads or contacts (never accounts) become platform contact lists."""

from __future__ import annotations

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

MEMBER_OF = {2: "contact", 4: "lead"}  # the list's createdfromcode -> its members' entity


class ContactLists(Step):
    """Marketing lists as contact lists, with their members."""

    name = "contact_lists"
    depends_on = ("pull_records",)  # members already pulled as leads are matched, not created

    def off_reason(self, integration):
        """Off unless Pull Contacts is selected."""
        return pull_contacts_off(integration)

    def run(self, ctx: Context) -> None:
        """Each active list of leads or contacts: create or rename its contact list, then import its members."""
        c = ctx.counts
        query = fetch_xml("list", ["listid", "listname", "type", "createdfromcode", "query"],
                          [("createdfromcode", "in", [2, 4]), ("statecode", "eq", 0)], order=["listid"])
        for crm_list in list(ctx.gateway.fetch(query)):
            attrs = crm_list.attributes
            code = attrs.get("createdfromcode")
            member = MEMBER_OF.get(code.value if isinstance(code, OptionSetValue) else code)
            if member is None:
                continue
            dynamic = bool(attrs.get("type"))
            local = db.session.scalar(select(ContactList).where(
                ContactList.organization_id == ctx.org_id, ContactList.crm_list_id == crm_list.id))
            if local is not None and local.last_synced_at and dynamic and not local.keep_in_sync:
                c.skipped += 1
                continue
            if local is None:
                local = ContactList(organization_id=ctx.org_id, crm_list_id=crm_list.id, dynamic=dynamic,
                                    member_type=member, name=attrs.get("listname") or "CRM list")
                ctx.add(local)
                c.created += 1
            else:
                ctx.assign(local, {"name": attrs.get("listname") or local.name})
                c.updated += 1
            if ctx.writes:
                db.session.flush()
                db.session.execute(delete(ContactListMember).where(ContactListMember.list_id == local.id))
            ctx.commit()
            skipped_before = c.skipped
            columns = people_columns(member)
            if dynamic and attrs.get("query"):
                members_query = with_columns(attrs["query"], member, columns)
            else:
                members_query = fetch_xml(member, columns, order=[f"{member}id"], links=[{
                    "name": "listmember", "from": "entityid", "to": f"{member}id", "intersect": True,
                    "conditions": [("listid", "eq", crm_list.id)]}])
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
