"""Organization.svc/web: SOAPAction dispatch of Create, Retrieve, RetrieveMultiple, Update, Delete, Execute."""

from __future__ import annotations

import time
from typing import Any

from lxml import etree

from . import schema as s
from .crm import Crm, User, option_value
from .metadata import entity_metadata, picklist_metadata
from .query import Result, parse_fetch, parse_xml
from .soap import (
    CRM,
    EM,
    NS_DECL,
    SER,
    SOAP11,
    SVC,
    XS,
    XTYPE,
    child,
    children,
    entity_body,
    esc,
    fault_detail_xml,
    parse_attributes,
    parse_columnset,
    parse_entity,
    parse_value,
    results_xml,
    text,
    xi_type,
)
from .values import (
    E_BATCH_SIZE,
    E_INVALID_ARGUMENT,
    E_SERVER_BUSY,
    E_UNKNOWN_MESSAGE,
    TRANSIENT_ITEM_FAULTS,
    CrmFault,
    EntityIn,
)

VERSION = "8.2.2.112"
MAX_BATCH = 1000
# Messages whose request and response types live in the crm contracts namespace
# (http://schemas.microsoft.com/crm/2011/Contracts), not the xrm one; the message family decides.
CRM_MESSAGES = {
    "WhoAmI",
    "RetrieveVersion",
    "SetState",
    "QualifyLead",
    "WinOpportunity",
    "LoseOpportunity",
    "AddMemberList",
    "AddListMembersList",
    "RemoveMemberList",
    "PublishXml",
    "PublishAllXml",
}


class Organization:
    """Parses one SOAP request and produces the SOAP body of the answer."""

    def __init__(self, crm: Crm) -> None:
        """Bind to the organization's data."""
        self.crm = crm
        self.injector: Any = None  # the app's fault injector (transient per-item faults)

    # ------------------------------------------------------------ entry

    def operation(self, body: bytes) -> tuple[str, etree._Element]:
        """(operation local name, element) from an envelope."""
        root = parse_xml(body)
        if etree.QName(root).namespace != SOAP11 or etree.QName(root).localname != "Envelope":
            raise CrmFault(E_INVALID_ARGUMENT, "Expected a SOAP 1.1 envelope.")
        body_el = child(root, "Body")
        ops = children(body_el)
        if body_el is None or not ops:
            raise CrmFault(E_INVALID_ARGUMENT, "The SOAP body is empty.")
        op = ops[0]
        if etree.QName(op).namespace != SVC:
            raise CrmFault(E_INVALID_ARGUMENT, f"Unexpected element {op.tag} in the SOAP body.")
        return etree.QName(op).localname, op

    def handle(self, action: str, body: bytes, user: User) -> tuple[str, str]:
        """Run the operation; return (label for statistics, body XML)."""
        name, op = self.operation(body)
        if action and action != name:
            raise CrmFault(E_INVALID_ARGUMENT, f"SOAPAction '{action}' does not match the body element '{name}'.")
        if name == "Create":
            ent_el = child(op, "entity")
            if ent_el is None:
                raise CrmFault(E_INVALID_ARGUMENT, "Value cannot be null.\nParameter name: entity")
            rid = self.crm.create(parse_entity(ent_el), user)
            return "Create", f'<CreateResponse xmlns="{SVC}"><CreateResult>{rid}</CreateResult></CreateResponse>'
        if name == "Update":
            ent_el = child(op, "entity")
            if ent_el is None:
                raise CrmFault(E_INVALID_ARGUMENT, "Value cannot be null.\nParameter name: entity")
            self.crm.update(parse_entity(ent_el), user)
            return "Update", f'<UpdateResponse xmlns="{SVC}"/>'
        if name == "Delete":
            self.crm.delete(text(child(op, "entityName")) or "", text(child(op, "id")) or "", user)
            return "Delete", f'<DeleteResponse xmlns="{SVC}"/>'
        if name == "Retrieve":
            entity = text(child(op, "entityName")) or ""
            rid = text(child(op, "id")) or ""
            columns = parse_columnset(child(op, "columnSet"))
            inner = self.retrieve_xml(entity, rid, columns, user)
            return "Retrieve", (
                f'<RetrieveResponse xmlns="{SVC}"><RetrieveResult {NS_DECL}>{inner}</RetrieveResult></RetrieveResponse>'
            )
        if name == "RetrieveMultiple":
            query_el = child(op, "query")
            if query_el is None:
                raise CrmFault(E_INVALID_ARGUMENT, "Value cannot be null.\nParameter name: query")
            result = self.run_query(parse_value(query_el), user)
            return "RetrieveMultiple", (
                f'<RetrieveMultipleResponse xmlns="{SVC}"><RetrieveMultipleResult {NS_DECL}>'
                f"{self.collection_body(result)}</RetrieveMultipleResult></RetrieveMultipleResponse>"
            )
        if name == "Execute":
            req = child(op, "request")
            if req is None:
                raise CrmFault(E_INVALID_ARGUMENT, "Value cannot be null.\nParameter name: request")
            message, type_ns, results = self.execute(req, user, nested=False)
            prefix = "x" if type_ns != CRM else "cr"
            return f"Execute:{message}", (
                f'<ExecuteResponse xmlns="{SVC}"><ExecuteResult {NS_DECL} xmlns:{prefix}="{type_ns}" '
                f'i:type="{prefix}:{message}Response"><b:ResponseName>{message}</b:ResponseName>'
                f"{results}</ExecuteResult></ExecuteResponse>"
            )
        if name in ("Associate", "Disassociate"):
            return name, self.associate(name, op, user)
        raise CrmFault(E_UNKNOWN_MESSAGE, f"The operation '{name}' is not supported by the sandbox.")

    # ------------------------------------------------------------ pieces

    def retrieve_xml(self, entity: str, rid: str, columns: list[str] | None, user: User | None) -> str:
        """Entity children for a Retrieve result."""
        data = self.crm.retrieve(entity, rid, columns, user)
        ent = s.ENTITIES[entity]
        from .values import norm_guid

        return entity_body(ent, entity, norm_guid(rid), data, columns, self.crm.extra_options(entity))

    def run_query(self, query: Any, user: User | None) -> Result:
        """A FetchExpression or QueryExpression parameter."""
        if not isinstance(query, tuple):
            raise CrmFault(E_INVALID_ARGUMENT, "The query must be a FetchExpression or QueryExpression.")
        kind, payload = query
        q = parse_fetch(payload) if kind == "fetch" else payload
        return self.crm.retrieve_multiple(q, user)

    def collection_body(self, result: Result) -> str:
        """EntityCollection children: Entities … TotalRecordCountLimitExceeded."""
        ent = s.ENTITIES[result.entity]
        extra = self.crm.extra_options(result.entity)
        # All-attributes on the activity union still returns only activitypointer's attributes.
        columns = result.columns
        parts = []
        for _stored, rid, data in result.rows:
            parts.append(f"<b:Entity>{entity_body(ent, result.entity, rid, data, columns, extra)}</b:Entity>")
        cookie = "" if result.cookie is None else esc(result.cookie)
        cookie_xml = f"<b:PagingCookie>{cookie}</b:PagingCookie>" if result.cookie else '<b:PagingCookie i:nil="true"/>'
        return (
            f"<b:Entities>{''.join(parts)}</b:Entities>"
            f"<b:EntityName>{esc(result.entity)}</b:EntityName>"
            "<b:MinActiveRowVersion>-1</b:MinActiveRowVersion>"
            f"<b:MoreRecords>{'true' if result.more else 'false'}</b:MoreRecords>"
            f"{cookie_xml}"
            f"<b:TotalRecordCount>{result.total}</b:TotalRecordCount>"
            f"<b:TotalRecordCountLimitExceeded>{'true' if result.limit_exceeded else 'false'}"
            "</b:TotalRecordCountLimitExceeded>"
        )

    def associate(self, name: str, op: etree._Element, user: User) -> str:
        """Associate/Disassociate: only list membership relationships are modelled."""
        target = parse_value_ref(op)
        related = [parse_ref(e) for e in children(child(op, "relatedEntities"))]
        if target.logical_name != "list":
            raise CrmFault(E_INVALID_ARGUMENT, "Only list membership relationships are supported by the sandbox.")
        for ref in related:
            if name == "Associate":
                self.crm.add_member(target.id, ref.id, user)
            else:
                self._remove_member(target.id, ref.id, user)
        return f'<{name}Response xmlns="{SVC}"/>'

    def _remove_member(self, list_id: str, entity_id: str, user: User | None) -> None:
        rows = self.crm.store.select(
            "SELECT entity, id, data FROM records WHERE entity = 'listmember' "
            "AND json_extract(data, '$.listid.Id') = ? AND json_extract(data, '$.entityid.Id') = ?",
            [list_id, entity_id],
        )
        for _, rid, _ in rows:
            self.crm.delete("listmember", rid, user)

    # ------------------------------------------------------------ Execute

    def execute(self, req: etree._Element, user: User, nested: bool) -> tuple[str, str, str]:
        """Run an OrganizationRequest; return (message name, response type namespace, Results XML)."""
        message = (text(child(req, "RequestName")) or "").strip()
        t = xi_type(req)
        if not message and t:
            message = t[1].removesuffix("Request")
        params = parse_attributes(child(req, "Parameters"))
        type_ns = CRM if message in CRM_MESSAGES else "http://schemas.microsoft.com/xrm/2011/Contracts"
        if t and t[0] and t[1] != "OrganizationRequest" and t[0] != type_ns:
            raise CrmFault(
                E_INVALID_ARGUMENT,
                f"Element 'request' has type '{t[1]}' in namespace '{t[0]}', which is not known for this message.",
            )
        handler = getattr(self, f"msg_{message}", None)
        if handler is None:
            raise CrmFault(
                E_UNKNOWN_MESSAGE,
                f"The request {message} has not been registered or is not supported by the sandbox.",
            )
        if message == "ExecuteMultiple" and nested:
            raise CrmFault(E_INVALID_ARGUMENT, "ExecuteMultiple cannot be nested in ExecuteMultiple.")
        pairs = handler(params, user)
        return message, type_ns, results_xml(pairs)

    def msg_WhoAmI(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """UserId, BusinessUnitId, OrganizationId."""
        guid = f'<c:value i:type="e:guid" xmlns:e="{SER}">'
        return [
            ("UserId", f"{guid}{user.id}</c:value>"),
            ("BusinessUnitId", f"{guid}{self.crm.business_unit_id}</c:value>"),
            ("OrganizationId", f"{guid}{self.crm.organization_id}</c:value>"),
        ]

    def msg_RetrieveVersion(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """Version string of a Dynamics 365 (8.2) on-premises server."""
        return [("Version", f'<c:value i:type="d:string" xmlns:d="{XS}">{VERSION}</c:value>')]

    def msg_Create(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """CreateRequest → id."""
        target = params.get("Target")
        if not isinstance(target, EntityIn):
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'Target' is missing")
        rid = self.crm.create(target, user)
        return [("id", f'<c:value i:type="e:guid" xmlns:e="{SER}">{rid}</c:value>')]

    def msg_Update(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """UpdateRequest → no results."""
        target = params.get("Target")
        if not isinstance(target, EntityIn):
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'Target' is missing")
        self.crm.update(target, user)
        return []

    def msg_Delete(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """DeleteRequest → no results."""
        target = params.get("Target")
        from .values import EntityReference

        if not isinstance(target, EntityReference):
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'Target' is missing")
        self.crm.delete(target.logical_name, target.id, user)
        return []

    def msg_Retrieve(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """RetrieveRequest → Entity."""
        target = params.get("Target")
        columns = params.get("ColumnSet")
        if target is None:
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'Target' is missing")
        inner = self.retrieve_xml(target.logical_name, target.id, columns, user)
        return [("Entity", f'<c:value i:type="b:Entity">{inner}</c:value>')]

    def msg_RetrieveMultiple(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """RetrieveMultipleRequest → EntityCollection."""
        result = self.run_query(params.get("Query"), user)
        return [("EntityCollection", f'<c:value i:type="b:EntityCollection">{self.collection_body(result)}</c:value>')]

    def msg_SetState(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """SetStateRequest (crm): EntityMoniker, State, Status."""
        ref = params.get("EntityMoniker")
        if ref is None:
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'EntityMoniker' is missing")
        self.crm.set_state(ref, option_value(params.get("State")), option_value(params.get("Status")), user)
        return []

    def msg_RetrieveEntity(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """RetrieveEntityRequest with EntityFilters Attributes: the entity's text attributes and their MaxLength."""
        entity = str(params.get("LogicalName") or "")
        ent = self.crm.entity_def(entity)
        filters = str(params.get("EntityFilters") or "Entity")
        if "Attributes" not in filters and "All" not in filters:
            raise CrmFault(E_INVALID_ARGUMENT, "The sandbox describes entities with EntityFilters Attributes only.")
        return [("EntityMetadata", entity_metadata(ent))]

    def msg_RetrieveAttribute(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """RetrieveAttributeRequest: picklists only (the connector needs lead.leadsourcecode)."""
        entity = str(params.get("EntityLogicalName") or "")
        attribute = str(params.get("LogicalName") or "")
        ent = self.crm.entity_def(entity)
        kind = ent.attributes.get(attribute)
        if kind is None:
            raise CrmFault(-2147217149, f"Could not find attribute with name '{attribute}' on entity '{entity}'.")
        if kind != s.OPTIONSET or attribute in ("statecode", "statuscode"):
            raise CrmFault(E_INVALID_ARGUMENT, f"The sandbox only describes picklist attributes, not '{attribute}'.")
        custom = self.crm.custom_options(entity, attribute)
        options = {**ent.options.get(attribute, {}), **custom}
        return [("AttributeMetadata", picklist_metadata(ent, attribute, options, set(custom)))]

    def msg_InsertOptionValue(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """InsertOptionValueRequest → NewOptionValue."""
        label = params.get("Label")
        from .values import Label

        if not isinstance(label, Label) or not label.text:
            raise CrmFault(E_INVALID_ARGUMENT, "Label is required.")
        if params.get("OptionSetName"):
            raise CrmFault(E_INVALID_ARGUMENT, "Global option sets are not modelled by the sandbox.")
        self.crm.check_privilege("Create", _customization(), user)
        value = params.get("Value")
        new = self.crm.insert_option(
            str(params.get("EntityLogicalName") or ""),
            str(params.get("AttributeLogicalName") or ""),
            label.text,
            int(value) if isinstance(value, int) else None,
        )
        return [("NewOptionValue", f'<c:value i:type="d:int" xmlns:d="{XS}">{new}</c:value>')]

    def msg_PublishXml(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """PublishXml (crm): option changes are visible at once, so only validate the payload."""
        xml = params.get("ParameterXml")
        if not isinstance(xml, str) or not xml.strip():
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'ParameterXml' is missing")
        root = parse_xml(xml)
        if root.tag != "importexportxml":
            raise CrmFault(E_INVALID_ARGUMENT, "ParameterXml must be an <importexportxml> document.")
        return []

    def msg_PublishAllXml(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """PublishAllXml (crm)."""
        return []

    def msg_AddMemberList(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """AddMemberListRequest (crm) → Id of the listmember."""
        rid = self.crm.add_member(str(params.get("ListId")), str(params.get("EntityId")), user)
        return [("Id", f'<c:value i:type="e:guid" xmlns:e="{SER}">{rid}</c:value>')]

    def msg_AddListMembersList(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """AddListMembersListRequest (crm): ListId plus MemberIds."""
        for member in params.get("MemberIds") or []:
            self.crm.add_member(str(params.get("ListId")), str(member), user)
        return []

    def msg_RemoveMemberList(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """RemoveMemberListRequest (crm): ListId, EntityId."""
        self._remove_member(str(params.get("ListId")), str(params.get("EntityId")), user)
        return []

    def msg_QualifyLead(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """QualifyLeadRequest (crm) → CreatedEntities."""
        ref = params.get("LeadId")
        if ref is None:
            raise CrmFault(E_INVALID_ARGUMENT, "Required field 'LeadId' is missing")
        status = params.get("Status")
        created = self.crm.qualify_lead(
            ref.id,
            bool(params.get("CreateContact")),
            bool(params.get("CreateOpportunity")),
            option_value(status) if status is not None else 3,
            user,
        )
        refs = "".join(
            f'<b:EntityReference><b:Id>{rid}</b:Id><b:LogicalName>{name}</b:LogicalName><b:Name i:nil="true"/>'
            "</b:EntityReference>"
            for name, rid in created
        )
        return [("CreatedEntities", f'<c:value i:type="b:EntityReferenceCollection">{refs}</c:value>')]

    def msg_ExecuteMultiple(self, params: dict[str, Any], user: User) -> list[tuple[str, str]]:  # noqa: N802
        """ExecuteMultipleRequest: per-item faults, ContinueOnError, ReturnResponses, batch limit, throttle."""
        requests = params.get("Requests") or []
        settings = params.get("Settings") or {"ContinueOnError": False, "ReturnResponses": False}
        # On-premises administrators can lower the limit; the fault names it in ErrorDetails, as the real one does.
        limit_size = min(MAX_BATCH, self.crm.faults.max_batch_size or MAX_BATCH)
        if len(requests) > limit_size:
            raise CrmFault(
                E_BATCH_SIZE,
                f"The request collection contains {len(requests)} requests, which exceeds the maximum "
                f"batch size of {limit_size}.",
                {"MaxBatchSize": limit_size},
            )
        limit = self.crm.faults.max_concurrent_executemultiple
        with self.crm.em_lock:
            if limit and self.crm.em_running >= limit:
                raise CrmFault(E_SERVER_BUSY, "Server Busy", {"MaxConcurrentExecuteMultiple": limit})
            self.crm.em_running += 1
            self.crm.em_peak = max(self.crm.em_peak, self.crm.em_running)
        try:
            return self._execute_items(requests, settings, user)
        finally:
            with self.crm.em_lock:
                self.crm.em_running -= 1

    def _execute_items(self, requests: list[Any], settings: dict[str, bool], user: User) -> list[tuple[str, str]]:
        if self.crm.faults.per_record_ms:
            # Simulated processing time: each item is written on its own as it is done, and no write lock is held
            # while "processing", so parallel batches overlap as they do on a real server.
            return self._execute_items_in(requests, settings, user, self.crm.faults.per_record_ms / 1000)
        # One transaction for the batch (a savepoint per item keeps items independent): much faster here.
        with self.crm.store.transaction():
            return self._execute_items_in(requests, settings, user)

    def _execute_items_in(
        self, requests: list[Any], settings: dict[str, bool], user: User, pause: float = 0.0
    ) -> list[tuple[str, str]]:
        items: list[str] = []
        faulted = False
        store = self.crm.store
        for index, req in enumerate(requests):
            if pause:
                time.sleep(pause)
            faults = self.crm.faults
            try:
                if self.injector is not None and self.injector.hit("item_fault", faults.item_fault_ratio,
                                                                   faults.item_fault_every_nth):
                    code, text_ = TRANSIENT_ITEM_FAULTS.get(faults.item_fault_kind, TRANSIENT_ITEM_FAULTS["generic"])
                    raise CrmFault(code, text_)
                # Outside a batch transaction (simulated processing time) each item opens its own with
                # BEGIN IMMEDIATE, so parallel batches wait for the write lock instead of failing on it.
                with store.transaction(), store.savepoint():
                    message, type_ns, results = self.execute(req, user, nested=True)
            except CrmFault as fault:
                faulted = True
                items.append(
                    f"<em:ExecuteMultipleResponseItem><em:Fault>"
                    f"{fault_detail_xml(fault.code, fault.message, fault.details, 'b:')}</em:Fault>"
                    f'<em:RequestIndex>{index}</em:RequestIndex><em:Response i:nil="true"/>'
                    "</em:ExecuteMultipleResponseItem>"
                )
                if not settings.get("ContinueOnError"):
                    break
                continue
            if settings.get("ReturnResponses"):
                prefix = "x" if type_ns != CRM else "cr"
                items.append(
                    '<em:ExecuteMultipleResponseItem><em:Fault i:nil="true"/>'
                    f"<em:RequestIndex>{index}</em:RequestIndex>"
                    f'<em:Response xmlns:{prefix}="{type_ns}" i:type="{prefix}:{message}Response">'
                    f"<b:ResponseName>{message}</b:ResponseName>{results}</em:Response>"
                    "</em:ExecuteMultipleResponseItem>"
                )
        responses = (
            f'<c:value i:type="em:ExecuteMultipleResponseItemCollection" xmlns:em="{EM}">{"".join(items)}</c:value>'
        )
        return [
            ("IsFaulted", f'<c:value i:type="d:boolean" xmlns:d="{XS}">{"true" if faulted else "false"}</c:value>'),
            ("Responses", responses),
        ]


def _customization() -> s.EntityDef:
    """Pseudo entity so missing_privilege 'prvCreateCustomization' can block option changes."""
    return s.EntityDef("customization", "Customization", "id", "id", {})


def parse_ref(el: etree._Element) -> Any:
    """EntityReference from an element."""
    from .soap import parse_entity_reference

    return parse_entity_reference(el)


def parse_value_ref(op: etree._Element) -> Any:
    """Associate's entityName + entityId as a reference."""
    from .values import EntityReference, norm_guid

    return EntityReference(text(child(op, "entityName")) or "", norm_guid(text(child(op, "entityId")) or ""))


def request_type(el: etree._Element) -> str | None:
    """Raw xi:type of an element (diagnostics)."""
    return el.get(XTYPE)


__all__ = ["Organization", "EntityIn"]
