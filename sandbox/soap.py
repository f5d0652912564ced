"""SOAP 1.1 envelopes for the /web endpoint: namespace-aware request parsing and response writing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from . import schema as s
from .query import Condition, Filter, Link, Query
from .values import (
    E_INVALID_ARGUMENT,
    CrmFault,
    EntityIn,
    EntityReference,
    Label,
    Money,
    OptionSetValue,
    norm_guid,
)

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SVC = "http://schemas.microsoft.com/xrm/2011/Contracts/Services"
XRM = "http://schemas.microsoft.com/xrm/2011/Contracts"
CRM = "http://schemas.microsoft.com/crm/2011/Contracts"
EM = "http://schemas.microsoft.com/xrm/2012/Contracts"
MD = "http://schemas.microsoft.com/xrm/2011/Metadata"
MD13 = "http://schemas.microsoft.com/xrm/2013/Metadata"
KV = "http://schemas.datacontract.org/2004/07/System.Collections.Generic"
XI = "http://www.w3.org/2001/XMLSchema-instance"
XS = "http://www.w3.org/2001/XMLSchema"
SER = "http://schemas.microsoft.com/2003/10/Serialization/"
ARR = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"

NIL = f"{{{XI}}}nil"
XTYPE = f"{{{XI}}}type"


def q(ns: str, local: str) -> str:
    """Clark notation."""
    return f"{{{ns}}}{local}"


def local(el: etree._Element) -> str:
    """Local name of an element."""
    return etree.QName(el).localname


def child(el: etree._Element, name: str) -> etree._Element | None:
    """First child with this local name, whatever its namespace (tag case matters)."""
    for c in el:
        tag = c.tag
        # str.rpartition is many times cheaper than building an etree.QName for every child looked at.
        if isinstance(tag, str) and tag.rpartition("}")[2] == name:
            return c
    return None


def children(el: etree._Element | None, name: str | None = None) -> list[etree._Element]:
    """Element children, optionally by local name."""
    if el is None:
        return []
    return [c for c in el if isinstance(c.tag, str) and (name is None or c.tag.rpartition("}")[2] == name)]


def text(el: etree._Element | None) -> str | None:
    """Text of an element, None when missing or xi:nil."""
    if el is None or el.get(NIL) == "true":
        return None
    return el.text or ""


def xi_type(el: etree._Element) -> tuple[str | None, str] | None:
    """Resolve the xi:type QName against the namespaces in scope (never trust prefixes)."""
    raw = el.get(XTYPE)
    if not raw:
        return None
    prefix, _, name = raw.rpartition(":")
    ns = el.nsmap.get(prefix or None)
    return ns, name


def _decimal(raw: str) -> Decimal:
    try:
        return Decimal(raw.strip())
    except InvalidOperation as exc:
        raise CrmFault(E_INVALID_ARGUMENT, f"'{raw}' is not a valid decimal.") from exc


def parse_value(el: etree._Element) -> Any:
    """Typed Python value of a kv:value (or similar) element."""
    if el.get(NIL) == "true":
        return None
    t = xi_type(el)
    raw = el.text or ""
    if t is None:
        return raw
    ns, name = t
    try:
        if ns == XS:
            if name == "string":
                return raw
            if name in ("int", "long", "short"):
                return int(raw.strip())
            if name == "boolean":
                return raw.strip().lower() in ("true", "1")
            if name == "decimal":
                return _decimal(raw)
            if name in ("double", "float"):
                return float(raw)
            if name == "dateTime":
                from .values import parse_datetime

                return datetime.strptime(parse_datetime(raw), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if name == "guid":
                return uuid.UUID(norm_guid(raw))
        if ns == SER and name == "guid":
            return uuid.UUID(norm_guid(raw))
    except ValueError as exc:
        raise CrmFault(E_INVALID_ARGUMENT, f"'{raw}' is not a valid {name}.") from exc
    if ns == XRM:
        if name == "OptionSetValue":
            v = text(child(el, "Value"))
            return OptionSetValue(int((v or "0").strip()))
        if name == "Money":
            return Money(_decimal(text(child(el, "Value")) or "0"))
        if name == "EntityReference":
            return parse_entity_reference(el)
        if name == "Entity":
            return parse_entity(el)
        if name == "EntityCollection":
            return [parse_entity(e) for e in children(child(el, "Entities"), "Entity")]
        if name == "EntityReferenceCollection":
            return [parse_entity_reference(e) for e in children(el)]
        if name == "FetchExpression":
            return ("fetch", text(child(el, "Query")) or "")
        if name == "QueryExpression":
            return ("query", parse_query_expression(el))
        if name == "ColumnSet":
            return parse_columnset(el)
        if name == "Label":
            return parse_label(el)
        if name == "OptionSetValueCollection":
            return [int(text(child(o, "Value")) or 0) for o in children(el)]
    if ns == MD and name == "EntityFilters":
        return raw.strip()
    if ns == EM:
        if name == "OrganizationRequestCollection":
            return list(children(el))
        if name == "ExecuteMultipleSettings":
            return {
                "ContinueOnError": (text(child(el, "ContinueOnError")) or "").lower() == "true",
                "ReturnResponses": (text(child(el, "ReturnResponses")) or "").lower() == "true",
            }
    if ns == ARR and name.startswith("ArrayOf"):
        return [parse_value(c) if c.get(XTYPE) else (c.text or "") for c in children(el)]
    raise CrmFault(E_INVALID_ARGUMENT, f"The value type '{name}' in namespace '{ns}' is not supported.")


def parse_entity_reference(el: etree._Element) -> EntityReference:
    """x:EntityReference children Id, LogicalName, Name."""
    rid = text(child(el, "Id")) or ""
    return EntityReference(text(child(el, "LogicalName")) or "", norm_guid(rid), text(child(el, "Name")))


def parse_attributes(el: etree._Element | None) -> dict[str, Any]:
    """x:Attributes / x:Parameters → {key: value}."""
    out: dict[str, Any] = {}
    for pair in children(el):
        key = text(child(pair, "key"))
        value_el = child(pair, "value")
        if key is None:
            continue
        out[key] = parse_value(value_el) if value_el is not None else None
    return out


def parse_entity(el: etree._Element) -> EntityIn:
    """An x:Entity (or <entity>) element."""
    rid = text(child(el, "Id"))
    rid = None if not rid or norm_guid(rid) == "00000000-0000-0000-0000-000000000000" else norm_guid(rid)
    return EntityIn(text(child(el, "LogicalName")) or "", rid, parse_attributes(child(el, "Attributes")))


def parse_columnset(el: etree._Element | None) -> list[str] | None:
    """ColumnSet → list of columns, or None for AllColumns."""
    if el is None:
        return None
    if (text(child(el, "AllColumns")) or "").strip().lower() == "true":
        return None
    return [c.text or "" for c in children(child(el, "Columns"))]


def parse_label(el: etree._Element) -> Label:
    """x:Label → first LocalizedLabel."""
    labels = children(child(el, "LocalizedLabels"), "LocalizedLabel")
    if not labels:
        user = child(el, "UserLocalizedLabel")
        labels = [user] if user is not None else []
    if not labels:
        raise CrmFault(E_INVALID_ARGUMENT, "Label is required.")
    lbl = labels[0]
    return Label(text(child(lbl, "Label")) or "", int(text(child(lbl, "LanguageCode")) or 1033))


_QE_OPERATORS = {
    "equal": "eq",
    "notequal": "ne",
    "null": "null",
    "notnull": "not-null",
    "in": "in",
    "notin": "not-in",
    "greaterthan": "gt",
    "greaterequal": "ge",
    "lessthan": "lt",
    "lessequal": "le",
    "like": "like",
    "notlike": "not-like",
    "beginswith": "begins-with",
    "endswith": "ends-with",
    "onorafter": "on-or-after",
    "onorbefore": "on-or-before",
    "on": "on",
}


def _qe_filter(el: etree._Element | None) -> Filter:
    flt = Filter(type=(text(child(el, "FilterOperator")) or "And").lower() if el is not None else "and")
    if el is None:
        return flt
    for cond in children(child(el, "Conditions"), "ConditionExpression"):
        op_name = (text(child(cond, "Operator")) or "Equal").lower()
        op = _QE_OPERATORS.get(op_name)
        if op is None:
            raise CrmFault(E_INVALID_ARGUMENT, f"The condition operator '{op_name}' is not supported.")
        values = []
        for v in children(child(cond, "Values")):
            val = parse_value(v)
            values.append(str(val) if not isinstance(val, bool) else ("true" if val else "false"))
        flt.conditions.append(Condition(text(child(cond, "AttributeName")) or "", op, values))
    flt.filters = [_qe_filter(f) for f in children(child(el, "Filters"), "FilterExpression")]
    return flt


def _qe_link(el: etree._Element) -> Link:
    join = (text(child(el, "JoinOperator")) or "Inner").lower()
    return Link(
        name=text(child(el, "LinkToEntityName")) or "",
        from_attr=text(child(el, "LinkToAttributeName")) or "",
        to_attr=text(child(el, "LinkFromAttributeName")) or "",
        link_type="inner" if join in ("inner", "natural") else "outer",
        filters=[_qe_filter(child(el, "LinkCriteria"))],
        links=[_qe_link(sub) for sub in children(child(el, "LinkEntities"), "LinkEntity")],
    )


def parse_query_expression(el: etree._Element) -> Query:
    """x:QueryExpression → Query."""
    query = Query(entity=text(child(el, "EntityName")) or "")
    query.columns = parse_columnset(child(el, "ColumnSet"))
    crit = child(el, "Criteria")
    if crit is not None:
        query.filters.append(_qe_filter(crit))
    query.links = [_qe_link(x) for x in children(child(el, "LinkEntities"), "LinkEntity")]
    for order in children(child(el, "Orders"), "OrderExpression"):
        desc = (text(child(order, "OrderType")) or "Ascending").lower() == "descending"
        query.orders.append((text(child(order, "AttributeName")) or "", desc))
    page_info = child(el, "PageInfo")
    if page_info is not None:
        count = text(child(page_info, "Count"))
        query.count = int(count) if count and count.strip() not in ("", "0") else None
        number = text(child(page_info, "PageNumber"))
        query.page = int(number) if number and number.strip() not in ("", "0") else 1
        query.cookie = text(child(page_info, "PagingCookie")) or None
        query.return_total = (text(child(page_info, "ReturnTotalRecordCount")) or "").lower() == "true"
    top = text(child(el, "TopCount"))
    if top and top.strip():
        query.top = int(top)
    return query


# ---------------------------------------------------------------- writing

ENVELOPE_OPEN = f'<s:Envelope xmlns:s="{SOAP11}"><s:Body>'
ENVELOPE_CLOSE = "</s:Body></s:Envelope>"


def esc(value: Any) -> str:
    """XML text escaping."""
    return escape(str(value))


def envelope(body: str) -> bytes:
    """Wrap a body fragment into a SOAP 1.1 envelope."""
    return (ENVELOPE_OPEN + body + ENVELOPE_CLOSE).encode("utf-8")


def _format_money(value: float) -> str:
    return f"{Decimal(str(value)).quantize(Decimal('0.0001'))}"


def _format_date(iso: str) -> str:
    """M/D/YYYY h:mm AM|PM from the stored form (sliced, not parsed: this runs 5000 times a page)."""
    year, month, day = iso[0:4], int(iso[5:7]), int(iso[8:10])
    hour, minute = int(iso[11:13]), iso[14:16]
    return f"{month}/{day}/{year} {hour % 12 or 12}:{minute} {'AM' if hour < 12 else 'PM'}"


def value_xml(kind: str, value: Any) -> str:
    """kv:value element for a stored value of the given attribute type."""
    if value is None:
        return '<c:value i:nil="true"/>'
    xs_types = {s.STRING: "string", s.MEMO: "string", s.INT: "int", s.DECIMAL: "decimal", s.DOUBLE: "double"}
    if kind in xs_types:
        return f'<c:value i:type="d:{xs_types[kind]}" xmlns:d="{XS}">{esc(value)}</c:value>'
    if kind == s.BOOL:
        return f'<c:value i:type="d:boolean" xmlns:d="{XS}">{"true" if value else "false"}</c:value>'
    if kind == s.DATETIME:
        return f'<c:value i:type="d:dateTime" xmlns:d="{XS}">{esc(value)}</c:value>'
    if kind == s.GUID:
        return f'<c:value i:type="d:guid" xmlns:d="{SER}">{esc(value)}</c:value>'
    if kind == s.OPTIONSET:
        return f'<c:value i:type="b:OptionSetValue"><b:Value>{int(value)}</b:Value></c:value>'
    if kind == s.MONEY:
        return f'<c:value i:type="b:Money"><b:Value>{_format_money(value)}</b:Value></c:value>'
    if kind == s.LOOKUP:
        name = value.get("Name")
        name_xml = '<b:Name i:nil="true"/>' if name is None else f"<b:Name>{esc(name)}</b:Name>"
        return (
            f'<c:value i:type="b:EntityReference"><b:Id>{esc(value.get("Id"))}</b:Id>'
            f"<b:LogicalName>{esc(value.get('LogicalName') or '')}</b:LogicalName>{name_xml}</c:value>"
        )
    return f'<c:value i:type="d:string" xmlns:d="{XS}">{esc(value)}</c:value>'


def formatted(ent: s.EntityDef, attr: str, kind: str, value: Any, extra: dict[int, str]) -> str | None:
    """The FormattedValues text for an attribute, if the CRM would give one."""
    if value is None:
        return None
    if kind == s.OPTIONSET:
        return s.option_label(ent, attr, int(value), extra)
    if kind == s.BOOL:
        return "Yes" if value else "No"
    if kind == s.DATETIME:
        return _format_date(value)
    if kind == s.MONEY:
        return f"${float(value):,.2f}"
    return None


def entity_body(
    ent: s.EntityDef,
    logical_name: str,
    rid: str,
    data: dict[str, Any],
    columns: list[str] | None,
    extra_options: dict[str, dict[int, str]],
) -> str:
    """Children of an x:Entity in DataContract order (Attributes … RelatedEntities)."""
    names = list(data.keys()) if columns is None else list(dict.fromkeys([ent.primary_id, *columns]))
    attrs: list[str] = []
    fmts: list[str] = []
    for name in names:
        kind = ent.attributes.get(name)
        value = rid if name == ent.primary_id else data.get(name)
        if kind is None or value is None:
            # The CRM leaves null attributes out of the collection.
            continue
        attrs.append(
            f"<b:KeyValuePairOfstringanyType><c:key>{esc(name)}</c:key>{value_xml(kind, value)}"
            "</b:KeyValuePairOfstringanyType>"
        )
        label = formatted(ent, name, kind, value, extra_options.get(name, {}))
        if label is not None:
            fmts.append(
                f"<b:KeyValuePairOfstringstring><c:key>{esc(name)}</c:key><c:value>{esc(label)}</c:value>"
                "</b:KeyValuePairOfstringstring>"
            )
    return (
        f"<b:Attributes>{''.join(attrs)}</b:Attributes>"
        '<b:EntityState i:nil="true"/>'
        f"<b:FormattedValues>{''.join(fmts)}</b:FormattedValues>"
        f"<b:Id>{esc(rid)}</b:Id>"
        f"<b:LogicalName>{esc(logical_name)}</b:LogicalName>"
        "<b:RelatedEntities/>"
    )


NS_DECL = f'xmlns:b="{XRM}" xmlns:i="{XI}" xmlns:c="{KV}"'


def results_xml(pairs: list[tuple[str, str]]) -> str:
    """x:Results from (key, value-xml) pairs."""
    body = "".join(
        f"<b:KeyValuePairOfstringanyType><c:key>{esc(k)}</c:key>{v}</b:KeyValuePairOfstringanyType>" for k, v in pairs
    )
    return f"<b:Results>{body}</b:Results>"


def fault_detail_xml(code: int, message: str, details: dict[str, Any], prefix: str = "") -> str:
    """OrganizationServiceFault children (ErrorCode … TraceText)."""
    p = prefix
    det = "".join(
        f"<{p}KeyValuePairOfstringanyType><c:key>{esc(k)}</c:key>"
        f'<c:value i:type="d:{"int" if isinstance(v, int) else "string"}" xmlns:d="{XS}">{esc(v)}</c:value>'
        f"</{p}KeyValuePairOfstringanyType>"
        for k, v in details.items()
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    return (
        f"<{p}ErrorCode>{code}</{p}ErrorCode>"
        f'<{p}ErrorDetails xmlns:c="{KV}">{det}</{p}ErrorDetails>'
        f"<{p}Message>{esc(message)}</{p}Message>"
        f"<{p}Timestamp>{stamp}</{p}Timestamp>"
        f'<{p}InnerFault i:nil="true"/>'
        f'<{p}TraceText i:nil="true"/>'
    )


def fault_envelope(fault: CrmFault) -> bytes:
    """A SOAP 1.1 s:Fault with an OrganizationServiceFault detail."""
    body = (
        "<s:Fault><faultcode>s:Client</faultcode>"
        f'<faultstring xml:lang="en-US">{esc(fault.message)}</faultstring>'
        f'<detail><OrganizationServiceFault xmlns="{XRM}" xmlns:i="{XI}">'
        f"{fault_detail_xml(fault.code, fault.message, fault.details)}"
        "</OrganizationServiceFault></detail></s:Fault>"
    )
    return envelope(body)
