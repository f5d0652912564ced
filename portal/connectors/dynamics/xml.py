"""Safe, namespace-aware parsing and building of Organization Service XML (typed values, entities, faults)."""

from __future__ import annotations

import base64
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from .errors import DynamicsError, NotDynamicsError, ServerError, error_from_fault

# Namespace URIs (prefixes vary between servers; only these URIs matter).
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SERVICES = "http://schemas.microsoft.com/xrm/2011/Contracts/Services"
XRM = "http://schemas.microsoft.com/xrm/2011/Contracts"
CRM = "http://schemas.microsoft.com/crm/2011/Contracts"
XRM2012 = "http://schemas.microsoft.com/xrm/2012/Contracts"
META = "http://schemas.microsoft.com/xrm/2011/Metadata"
KV = "http://schemas.datacontract.org/2004/07/System.Collections.Generic"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD = "http://www.w3.org/2001/XMLSchema"
SER = "http://schemas.microsoft.com/2003/10/Serialization/"
ARR = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"

# Prefixes declared on every document we build, so xi:type QNames always resolve.
NSMAP: dict[str, str] = {
    "s": SOAP11,
    "a": XRM,
    "c": CRM,
    "em": XRM2012,
    "md": META,
    "b": KV,
    "i": XSI,
    "xs": XSD,
    "ser": SER,
    "arr": ARR,
}

ZERO_GUID = "00000000-0000-0000-0000-000000000000"


class UnsafeXmlError(NotDynamicsError):
    """The document declares a DOCTYPE or entities, or is not well-formed; never from a real CRM."""


# ---------------------------------------------------------------- value types


@dataclass(frozen=True)
class OptionSetValue:
    """A picklist value (also statecode/statuscode)."""

    value: int


@dataclass(frozen=True)
class Money:
    """A currency amount."""

    value: Decimal


@dataclass(frozen=True)
class EntityReference:
    """A lookup: the id and logical name of another record."""

    id: str
    logical_name: str
    name: str | None = None


@dataclass(frozen=True)
class AliasedValue:
    """A value from a linked entity in FetchXML; Entity unwraps it and keeps the names in `aliases`."""

    entity_logical_name: str | None
    attribute_logical_name: str | None
    value: Any


@dataclass(frozen=True)
class Label:
    """A localized label, as sent to InsertOptionValue."""

    text: str
    language: int = 1033


@dataclass
class Entity:
    """A CRM record: logical name, id, typed attributes and formatted values."""

    logical_name: str
    id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    formatted_values: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """Return an attribute value, or default when absent."""
        return self.attributes.get(name, default)


@dataclass
class EntityPage:
    """One page of a RetrieveMultiple result."""

    entities: list[Entity]
    entity_name: str | None = None
    more_records: bool = False
    paging_cookie: str | None = None
    total_record_count: int = -1


@dataclass(frozen=True)
class OptionMetadata:
    """One option of an option set: its value and its labels by language code."""

    value: int
    labels: dict[int, str]
    user_label: str | None = None

    @property
    def label(self) -> str | None:
        """The user's label, else the English one, else any."""
        return self.user_label or self.labels.get(1033) or next(iter(self.labels.values()), None)


class EntityFilters(str):
    """An md:EntityFilters value ("Entity", "Attributes", "All"...) for RetrieveEntity."""


@dataclass
class SoapFault:
    """A parsed SOAP 1.1 or 1.2 fault."""

    code: str | None
    subcode: str | None
    reason: str
    error_code: int | None = None
    message: str | None = None
    error_details: dict[str, Any] = field(default_factory=dict)
    has_service_fault: bool = False
    raw: str = ""

    def to_error(self) -> DynamicsError:
        """Turn the fault into the matching typed error."""
        if self.has_service_fault:
            details = " ".join(f"{k}={v}" for k, v in self.error_details.items())
            raw = f"{self.raw} {details}".strip() if details else self.raw
            return error_from_fault(self.error_code, self.message or self.reason, raw, self.error_details)
        code = (self.code or "").rsplit(":", 1)[-1].lower()
        if "internalservicefault" in (self.subcode or "").lower() or code in ("receiver", "server"):
            return ServerError(f"The CRM reported an internal error: {self.reason}", detail=self.raw)
        return error_from_fault(None, self.reason, self.raw)


# ---------------------------------------------------------------- safe parsing

_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers keep per-parse state, so each thread gets its own.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_blank_text=False,
            dtd_validation=False,
        )
        _local.parser = parser
    return parser


_DOCTYPE_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xml(data: bytes | str) -> etree._Element:
    """Parse XML safely: no DTD, no entities, no network; a document with a DOCTYPE is refused."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # Cheap first gate; the docinfo check below is the authoritative one (covers other encodings).
    if _DOCTYPE_RE.search(raw):
        raise UnsafeXmlError("The server sent an XML document with a DOCTYPE, which is refused.")
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise UnsafeXmlError("The server sent a response that is not well-formed XML.", detail=str(exc)) from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise UnsafeXmlError("The server sent an XML document with a DOCTYPE, which is refused.")
    if next(root.iter(etree.Entity), None) is not None:
        raise UnsafeXmlError("The server sent an XML document with entity references, which is refused.")
    return root


def q(ns: str, local: str) -> str:
    """Clark-notation name {ns}local."""
    return f"{{{ns}}}{local}"


def local_name(el: etree._Element) -> str:
    """The element's local name, whatever its namespace."""
    return etree.QName(el).localname


def child(el: etree._Element | None, ns: str, local: str) -> etree._Element | None:
    """First child with the given namespace and local name, or None."""
    if el is None:
        return None
    return el.find(q(ns, local))


def child_text(el: etree._Element | None, ns: str, local: str) -> str | None:
    """Text of a child (None when missing or xi:nil)."""
    c = child(el, ns, local)
    if c is None or is_nil(c):
        return None
    return c.text or ""


def is_nil(el: etree._Element) -> bool:
    """True when the element carries xi:nil="true"."""
    return (el.get(q(XSI, "nil")) or "").strip().lower() in ("true", "1")


def xsi_type(el: etree._Element) -> tuple[str | None, str] | None:
    """Resolve the element's xi:type QName against the namespaces in scope: (namespace, local) or None."""
    value = el.get(q(XSI, "type"))
    if not value:
        return None
    value = value.strip()
    prefix, _, local = value.rpartition(":")
    ns = el.nsmap.get(prefix or None)
    return ns, local


# ---------------------------------------------------------------- value parsing

_DT_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$"
)


def parse_datetime(text: str) -> datetime:
    """Parse an xs:dateTime (up to 7 fractional digits, as .NET writes) into an aware UTC datetime."""
    m = _DT_RE.match(text.strip())
    if not m:
        raise ValueError(f"Not an xs:dateTime: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    zone = m.group(8)
    tz: timezone = UTC
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    # No zone at all (e.g. DateTime.MinValue) is taken as UTC: the SOAP endpoint speaks UTC.
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)


def _bool(text: str | None) -> bool:
    return (text or "").strip().lower() in ("true", "1")


def _int_or_none(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    return int(text.strip())


def parse_value(el: etree._Element) -> Any:
    """Turn a typed value element (kv:value, arr:anyType, x:Value...) into a Python value."""
    if is_nil(el):
        return None
    typ = xsi_type(el)
    text = el.text or ""
    if typ is None:
        # Untyped: plain text content (e.g. FormattedValues, CreateResult).
        return text
    ns, name = typ
    if ns == XSD:
        if name in ("string", "anyURI", "QName"):
            return text
        if name in ("int", "long", "short", "byte", "unsignedInt", "unsignedLong", "unsignedShort"):
            return int(text.strip())
        if name == "decimal":
            try:
                return Decimal(text.strip())
            except InvalidOperation as exc:
                raise ValueError(f"Not a decimal: {text!r}") from exc
        if name in ("double", "float"):
            return float(text.strip())
        if name == "boolean":
            return _bool(text)
        if name == "dateTime":
            return parse_datetime(text)
        if name == "base64Binary":
            return base64.b64decode(text)
        return text
    if ns == SER and name == "guid":
        return text.strip().lower()
    if ns == XRM:
        if name == "OptionSetValue":
            return OptionSetValue(int(child_text(el, XRM, "Value") or "0"))
        if name == "Money":
            return Money(Decimal((child_text(el, XRM, "Value") or "0").strip()))
        if name == "EntityReference":
            return parse_entity_reference(el)
        if name == "Entity":
            return parse_entity(el)
        if name in ("EntityCollection",):
            return parse_entity_page(el).entities
        if name == "ArrayOfEntity":
            return [parse_entity(e) for e in el.findall(q(XRM, "Entity"))]
        if name == "OptionSetValueCollection":
            return [OptionSetValue(int(v.text or "0")) for v in el.iter(q(XRM, "Value"))]
        if name == "AliasedValue":
            value_el = child(el, XRM, "Value")
            return AliasedValue(
                child_text(el, XRM, "EntityLogicalName"),
                child_text(el, XRM, "AttributeLogicalName"),
                parse_value(value_el) if value_el is not None else None,
            )
    # Unknown complex type: keep the text so nothing crashes; callers that need it read the element.
    return text.strip() if len(el) == 0 else el


def parse_entity_reference(el: etree._Element) -> EntityReference:
    """Parse an EntityReference element."""
    return EntityReference(
        id=(child_text(el, XRM, "Id") or ZERO_GUID).strip().lower(),
        logical_name=child_text(el, XRM, "LogicalName") or "",
        name=child_text(el, XRM, "Name"),
    )


def _key_values(container: etree._Element | None) -> Iterable[tuple[str, etree._Element]]:
    """Yield (key, value element) of KeyValuePairOf* children, by namespace not by prefix."""
    if container is None:
        return
    for pair in container:
        if not isinstance(pair.tag, str):
            continue
        key_el = pair.find(q(KV, "key"))
        value_el = pair.find(q(KV, "value"))
        if key_el is None or value_el is None:
            continue
        yield (key_el.text or ""), value_el


def parse_entity(el: etree._Element) -> Entity:
    """Parse an Entity element (RetrieveResult, an x:Entity, or a value typed x:Entity)."""
    entity = Entity(
        logical_name=child_text(el, XRM, "LogicalName") or "",
        id=None,
    )
    raw_id = child_text(el, XRM, "Id")
    if raw_id and raw_id.strip() != ZERO_GUID:
        entity.id = raw_id.strip().lower()
    for key, value_el in _key_values(child(el, XRM, "Attributes")):
        value = parse_value(value_el)
        if isinstance(value, AliasedValue):
            entity.aliases[key] = (value.entity_logical_name, value.attribute_logical_name)
            value = value.value
        entity.attributes[key] = value
    for key, value_el in _key_values(child(el, XRM, "FormattedValues")):
        entity.formatted_values[key] = value_el.text or ""
    return entity


def parse_entity_page(el: etree._Element) -> EntityPage:
    """Parse an EntityCollection (RetrieveMultipleResult or a value of that type) with paging info."""
    entities_el = child(el, XRM, "Entities")
    entities = [] if entities_el is None else [parse_entity(e) for e in entities_el.findall(q(XRM, "Entity"))]
    cookie = child_text(el, XRM, "PagingCookie")
    total = _int_or_none(child_text(el, XRM, "TotalRecordCount"))
    return EntityPage(
        entities=entities,
        entity_name=child_text(el, XRM, "EntityName"),
        more_records=_bool(child_text(el, XRM, "MoreRecords")),
        paging_cookie=cookie.strip() if cookie and cookie.strip() else None,
        total_record_count=-1 if total is None else total,
    )


def parse_results(result_el: etree._Element) -> tuple[dict[str, Any], dict[str, etree._Element]]:
    """Parse an ExecuteResult's Results into (parsed values, raw value elements) keyed by name."""
    values: dict[str, Any] = {}
    elements: dict[str, etree._Element] = {}
    for key, value_el in _key_values(child(result_el, XRM, "Results")):
        elements[key] = value_el
        values[key] = parse_value(value_el)
    return values, elements


def parse_labels(label_el: etree._Element | None) -> tuple[dict[int, str], str | None]:
    """Parse a Label element into ({language code: text}, user label)."""
    labels: dict[int, str] = {}
    if label_el is None:
        return labels, None
    localized = child(label_el, XRM, "LocalizedLabels")
    if localized is not None:
        for ll in localized.findall(q(XRM, "LocalizedLabel")):
            text = child_text(ll, XRM, "Label")
            lang = _int_or_none(child_text(ll, XRM, "LanguageCode"))
            if text is not None and lang is not None:
                labels[lang] = text
    user = child(label_el, XRM, "UserLocalizedLabel")
    user_text = child_text(user, XRM, "Label") if user is not None and not is_nil(user) else None
    return labels, user_text


def parse_option_set(attribute_metadata: etree._Element) -> list[OptionMetadata]:
    """Read the options of a PicklistAttributeMetadata (md:OptionSet/md:Options/md:OptionMetadata)."""
    option_set = child(attribute_metadata, META, "OptionSet")
    if option_set is None:
        return []
    options_el = child(option_set, META, "Options")
    if options_el is None:
        return []
    options = []
    for om in options_el.findall(q(META, "OptionMetadata")):
        value = _int_or_none(child_text(om, META, "Value"))
        if value is None:
            continue
        labels, user = parse_labels(child(om, META, "Label"))
        options.append(OptionMetadata(value=value, labels=labels, user_label=user))
    return options


# ---------------------------------------------------------------- envelopes and faults


def parse_envelope(data: bytes | str) -> etree._Element:
    """Parse a SOAP 1.1 or 1.2 envelope and return its first Body child; raise the typed error on a fault."""
    root = parse_xml(data)
    ns = etree.QName(root).namespace
    if ns not in (SOAP11, SOAP12) or local_name(root) != "Envelope":
        raise NotDynamicsError("The server answered with XML that is not a SOAP envelope.")
    body = root.find(q(ns, "Body"))
    if body is None:
        raise NotDynamicsError("The server answered with a SOAP envelope that has no Body.")
    first = next((c for c in body if isinstance(c.tag, str)), None)
    if first is None:
        raise NotDynamicsError("The server answered with an empty SOAP Body.")
    if first.tag == q(ns, "Fault"):
        raise parse_fault(first).to_error()
    return first


def find_fault(data: bytes | str) -> SoapFault | None:
    """Return the parsed fault when the data is a SOAP envelope holding one, else None (never raises)."""
    try:
        root = parse_xml(data)
    except DynamicsError:
        return None
    ns = etree.QName(root).namespace
    if ns not in (SOAP11, SOAP12):
        return None
    fault = root.find(f"{q(ns, 'Body')}/{q(ns, 'Fault')}")
    return parse_fault(fault) if fault is not None else None


def _texts(el: etree._Element | None) -> str:
    return "" if el is None else "".join(el.itertext()).strip()


def parse_fault(fault: etree._Element) -> SoapFault:
    """Parse a SOAP 1.1 (faultcode/faultstring/detail) or SOAP 1.2 (Code/Reason/Detail) fault."""
    ns = etree.QName(fault).namespace
    if ns == SOAP12:
        code_el = fault.find(f"{q(ns, 'Code')}/{q(ns, 'Value')}")
        sub_el = fault.find(f"{q(ns, 'Code')}/{q(ns, 'Subcode')}/{q(ns, 'Value')}")
        reason_el = fault.find(f"{q(ns, 'Reason')}/{q(ns, 'Text')}")
        detail = fault.find(q(ns, "Detail"))
        code, subcode = _texts(code_el) or None, _texts(sub_el) or None
    else:
        # SOAP 1.1 children are unqualified.
        code = _texts(fault.find("faultcode")) or None
        subcode = None
        reason_el = fault.find("faultstring")
        detail = fault.find("detail")
    reason = _texts(reason_el)
    result = SoapFault(code=code, subcode=subcode, reason=reason,
                       raw=etree.tostring(fault, encoding="unicode")[:4000])
    osf = None if detail is None else detail.find(q(XRM, "OrganizationServiceFault"))
    if osf is None and detail is not None:
        osf = next(detail.iter(q(XRM, "OrganizationServiceFault")), None)
    if osf is not None:
        fill_service_fault(result, osf)
    return result


def fill_service_fault(result: SoapFault, osf: etree._Element) -> SoapFault:
    """Copy ErrorCode, Message and ErrorDetails of an OrganizationServiceFault-shaped element into result."""
    result.has_service_fault = True
    try:
        result.error_code = _int_or_none(child_text(osf, XRM, "ErrorCode"))
    except ValueError:
        result.error_code = None
    result.message = child_text(osf, XRM, "Message")
    for key, value_el in _key_values(child(osf, XRM, "ErrorDetails")):
        val = parse_value(value_el)
        result.error_details[key] = val if not isinstance(val, etree._Element) else _texts(val)
    return result


# ---------------------------------------------------------------- building


def make_root(tag: str) -> etree._Element:
    """A root element that declares every prefix we use in xi:type values."""
    return etree.Element(tag, nsmap=NSMAP)


def _prefix(el: etree._Element, ns: str) -> str:
    for prefix, uri in el.nsmap.items():
        if uri == ns and prefix:
            return prefix
    raise ValueError(f"Namespace {ns} is not declared in scope")


def set_type(el: etree._Element, ns: str, local: str) -> None:
    """Set xi:type to a QName whose prefix is declared in scope."""
    el.set(q(XSI, "type"), f"{_prefix(el, ns)}:{local}")


def set_nil(el: etree._Element) -> None:
    """Mark the element xi:nil="true"."""
    el.set(q(XSI, "nil"), "true")


# Characters XML 1.0 forbids: C0 controls other than tab, newline and carriage return; lone surrogates; U+FFFE/F.
_NOT_XML_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_NOT_XML_OTHER = re.compile("[\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """Text that XML 1.0 can carry: a control character becomes a space, a lone surrogate U+FFFD.

    A value stored before the portal refused such characters must not break the batch it travels in.
    """
    text = _NOT_XML_CONTROL.sub(" ", text)
    return _NOT_XML_OTHER.sub("\ufffd", text)


def sub(parent: etree._Element, ns: str, local: str, text: str | None = None) -> etree._Element:
    """Append a child element in a namespace, with optional text (escaped by lxml, made XML-safe)."""
    el = etree.SubElement(parent, q(ns, local))
    if text is not None:
        el.text = xml_safe(text)
    return el


def format_datetime(value: datetime | date) -> str:
    """xs:dateTime in UTC with Z; a naive datetime is taken to be UTC already (as the database stores it)."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_guid(value: str | uuid.UUID) -> str:
    """A GUID as lowercase text; refuse anything that is not one."""
    return str(uuid.UUID(str(value).strip("{}"))).lower()


def write_value(el: etree._Element, value: Any) -> etree._Element:
    """Fill a value element (kv:value or similar) with xi:type and content for a Python value."""
    if value is None:
        set_nil(el)
    elif isinstance(value, bool):
        set_type(el, XSD, "boolean")
        el.text = "true" if value else "false"
    elif isinstance(value, int):
        set_type(el, XSD, "int" if -(2**31) <= value < 2**31 else "long")
        el.text = str(value)
    elif isinstance(value, Decimal):
        set_type(el, XSD, "decimal")
        el.text = format(value, "f")
    elif isinstance(value, float):
        set_type(el, XSD, "double")
        el.text = repr(value)
    elif isinstance(value, datetime | date):
        set_type(el, XSD, "dateTime")
        el.text = format_datetime(value)
    elif isinstance(value, uuid.UUID):
        set_type(el, SER, "guid")
        el.text = str(value).lower()
    elif isinstance(value, EntityFilters):
        set_type(el, META, "EntityFilters")
        el.text = str(value)
    elif isinstance(value, str):
        set_type(el, XSD, "string")
        el.text = xml_safe(value)
    elif isinstance(value, OptionSetValue):
        set_type(el, XRM, "OptionSetValue")
        sub(el, XRM, "Value", str(int(value.value)))
    elif isinstance(value, Money):
        set_type(el, XRM, "Money")
        sub(el, XRM, "Value", format(Decimal(value.value), "f"))
    elif isinstance(value, EntityReference):
        set_type(el, XRM, "EntityReference")
        write_entity_reference(el, value)
    elif isinstance(value, Label):
        set_type(el, XRM, "Label")
        labels = sub(el, XRM, "LocalizedLabels")
        ll = sub(labels, XRM, "LocalizedLabel")
        sub(ll, XRM, "Label", value.text)
        sub(ll, XRM, "LanguageCode", str(int(value.language)))
    elif isinstance(value, Entity):
        set_type(el, XRM, "Entity")
        write_entity(el, value.logical_name, value.attributes, value.id)
    elif isinstance(value, list) and all(isinstance(v, Entity) for v in value):
        # Activity parties (from/to of a phone call) are an ArrayOfEntity.
        set_type(el, XRM, "ArrayOfEntity")
        for item in value:
            write_entity(sub(el, XRM, "Entity"), item.logical_name, item.attributes, item.id)
    else:
        raise TypeError(f"Cannot send a value of type {type(value).__name__} to Dynamics")
    return el


def write_entity_reference(el: etree._Element, ref: EntityReference) -> None:
    """Write Id, LogicalName, Name (in that order) into an EntityReference element."""
    sub(el, XRM, "Id", format_guid(ref.id))
    sub(el, XRM, "LogicalName", ref.logical_name)
    name = sub(el, XRM, "Name")
    if ref.name is None:
        set_nil(name)
    else:
        name.text = xml_safe(ref.name)


def write_key_value(parent: etree._Element, key: str, value: Any) -> etree._Element:
    """Append <x:KeyValuePairOfstringanyType><kv:key/><kv:value/></...> to parent."""
    pair = sub(parent, XRM, "KeyValuePairOfstringanyType")
    sub(pair, KV, "key", key)
    write_value(sub(pair, KV, "value"), value)
    return pair


def write_entity(
    el: etree._Element, logical_name: str, attributes: Mapping[str, Any], entity_id: str | uuid.UUID | None = None
) -> etree._Element:
    """Fill an entity element; the DataContract order is Attributes, EntityState, FormattedValues, Id,
    LogicalName, RelatedEntities."""
    attrs = sub(el, XRM, "Attributes")
    for key, value in attributes.items():
        write_key_value(attrs, key, value)
    set_nil(sub(el, XRM, "EntityState"))
    sub(el, XRM, "FormattedValues")
    sub(el, XRM, "Id", format_guid(entity_id) if entity_id else ZERO_GUID)
    sub(el, XRM, "LogicalName", logical_name)
    sub(el, XRM, "RelatedEntities")
    return el


def build_entity(
    logical_name: str, attributes: Mapping[str, Any], entity_id: str | uuid.UUID | None = None, tag: str = "entity"
) -> etree._Element:
    """A standalone entity element (namespace of the Services contract) ready to insert into a request."""
    el = make_root(q(SERVICES, tag))
    return write_entity(el, logical_name, attributes, entity_id)


def to_bytes(el: etree._Element) -> bytes:
    """Serialize an element tree as UTF-8 bytes with an XML declaration."""
    return etree.tostring(el, encoding="utf-8", xml_declaration=True)


def parse_max_lengths(entity_metadata: etree._Element) -> dict[str, int]:
    """MaxLength of each text attribute (String and Memo) in an md:EntityMetadata element, by logical name."""
    lengths: dict[str, int] = {}
    for attr in entity_metadata.iter(q(META, "AttributeMetadata")):
        name = child_text(attr, META, "LogicalName")
        size = _int_or_none(child_text(attr, META, "MaxLength"))
        if name and size is not None and size > 0:
            lengths[name] = size
    return lengths
