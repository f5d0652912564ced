"""Record operations of the stand-in organization: validation, state rules, privileges, lists."""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import schema as s
from .query import Query, QueryEngine, Result, parse_fetch
from .store import DuplicateKey, Store
from .values import (
    E_DUPLICATE,
    E_INVALID_ARGUMENT,
    E_MISSING_PRIVILEGE,
    E_NOT_FOUND,
    CrmFault,
    EntityIn,
    EntityReference,
    OptionSetValue,
    json_to_stored,
    norm_guid,
    now_iso,
    to_stored,
)

E_NO_ENTITY = -2147217150


@dataclass
class FaultSettings:
    """Injected misbehaviour (see control.py)."""

    latency_ms: int = 0
    per_record_ms: int = 0
    busy_ratio: float = 0.0
    busy_every_nth: int = 0
    http500_ratio: float = 0.0
    http500_every_nth: int = 0
    drop_ratio: float = 0.0
    drop_every_nth: int = 0
    password_changed_user: str | None = None
    claims_mode: bool = False
    missing_privilege: list[str] = field(default_factory=list)
    max_concurrent_executemultiple: int = 0
    # The behaviours of a real server on a bad day (README, "Real-server behaviours").
    lose_answer_ratio: float = 0.0
    lose_answer_every_nth: int = 0
    bad_auth_ticket: bool = False
    max_batch_size: int = 0
    item_fault_ratio: float = 0.0
    item_fault_every_nth: int = 0
    item_fault_kind: str = "sql_timeout"
    stale_connection_ratio: float = 0.0
    stale_connection_every_nth: int = 0
    drip_ms: int = 0
    hang_ratio: float = 0.0
    hang_every_nth: int = 0
    hang_seconds: float = 0.0
    hang_writes_only: bool = False
    hang_limit: int = 0  # at most this many requests are held (0: no limit)
    seed: int | None = None
    # Online mode: service protection 429s (per request, or per operation inside a $batch) and token lifetime.
    throttle_ratio: float = 0.0
    throttle_every_nth: int = 0
    throttle_retry_after: int = 1
    throttle_code: int = 0
    throttle_scope: str = "request"
    max_concurrent_requests: int = 0
    token_lifetime: int = 3600
    # The x-ms-dop-hint (recommended degree of parallelism) every Web API answer carries, as the real service's
    # do: 0 sends the sandbox's usual value (online.DOP_HINT), a negative number sends none.
    dop_hint: int = 0


@dataclass
class User:
    """The authenticated caller as a systemuser."""

    id: str
    name: str


class Crm:
    """The organization's data operations, shared by the SOAP, OData and Web API front ends."""

    def __init__(self, store: Store, org_name: str) -> None:
        """Bind to a store; create organization ids on first use."""
        self.store = store
        self.engine = QueryEngine(store)
        self.org_name = org_name
        self.faults = FaultSettings()
        self.em_lock = threading.Lock()
        self.em_running = 0
        self.em_peak = 0  # most ExecuteMultiple requests in progress at once (reported in stats)
        self.batch_running = 0
        self.batch_peak = 0  # most Web API $batch requests in progress at once (online mode; in stats too)
        self.ensure_org()

    # ------------------------------------------------------------ organization

    def ensure_org(self) -> None:
        """Organization and business-unit ids, kept in the database so they survive restarts."""
        for key in ("organizationid", "businessunitid"):
            if self.store.meta(key) is None:
                self.store.set_meta(key, str(uuid.uuid4()))

    @property
    def organization_id(self) -> str:
        """OrganizationId for WhoAmI."""
        return self.store.meta("organizationid") or ""

    @property
    def business_unit_id(self) -> str:
        """BusinessUnitId for WhoAmI."""
        return self.store.meta("businessunitid") or ""

    def user_for(self, principal: str) -> User:
        """The systemuser of a DOMAIN\\user principal, created on first sight."""
        found = self.engine.store.select(
            "SELECT entity, id, data FROM records WHERE entity = 'systemuser' "
            "AND lower(json_extract(data, '$.domainname')) = lower(?)",
            [principal],
        )
        if found:
            return User(found[0][1], found[0][2].get("fullname") or principal)
        rid = str(uuid.uuid4())
        name = principal.split("\\")[-1]
        now = now_iso()
        data = {
            "domainname": principal,
            "firstname": name,
            "lastname": "(sandbox)",
            "fullname": f"{name} (sandbox)",
            "isdisabled": False,
            "businessunitid": {"Id": self.business_unit_id, "LogicalName": "businessunit", "Name": self.org_name},
            "createdon": now,
            "modifiedon": now,
        }
        with contextlib.suppress(DuplicateKey):
            self.store.insert("systemuser", rid, data)
        return User(rid, data["fullname"])

    def custom_options(self, entity: str, attribute: str) -> dict[int, str]:
        """Org-specific option values (InsertOptionValue and the platform option)."""
        return self.store.custom_options(entity, attribute)

    def extra_options(self, entity: str) -> dict[str, dict[int, str]]:
        """Custom option labels per attribute, for formatted values."""
        if entity != "lead":
            return {}
        return {"leadsourcecode": self.custom_options("lead", "leadsourcecode")}

    # ------------------------------------------------------------ helpers

    @staticmethod
    def entity_def(name: str) -> s.EntityDef:
        """Entity metadata or the CRM's unknown-entity fault."""
        ent = s.ENTITIES.get(name)
        if ent is None:
            raise CrmFault(E_NO_ENTITY, f"The entity with a name = '{name}' was not found in the MetadataCache.")
        return ent

    def check_privilege(self, action: str, ent: s.EntityDef, user: User | None) -> None:
        """Fault with -2147220960 when the injected missing privilege matches."""
        name = "Activity" if ent.name in ("activitypointer",) else ent.schema_name
        privilege = f"prv{action}{name}"
        if privilege.lower() in (p.lower() for p in self.faults.missing_privilege):
            who = user.id if user else "unknown"
            raise CrmFault(
                E_MISSING_PRIVILEGE,
                f"SecLib::AccessCheckEx failed. Returned hr = -2147220960, ObjectID: , OwnerId: {who}, "
                f"OwnerIdType: 8 and CallingUser: {who}. ObjectTypeCode: {ent.object_type_code}, "
                f"objectBusinessUnitId: {self.business_unit_id}, AccessRights: {action}Access. "
                f"Computed rightsToCheck={action}Access, privilege={privilege}",
                {"Privilege": privilege},
            )

    @staticmethod
    def not_found(entity: str, rid: str) -> CrmFault:
        """The CRM's missing-record fault."""
        return CrmFault(E_NOT_FOUND, f"{entity} With Id = {rid} Does Not Exist")

    def load(self, entity: str, rid: str) -> tuple[str, dict[str, Any]]:
        """(stored entity, data) of a record or the not-found fault."""
        rid = norm_guid(rid)
        if entity == "activitypointer":
            found = self.store.find_entity(s.ACTIVITY_ENTITIES, rid)
            if found is None:
                raise self.not_found(entity, rid)
            return found
        data = self.store.get(entity, rid)
        if data is None:
            raise self.not_found(entity, rid)
        return entity, data

    def _primary_name(self, entity: str, rid: str) -> str | None:
        ent = s.ENTITIES.get(entity)
        if ent is None or entity == "activitypointer":
            return None
        data = self.store.get(entity, rid)
        if data is None:
            raise self.not_found(entity, rid)
        return data.get(ent.primary_name)

    def _resolve_lookups(self, ent: s.EntityDef, data: dict[str, Any], changed: dict[str, Any]) -> None:
        """Check lookup targets exist and fill their Name, as the CRM does on read."""
        for attr, value in changed.items():
            if ent.attributes.get(attr) != s.LOOKUP or value is None:
                continue
            target = value.get("LogicalName") or ent.lookup_targets.get(attr)
            if not target:
                raise CrmFault(E_INVALID_ARGUMENT, f"EntityReference for '{attr}' has no LogicalName.")
            value["LogicalName"] = target
            if target in s.ENTITIES and target != "activitypointer":
                value["Name"] = self._primary_name(target, value["Id"])
            data[attr] = value

    def _apply_state(self, ent: s.EntityDef, data: dict[str, Any], state: int | None, status: int | None) -> None:
        """Validate statecode/statuscode and apply them (status defaults from the state)."""
        if ent.state is None:
            return
        if state is None:
            state = int(data.get("statecode", 0))
        if state not in ent.state.states:
            raise CrmFault(E_INVALID_ARGUMENT, f"{state} is not a valid state code on {ent.name}.")
        allowed = ent.state.states[state][1]
        if status is None or status == -1:
            status = allowed[0]
        if status not in allowed:
            raise CrmFault(
                E_INVALID_ARGUMENT,
                f"{status} is not a valid status code for state code {ent.name}State.{ent.state.states[state][0]}"
                f" on {ent.name} with Id {data.get(ent.primary_id, '')}.",
            )
        data["statecode"] = state
        data["statuscode"] = status

    def _derive(self, ent: s.EntityDef, data: dict[str, Any]) -> None:
        """Computed attributes: fullname, objecttypecode, entitytype."""
        if ent.name in s.NAMED_PERSONS:
            full = " ".join(p for p in (data.get("firstname"), data.get("lastname")) if p)
            data["fullname"] = full or None
        if ent.name == "annotation" and data.get("objectid") and not data.get("objecttypecode"):
            data["objecttypecode"] = data["objectid"]["LogicalName"]
        if ent.name == "listmember" and data.get("entityid"):
            data["entitytype"] = data["entityid"]["LogicalName"]
        if ent.name in s.ACTIVITY_ENTITIES:
            data["activitytypecode"] = ent.name
        for key in [k for k, v in data.items() if v is None]:
            del data[key]

    # ------------------------------------------------------------ operations

    def create(self, entity_in: EntityIn, user: User | None) -> str:
        """Create a record from a parsed x:Entity and return its id."""
        ent = self.entity_def(entity_in.logical_name)
        if ent.name == "activitypointer":
            raise CrmFault(
                E_INVALID_ARGUMENT, "The 'Create' method does not support entities of type 'activitypointer'."
            )
        self.check_privilege("Create", ent, user)
        custom = self.custom_options(ent.name, "leadsourcecode") if ent.name == "lead" else {}
        attrs = dict(entity_in.attributes)
        state_val = attrs.pop("statecode", None)
        status_val = attrs.pop("statuscode", None)
        rid = entity_in.id
        explicit = attrs.pop(ent.primary_id, None)
        if explicit is not None:
            rid = norm_guid(str(explicit))
        rid = rid or str(uuid.uuid4())
        check_lengths(ent, attrs)
        data = {k: to_stored(ent, k, v, custom) for k, v in attrs.items()}
        self._resolve_lookups(ent, data, dict(data))
        state = to_stored(ent, "statecode", state_val, custom) if state_val is not None else 0
        status = to_stored(ent, "statuscode", status_val, custom) if status_val is not None else None
        self._apply_state(ent, data, state, status)
        return self._insert(ent, rid, data, user)

    def _insert(self, ent: s.EntityDef, rid: str, data: dict[str, Any], user: User | None) -> str:
        now = now_iso()
        data.setdefault("createdon", now)
        data.setdefault("modifiedon", now)
        if user is not None and "createdby" in ent.attributes:
            ref = {"Id": user.id, "LogicalName": "systemuser", "Name": user.name}
            data.setdefault("createdby", ref)
            data.setdefault("modifiedby", ref)
            data.setdefault("ownerid", ref)
        self._derive(ent, data)
        if ent.name == "listmember":
            self._check_member(data)
        try:
            self.store.insert(ent.name, rid, data)
        except DuplicateKey as exc:
            raise CrmFault(E_DUPLICATE, "Cannot insert duplicate key.") from exc
        if ent.name == "listmember":
            self._recount(data["listid"]["Id"])
        return rid

    def _check_member(self, data: dict[str, Any]) -> None:
        lst = self.store.get("list", data["listid"]["Id"]) if data.get("listid") else None
        if lst is None or not data.get("entityid"):
            raise CrmFault(E_INVALID_ARGUMENT, "A list member needs an existing listid and an entityid.")
        if lst.get("type"):
            raise CrmFault(E_INVALID_ARGUMENT, "Members cannot be added to a dynamic marketing list.")
        kind = {1: "account", 2: "contact", 4: "lead"}.get(int(lst.get("createdfromcode", 4)))
        if data["entityid"]["LogicalName"] != kind:
            raise CrmFault(E_INVALID_ARGUMENT, f"The member type does not match the list member type ({kind}).")

    def _recount(self, list_id: str) -> None:
        lst = self.store.get("list", list_id)
        if lst is None:
            return
        lst["membercount"] = self.store.scalar(
            "SELECT COUNT(*) FROM records WHERE entity = 'listmember' AND json_extract(data, '$.listid.Id') = ?",
            (list_id,),
        )
        self.store.replace("list", list_id, lst)

    def update(self, entity_in: EntityIn, user: User | None) -> None:
        """Update the given attributes of an existing record."""
        ent = self.entity_def(entity_in.logical_name)
        self.check_privilege("Write", ent, user)
        attrs = dict(entity_in.attributes)
        rid = entity_in.id or (norm_guid(str(attrs[ent.primary_id])) if attrs.get(ent.primary_id) else None)
        attrs.pop(ent.primary_id, None)
        if not rid:
            raise CrmFault(E_INVALID_ARGUMENT, "Entity Id must be specified for Update")
        stored_entity, data = self.load(ent.name, rid)
        custom = self.custom_options(ent.name, "leadsourcecode") if ent.name == "lead" else {}
        state_val = attrs.pop("statecode", None)
        status_val = attrs.pop("statuscode", None)
        check_lengths(ent, attrs)
        changed = {k: to_stored(ent, k, v, custom) for k, v in attrs.items()}
        self._resolve_lookups(ent, data, changed)
        for key, value in changed.items():
            data[key] = value
        if state_val is not None or status_val is not None:
            state = to_stored(ent, "statecode", state_val, custom) if state_val is not None else None
            status = to_stored(ent, "statuscode", status_val, custom) if status_val is not None else None
            self._apply_state(ent, data, state, status)
        data["modifiedon"] = now_iso()
        if user is not None and "modifiedby" in ent.attributes:
            data["modifiedby"] = {"Id": user.id, "LogicalName": "systemuser", "Name": user.name}
        self._derive(ent, data)
        self.store.replace(stored_entity, rid, data)

    def delete(self, entity: str, rid: str, user: User | None) -> None:
        """Delete a record (and list memberships, notes and activities that point at it)."""
        ent = self.entity_def(entity)
        self.check_privilege("Delete", ent, user)
        stored_entity, data = self.load(ent.name, rid)
        rid = norm_guid(rid)
        self.store.delete(stored_entity, rid)
        conn = self.store.conn()
        conn.execute(
            "DELETE FROM records WHERE entity = 'listmember' AND (json_extract(data, '$.listid.Id') = ? "
            "OR json_extract(data, '$.entityid.Id') = ?)",
            (rid, rid),
        )
        # Notes and activities belong to their record (a parental relationship): they go with it.
        conn.execute(
            "DELETE FROM records WHERE (entity = 'annotation' AND json_extract(data, '$.objectid.Id') = ?) "
            "OR (entity IN ('task', 'phonecall') AND json_extract(data, '$.regardingobjectid.Id') = ?)",
            (rid, rid),
        )
        if ent.name == "listmember" and data.get("listid"):
            self._recount(data["listid"]["Id"])

    def retrieve(self, entity: str, rid: str, columns: list[str] | None, user: User | None) -> dict[str, Any]:
        """One record's data (columns validated)."""
        ent = self.entity_def(entity)
        self.check_privilege("Read", ent, user)
        for col in columns or []:
            if col not in ent.attributes:
                raise CrmFault(-2147217149, f"'{ent.name}' entity doesn't contain attribute with Name = '{col}'.")
        _, data = self.load(ent.name, rid)
        return data

    def retrieve_multiple(self, query: Query | str, user: User | None, default_count: int = 5000) -> Result:
        """Run FetchXML text or a Query."""
        q = parse_fetch(query) if isinstance(query, str) else query
        ent = self.entity_def(q.entity)
        self.check_privilege("Read", ent, user)
        for link in q.links:
            self.check_privilege("Read", self.entity_def(link.name), user)
        return self.engine.run(q, default_count)

    def set_state(self, ref: EntityReference, state: int, status: int, user: User | None) -> None:
        """SetState: validate the pair against the entity's state model."""
        ent = self.entity_def(ref.logical_name)
        self.check_privilege("Write", ent, user)
        if ent.state is None:
            raise CrmFault(E_INVALID_ARGUMENT, f"The entity {ent.name} does not support SetState.")
        stored_entity, data = self.load(ent.name, ref.id)
        self._apply_state(ent, data, state, status)
        data["modifiedon"] = now_iso()
        self.store.replace(stored_entity, norm_guid(ref.id), data)

    def add_member(self, list_id: str, entity_id: str, user: User | None) -> str:
        """AddMemberList: add a lead/contact to a static list; return the listmember id."""
        list_id, entity_id = norm_guid(list_id), norm_guid(entity_id)
        lst = self.store.get("list", list_id)
        if lst is None:
            raise self.not_found("list", list_id)
        self.check_privilege("Write", s.ENTITIES["list"], user)
        kind = {1: "account", 2: "contact", 4: "lead"}.get(int(lst.get("createdfromcode", 4)), "lead")
        if self.store.get(kind, entity_id) is None:
            raise self.not_found(kind, entity_id)
        existing = self.store.select(
            "SELECT entity, id, data FROM records WHERE entity = 'listmember' "
            "AND json_extract(data, '$.listid.Id') = ? AND json_extract(data, '$.entityid.Id') = ?",
            [list_id, entity_id],
        )
        if existing:
            return existing[0][1]
        data = {
            "listid": {"Id": list_id, "LogicalName": "list", "Name": lst.get("listname")},
            "entityid": {"Id": entity_id, "LogicalName": kind, "Name": None},
        }
        return self._insert(s.ENTITIES["listmember"], str(uuid.uuid4()), data, user)

    def qualify_lead(
        self, lead_id: str, create_contact: bool, create_opportunity: bool, status: int, user: User | None
    ) -> list[tuple[str, str]]:
        """QualifyLead: mark qualified and create the requested records."""
        lead_id = norm_guid(lead_id)
        _, lead = self.load("lead", lead_id)
        if int(lead.get("statecode", 0)) == 1:
            raise CrmFault(E_INVALID_ARGUMENT, "The lead is already closed.")
        created: list[tuple[str, str]] = []
        contact_id = None
        lead_ref = EntityReference("lead", lead_id)
        if create_contact:
            attrs = {
                k: lead[k]
                for k in ("firstname", "lastname", "emailaddress1", "jobtitle", "telephone1", "mobilephone")
                if k in lead
            }
            attrs["originatingleadid"] = lead_ref
            contact_id = self.create(EntityIn("contact", None, attrs), user)
            created.append(("contact", contact_id))
        if create_opportunity:
            attrs2: dict[str, Any] = {
                "name": lead.get("subject") or lead.get("fullname") or "Opportunity",
                "originatingleadid": lead_ref,
            }
            if contact_id:
                attrs2["parentcontactid"] = EntityReference("contact", contact_id)
                attrs2["customerid"] = EntityReference("contact", contact_id)
            opp_id = self.create(EntityIn("opportunity", None, attrs2), user)
            created.append(("opportunity", opp_id))
            lead["qualifyingopportunityid"] = {"Id": opp_id, "LogicalName": "opportunity", "Name": attrs2["name"]}
            self.store.replace("lead", lead_id, lead)
        self.set_state(EntityReference("lead", lead_id), 1, status if status > 0 else 3, user)
        return created

    def insert_option(self, entity: str, attribute: str, label: str, value: int | None) -> int:
        """InsertOptionValue: next value from 100,000,000 unless given; duplicate values fault."""
        ent = self.entity_def(entity)
        if ent.attributes.get(attribute) != s.OPTIONSET or attribute in ("statecode", "statuscode"):
            raise CrmFault(-2147217149, f"'{entity}' entity doesn't contain a picklist attribute '{attribute}'.")
        current = {**ent.options.get(attribute, {}), **self.custom_options(entity, attribute)}
        if value is None:
            value = max([s.CUSTOM_OPTION_BASE - 1, *[v for v in current if v >= s.CUSTOM_OPTION_BASE]]) + 1
        elif value in current:
            raise CrmFault(E_DUPLICATE, f"An option with the value {value} already exists.")
        self.store.add_option(entity, attribute, value, label)
        return value

    def set_platform_option(self, present: bool) -> int | None:
        """Add or remove the platform's lead-source option; return its value when present."""
        current = self.custom_options("lead", "leadsourcecode")
        for value, label in current.items():
            if label.lower() == s.PLATFORM_OPTION_LABEL.lower():
                if not present:
                    self.store.remove_options("lead", "leadsourcecode", s.PLATFORM_OPTION_LABEL)
                    return None
                return value
        if present:
            return self.insert_option("lead", "leadsourcecode", s.PLATFORM_OPTION_LABEL, None)
        return None

    def bulk_insert(self, entity: str, rows: list[dict[str, Any]]) -> list[str]:
        """Fast preload from loosely typed JSON (control API)."""
        ent = self.entity_def(entity)
        if entity == "activitypointer":
            raise CrmFault(E_INVALID_ARGUMENT, "Insert task or phonecall, not activitypointer.")
        custom = self.custom_options(entity, "leadsourcecode") if entity == "lead" else {}
        now = now_iso()
        out: list[tuple[str, dict[str, Any]]] = []
        for row in rows:
            rid = norm_guid(str(row.get(ent.primary_id) or row.get("id") or uuid.uuid4()))
            data = {k: json_to_stored(ent, k, v, custom) for k, v in row.items() if k not in (ent.primary_id, "id")}
            if ent.state is not None:
                state = int(data.get("statecode", 0))
                data.setdefault("statecode", state)
                data.setdefault("statuscode", ent.state.default_status(state))
            data.setdefault("createdon", now)
            data.setdefault("modifiedon", now)
            self._derive(ent, data)
            out.append((rid, data))
        try:
            self.store.insert_many(entity, out)
        except DuplicateKey as exc:
            raise CrmFault(E_DUPLICATE, "Cannot insert duplicate key.") from exc
        if entity == "listmember":
            for lid in {d["listid"]["Id"] for _, d in out if d.get("listid")}:
                self._recount(lid)
        return [rid for rid, _ in out]


def check_lengths(ent: s.EntityDef, attrs: dict[str, Any]) -> None:
    """Refuse a text longer than its attribute's MaxLength, in the words of the server's validation error."""
    for name, value in attrs.items():
        limit = s.max_length(ent.name, name)
        # .NET and SQL Server count UTF-16 code units: a character beyond the BMP counts twice.
        units = len(value.encode("utf-16-le", "surrogatepass")) // 2 if isinstance(value, str) else 0
        if limit is not None and units > limit:
            raise CrmFault(
                E_INVALID_ARGUMENT,
                f"A validation error occurred. The length of the '{name}' attribute of the '{ent.name}' entity "
                f"exceeded the maximum allowed length of '{limit}'.",
            )


def option_value(value: Any) -> int:
    """An int from an OptionSetValue or int parameter."""
    if isinstance(value, OptionSetValue):
        return value.value
    if isinstance(value, int):
        return value
    raise CrmFault(E_INVALID_ARGUMENT, "Expected an OptionSetValue.")
