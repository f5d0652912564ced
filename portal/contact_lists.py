"""Contact lists: the lists made from the CRM's marketing lists, their members, and making a new one."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select

from .connectors.dynamics import DynamicsError
from .extensions import db
from .models import CrmIntegration
from .platform_models import ContactList, ContactListMember, Lead
from .sync.steps.contact_lists import CrmList, live_marketing_lists

MEMBERS_PER_PAGE = 50


@dataclass
class MembersPage:
    """One page of a list's members, as searched."""

    rows: list[Lead]
    total: int
    page: int
    more: bool


def lists_of(organization_id: int) -> list[ContactList]:
    """The organization's contact lists, by name."""
    return list(db.session.scalars(select(ContactList).where(ContactList.organization_id == organization_id)
                                   .order_by(func.lower(ContactList.name), ContactList.id)))


def list_of(organization_id: int, list_id: int) -> ContactList | None:
    """One contact list of the organization, or None (another organization's list is never found)."""
    found = db.session.get(ContactList, list_id)
    return found if found is not None and found.organization_id == organization_id else None


def members(contact_list: ContactList, search: str = "", page: int = 1) -> MembersPage:
    """A page of members by name and email; ``search`` matches either, taken literally (no wildcards)."""
    query = (select(Lead).join(ContactListMember, ContactListMember.lead_id == Lead.id)
             .where(ContactListMember.list_id == contact_list.id))
    # Control characters and lone surrogates can match nothing (and PostgreSQL refuses a NUL outright).
    search = "".join(ch for ch in search if ord(ch) >= 32 and not 0xD800 <= ord(ch) <= 0xDFFF).strip()[:200]
    if search:
        query = query.where(or_(*(column.icontains(search, autoescape=True)
                                  for column in (Lead.email, Lead.first_name, Lead.last_name))))
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = max(1, page)
    rows = list(db.session.scalars(query.order_by(func.lower(Lead.last_name), func.lower(Lead.first_name), Lead.id)
                                   .limit(MEMBERS_PER_PAGE + 1).offset((page - 1) * MEMBERS_PER_PAGE)))
    return MembersPage(rows=rows[:MEMBERS_PER_PAGE], total=total, page=page, more=len(rows) > MEMBERS_PER_PAGE)


def crm_lists(integration: CrmIntegration) -> tuple[list[CrmList], str | None]:
    """The CRM's marketing lists read now, or none and why they could not be read."""
    refusal = integration.connection_refusal()
    if refusal:
        return [], refusal
    try:
        return live_marketing_lists(integration), None
    except DynamicsError as exc:
        return [], f"The CRM's marketing lists could not be read: {exc.message} What to do: {exc.action}"


def made_from(organization_id: int, crm_list_id: str) -> ContactList | None:
    """The contact list already made from this CRM list, if any."""
    return db.session.scalar(select(ContactList).where(ContactList.organization_id == organization_id,
                                                       func.lower(ContactList.crm_list_id) == crm_list_id.lower()))


def create_from_crm(integration: CrmIntegration, crm_list: CrmList, name: str, keep_in_sync: bool) -> ContactList:
    """A new contact list for one CRM marketing list; its members come with the next contact_lists step."""
    contact_list = ContactList(organization_id=integration.organization_id, name=name.strip(),
                               crm_list_id=crm_list.id, crm_list_name=crm_list.name, dynamic=crm_list.dynamic,
                               member_type=crm_list.member_type, keep_in_sync=keep_in_sync)
    db.session.add(contact_list)
    db.session.flush()
    return contact_list
