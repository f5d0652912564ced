"""The Organization Service over SOAP 1.1 (/web): envelopes, messages, paging and ExecuteMultiple."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from lxml import etree

from .errors import (
    MAX_BATCH_SIZE,
    AuthFailedError,
    BatchTooLargeError,
    ClaimsAuthError,
    DynamicsError,
    FaultError,
    NotDynamicsError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    TransientItemError,
    UnreachableError,
)
from .transport import HttpResponse, Transport
from .xml import (
    ARR,
    CRM,
    KV,
    SERVICES,
    SOAP11,
    XRM,
    XRM2012,
    XSI,
    Entity,
    EntityFilters,
    EntityPage,
    EntityReference,
    Label,
    OptionMetadata,
    OptionSetValue,
    SoapFault,
    child,
    child_text,
    fill_service_fault,
    find_fault,
    format_datetime,
    format_guid,
    make_root,
    parse_entity,
    parse_entity_page,
    parse_envelope,
    parse_max_lengths,
    parse_option_set,
    parse_results,
    parse_xml,
    q,
    set_nil,
    set_type,
    sub,
    to_bytes,
    write_entity,
    write_key_value,
    xml_safe,
)

ACTION_PREFIX = "http://schemas.microsoft.com/xrm/2011/Contracts/Services/IOrganizationService/"
# Execute messages that only read: safe to send again when a kept-alive connection turns out to be closed.
READ_MESSAGES = frozenset({"WhoAmI", "RetrieveVersion", "RetrieveMultiple", "Retrieve", "RetrieveAttribute",
                           "RetrieveEntity", "RetrieveAllEntities"})
log = logging.getLogger("portal.connectors.dynamics")
_XML_TYPES = ("text/xml", "application/xml", "application/soap+xml")


@dataclass(frozen=True)
class WhoAmI:
    """The identity of the connected CRM user."""

    user_id: str
    business_unit_id: str
    organization_id: str


@dataclass
class ExecuteResult:
    """The parsed Results of an Execute call, with the raw value elements for complex types."""

    response_name: str | None
    results: dict[str, Any]
    elements: dict[str, etree._Element] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateRequest:
    """Create a record (an ExecuteMultiple item)."""

    entity: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class UpdateRequest:
    """Update a record (an ExecuteMultiple item)."""

    entity: str
    id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class SetStateRequest:
    """Change a record's statecode/statuscode (an ExecuteMultiple item)."""

    entity: str
    id: str
    state: int
    status: int


BatchRequest = CreateRequest | UpdateRequest | SetStateRequest


@dataclass
class BatchItemResult:
    """The outcome of one ExecuteMultiple item: ok with an id, or the typed error."""

    index: int
    ok: bool
    id: str | None = None
    error: DynamicsError | None = None
    skipped: bool = False


def version_name(version: str) -> str:
    """A product name for a Dynamics version string (5.x is CRM 2011 ... 9.x is Dynamics 365)."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return "unknown version"
    names = {5: "CRM 2011", 6: "CRM 2013", 7: "CRM 2015", 9: "Dynamics 365 (on-premises) v9"}
    if major == 8:
        return "Dynamics 365 (on-premises) 8.2" if minor >= 2 else "CRM 2016"
    return names.get(major, f"version {major}")


# ---------------------------------------------------------------- FetchXML


def like_literal(text: str) -> str:
    """Escape a literal for a FetchXML `like` (SQL Server LIKE): [ % _ become [[] [%] [_], so they match themselves."""
    return "".join(f"[{c}]" if c in "[%_" else c for c in text)


def like_contains(text: str) -> str:
    """A `like` pattern matching values that contain the literal text."""
    return f"%{like_literal(text)}%"


def _fetch_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime | date):
        return format_datetime(value)
    if isinstance(value, OptionSetValue):
        return str(value.value)
    if isinstance(value, EntityReference):
        return value.id
    return xml_safe(str(value))


def _add_conditions(
    parent: etree._Element, conditions: Iterable[Sequence[Any]], filter_type: str
) -> None:
    conditions = list(conditions)
    if not conditions:
        return
    flt = etree.SubElement(parent, "filter", type=filter_type)
    for cond in conditions:
        attribute, operator, *rest = cond
        el = etree.SubElement(flt, "condition", attribute=attribute, operator=operator)
        if not rest:
            continue  # null / not-null operators take no value
        value = rest[0]
        if isinstance(value, list | tuple | set | frozenset):
            for item in value:
                etree.SubElement(el, "value").text = _fetch_value(item)
        else:
            # lxml escapes & < > " in attribute values, so any e-mail address round-trips.
            el.set("value", _fetch_value(value))


def fetch_xml(
    entity: str,
    attributes: Iterable[str] = (),
    conditions: Iterable[Sequence[Any]] = (),
    order: Iterable[str | tuple[str, bool]] = (),
    page_size: int | None = None,
    *,
    filter_type: str = "and",
    links: Iterable[Mapping[str, Any]] = (),
    distinct: bool = False,
) -> str:
    """Build FetchXML with lxml so every value is escaped; conditions are (attribute, operator[, value])."""
    fetch = etree.Element("fetch", version="1.0", mapping="logical")
    if distinct:
        fetch.set("distinct", "true")
    if page_size is not None:
        fetch.set("count", str(int(page_size)))
    ent = etree.SubElement(fetch, "entity", name=entity)
    attrs = list(attributes)
    if attrs:
        for name in attrs:
            etree.SubElement(ent, "attribute", name=name)
    else:
        etree.SubElement(ent, "all-attributes")
    for item in order:
        name, descending = (item, False) if isinstance(item, str) else item
        etree.SubElement(ent, "order", attribute=name, descending="true" if descending else "false")
    _add_conditions(ent, conditions, filter_type)
    for link in links:
        le = etree.SubElement(ent, "link-entity", name=link["name"], to=link["to"])
        le.set("from", link["from"])
        for key in ("alias", "link-type"):
            if link.get(key):
                le.set(key, str(link[key]))
        if link.get("intersect"):
            le.set("intersect", "true")
        for name in link.get("attributes", ()):
            etree.SubElement(le, "attribute", name=name)
        _add_conditions(le, link.get("conditions", ()), link.get("filter_type", "and"))
    return etree.tostring(fetch, encoding="unicode")


def fetch_in(
    entity: str,
    attributes: Iterable[str],
    field: str,
    values: Sequence[Any],
    *,
    fits: Callable[[str], bool] | None = None,
    max_values: int = 1000,
    conditions: Iterable[Sequence[Any]] = (),
    order: Iterable[str | tuple[str, bool]] = (),
) -> Iterator[str]:
    """FetchXML queries for the records whose ``field`` is one of ``values``, every value in exactly one query.

    Each query holds at most ``max_values`` values, and as many as ``fits`` accepts: the Web API carries a query in
    its URL, whose length is limited, so values are split by the length of the query, not by their number.
    """
    extra, order = list(conditions), list(order)

    def build(chunk: Sequence[Any]) -> str:
        return fetch_xml(entity, attributes, [(field, "in", list(chunk)), *extra], order=order)

    start, last = 0, max(1, max_values)
    while start < len(values):
        # Start a little above the size that fitted last (values of a look-up are much alike), then step down.
        size = min(max(1, max_values), len(values) - start, last + last // 16 + 1)
        query = build(values[start:start + size])
        while fits is not None and size > 1 and not fits(query):
            size = min(size - 1, size * 15 // 16)  # a single value too long is sent alone, to be refused
            query = build(values[start:start + size])
        yield query
        start, last = start + size, size


def set_fetch_paging(fetchxml: str, page: int, count: int | None, cookie: str | None) -> str:
    """Return the FetchXML with page, count and paging-cookie set on <fetch> (the cookie escaped by lxml)."""
    root = parse_xml(fetchxml)
    if root.tag != "fetch":
        raise ValueError("FetchXML must have <fetch> as its root element")
    root.set("page", str(page))
    if count is not None:
        root.set("count", str(int(count)))
    if cookie:
        root.set("paging-cookie", cookie)
    elif "paging-cookie" in root.attrib:
        del root.attrib["paging-cookie"]
    return etree.tostring(root, encoding="unicode")


def iter_fetch(service: Any, fetch: str | Callable[[], str], page_size: int = 5000) -> Iterator[Entity]:
    """Every record of a FetchXML query through a service's ``retrieve_multiple``, one page in memory at a time.

    Paging cookies are followed; without a cookie the server still pages by number alone.
    """
    template = fetch() if callable(fetch) else fetch
    page, cookie = 1, None
    while True:
        result = service.retrieve_multiple(set_fetch_paging(template, page, page_size, cookie))
        yield from result.entities
        if not result.more_records or not result.entities:
            return
        cookie = result.paging_cookie
        page += 1


# ---------------------------------------------------------------- envelopes


def new_envelope(operation: str) -> tuple[etree._Element, etree._Element]:
    """A SOAP 1.1 envelope with an empty operation element in the Services namespace: (root, operation)."""
    root = make_root(q(SOAP11, "Envelope"))
    body = sub(root, SOAP11, "Body")
    op = etree.SubElement(body, q(SERVICES, operation), nsmap={None: SERVICES})  # type: ignore[dict-item]
    return root, op


def _write_request(el: etree._Element, name: str, params: Mapping[str, Any], family: str | None) -> None:
    if family is not None:
        set_type(el, family, f"{name}Request")
    p = sub(el, XRM, "Parameters")
    for key, value in params.items():
        write_key_value(p, key, value)
    set_nil(sub(el, XRM, "RequestId"))
    sub(el, XRM, "RequestName", name)


def execute_envelope(name: str, params: Mapping[str, Any], family: str = XRM) -> etree._Element:
    """The envelope of Execute(<name>Request); family is XRM or CRM (the request type's namespace)."""
    root, op = new_envelope("Execute")
    _write_request(sub(op, SERVICES, "request"), name, params, family)
    return root


def _batch_params(req: BatchRequest) -> tuple[str, dict[str, Any]]:
    if isinstance(req, CreateRequest):
        return "Create", {"Target": Entity(req.entity, None, dict(req.attributes))}
    if isinstance(req, UpdateRequest):
        return "Update", {"Target": Entity(req.entity, format_guid(req.id), dict(req.attributes))}
    if isinstance(req, SetStateRequest):
        return "SetState", {
            "EntityMoniker": EntityReference(format_guid(req.id), req.entity),
            "State": OptionSetValue(req.state),
            "Status": OptionSetValue(req.status),
        }
    raise TypeError(f"Unsupported batch request: {type(req).__name__}")


def execute_multiple_envelope(
    requests: Sequence[BatchRequest], continue_on_error: bool = True, return_responses: bool = True
) -> etree._Element:
    """The envelope of an ExecuteMultipleRequest holding the given requests."""
    root, op = new_envelope("Execute")
    req = sub(op, SERVICES, "request")
    set_type(req, XRM, "ExecuteMultipleRequest")
    params = sub(req, XRM, "Parameters")
    pair = sub(params, XRM, "KeyValuePairOfstringanyType")
    sub(pair, KV, "key", "Requests")
    coll = sub(pair, KV, "value")
    set_type(coll, XRM2012, "OrganizationRequestCollection")
    for item in requests:
        name, item_params = _batch_params(item)
        # Sdk.Soap.js sends no xi:type on items; the server dispatches on RequestName.
        _write_request(sub(coll, XRM2012, "OrganizationRequest"), name, item_params, None)
    pair = sub(params, XRM, "KeyValuePairOfstringanyType")
    sub(pair, KV, "key", "Settings")
    settings = sub(pair, KV, "value")
    set_type(settings, XRM2012, "ExecuteMultipleSettings")
    sub(settings, XRM2012, "ContinueOnError", "true" if continue_on_error else "false")
    sub(settings, XRM2012, "ReturnResponses", "true" if return_responses else "false")
    set_nil(sub(req, XRM, "RequestId"))
    sub(req, XRM, "RequestName", "ExecuteMultiple")
    return root


def _fault_from_item(fault_el: etree._Element) -> DynamicsError:
    result = SoapFault(code=None, subcode=None, reason="", raw=etree.tostring(fault_el, encoding="unicode")[:4000])
    fill_service_fault(result, fault_el)
    if result.error_code is None and result.message is None:
        # Be lenient about the namespace of the fault's children inside the 2012 contract.
        for ns in (XRM2012,):
            code = child_text(fault_el, ns, "ErrorCode")
            result.error_code = int(code) if code and code.strip().lstrip("-").isdigit() else None
            result.message = child_text(fault_el, ns, "Message")
    result.reason = result.message or "The CRM refused this record."
    return result.to_error()


def parse_execute_multiple(result: ExecuteResult, requests: Sequence[BatchRequest], continue_on_error: bool,
                           return_responses: bool) -> list[BatchItemResult]:
    """Turn an ExecuteMultipleResponse into one BatchItemResult per request, in order."""
    by_index: dict[int, BatchItemResult] = {}
    responses = result.elements.get("Responses")
    for item in [] if responses is None else responses:
        if not isinstance(item.tag, str):
            continue
        index_text = child_text(item, XRM2012, "RequestIndex")
        if index_text is None:
            continue
        index = int(index_text)
        fault_el = child(item, XRM2012, "Fault")
        if fault_el is not None and len(fault_el) and not _nil(fault_el):
            by_index[index] = BatchItemResult(index, False, error=_fault_from_item(fault_el))
            continue
        new_id = None
        response_el = child(item, XRM2012, "Response")
        if response_el is not None and not _nil(response_el):
            values, _ = parse_results(response_el)
            raw_id = values.get("id")
            new_id = str(raw_id).lower() if raw_id else None
        by_index[index] = BatchItemResult(index, True, id=new_id)
    first_fault = min((i for i, r in by_index.items() if not r.ok), default=None)
    out: list[BatchItemResult] = []
    for index, req in enumerate(requests):
        item_result = by_index.get(index)
        if item_result is None:
            # Absent items succeeded silently (ReturnResponses=false), unless processing stopped at a fault.
            stopped = not continue_on_error and first_fault is not None and index > first_fault
            item_result = BatchItemResult(index, not stopped, skipped=stopped)
        if item_result.ok and item_result.id is None and isinstance(req, UpdateRequest | SetStateRequest):
            item_result.id = format_guid(req.id)
        out.append(item_result)
    return out


def _nil(el: etree._Element) -> bool:
    return (el.get(q(XSI, "nil")) or "").lower() == "true"


# ---------------------------------------------------------------- the service


class OrganizationService:
    """Calls to the Organization Service /web endpoint through a Transport."""

    def __init__(self, transport: Transport, url: str | None = None, batch_limit: int = MAX_BATCH_SIZE) -> None:
        self.transport = transport
        self.url = url or transport.config.org_url
        self.pages = 0
        # Requests per ExecuteMultiple sent now: lowered to the server's MaxBatchSize, and halved after a batch
        # that did not finish within its deadline.
        self.batch_limit = max(1, min(MAX_BATCH_SIZE, batch_limit))
        self.server_batch_limit: int | None = None  # the MaxBatchSize the server named, once it did
        self.notes: list[str] = []  # what the service changed on its own, in words for the run's log
        self.item_tries = 4  # a record that meets a passing fault (deadlock, SQL timeout) is sent up to this often
        self.item_retry_delay = 0.5  # seconds before the first resend of such records; doubled each time

    # -- plumbing

    def _post(self, operation: str, envelope: etree._Element, *, idempotent: bool = False,
              deadline: float | None = None) -> etree._Element:
        """POST an envelope and return the <operation>Response element, or raise the typed error.

        A read (idempotent) that fails because the server closed a kept-alive connection is sent once more, on a
        fresh connection: the server did nothing with it.
        """
        data = to_bytes(envelope)
        headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": ACTION_PREFIX + operation,
            "Accept": "application/xml, text/xml, */*",
        }
        try:
            resp = self.transport.request("POST", self.url, headers=headers, data=data, deadline=deadline)
        except UnreachableError as exc:
            if not (idempotent and getattr(exc, "connection_lost", False)):
                raise
            log.info("a kept-alive connection was closed by the CRM; %s sent again on a new one", operation)
            resp = self.transport.request("POST", self.url, headers=headers, data=data, deadline=deadline)
        return self._handle(operation, resp)

    def _handle(self, operation: str, resp: HttpResponse) -> etree._Element:
        looks_xml = resp.content_type in _XML_TYPES or resp.content.lstrip()[:1] == b"<"
        if resp.status == 200:
            if resp.content_type and resp.content_type not in _XML_TYPES:
                raise NotDynamicsError(
                    f"The URL answered with {resp.content_type}, not with a SOAP message.",
                    detail=f"HTTP 200 {resp.content_type}",
                )
            body_child = parse_envelope(resp.content)
            if body_child.tag != q(SERVICES, f"{operation}Response"):
                raise NotDynamicsError(
                    "The URL answered with a SOAP message that is not from a Dynamics Organization Service.",
                    detail=etree.QName(body_child).text,
                )
            return body_child
        fault = find_fault(resp.content) if looks_xml and resp.content else None
        if fault is not None:
            error = fault.to_error()
            if resp.status == 503 and isinstance(error, ServerError):
                raise ServerBusyError(error.message, detail=error.detail)
            raise error
        detail = f"HTTP {resp.status} {resp.content_type}".strip()
        if resp.status == 503:
            raise ServerBusyError("The CRM server is busy (HTTP 503).", detail=detail)
        if resp.status in (500, 502, 504):
            raise ServerError(f"The CRM server failed (HTTP {resp.status}).", detail=detail)
        if resp.status == 403:
            raise AuthFailedError("The CRM refused access to the Organization Service (HTTP 403).", detail=detail)
        if resp.status == 415:
            raise NotDynamicsError(
                "The URL expects a different kind of SOAP message (HTTP 415): /web is probably missing.",
                detail=detail,
            )
        raise NotDynamicsError(
            f"The URL did not answer as a Dynamics Organization Service (HTTP {resp.status}).", detail=detail
        )

    def execute(self, name: str, params: Mapping[str, Any] | None = None, family: str = XRM) -> ExecuteResult:
        """Run an Execute message; family is the request type's namespace (XRM for SDK messages, CRM else)."""
        response = self._post("Execute", execute_envelope(name, params or {}, family),
                              idempotent=name in READ_MESSAGES)
        result_el = child(response, SERVICES, "ExecuteResult")
        if result_el is None:
            raise NotDynamicsError("The Execute response has no ExecuteResult.")
        values, elements = parse_results(result_el)
        return ExecuteResult(child_text(result_el, XRM, "ResponseName"), values, elements)

    # -- messages

    def who_am_i(self) -> WhoAmI:
        """The connected user's id, business unit and organization."""
        r = self.execute("WhoAmI", family=CRM).results
        try:
            return WhoAmI(str(r["UserId"]), str(r["BusinessUnitId"]), str(r["OrganizationId"]))
        except KeyError as exc:
            raise NotDynamicsError("The WhoAmI response lacks the expected ids.", detail=str(exc)) from exc

    def retrieve_version(self) -> str:
        """The server version string (5.0.x = 2011 ... 9.x)."""
        return str(self.execute("RetrieveVersion", family=CRM).results.get("Version") or "")

    def retrieve(self, entity: str, id: str, columns: Iterable[str] | None = None) -> Entity:
        """Read one record; columns None means all columns."""
        root, op = new_envelope("Retrieve")
        sub(op, SERVICES, "entityName", entity)
        sub(op, SERVICES, "id", format_guid(id))
        cs = sub(op, SERVICES, "columnSet")
        cols = None if columns is None else list(columns)
        sub(cs, XRM, "AllColumns", "true" if cols is None else "false")
        col_el = sub(cs, XRM, "Columns")
        for name in cols or ():
            sub(col_el, ARR, "string", name)
        response = self._post("Retrieve", root, idempotent=True)
        result = child(response, SERVICES, "RetrieveResult")
        if result is None:
            raise NotDynamicsError("The Retrieve response has no RetrieveResult.")
        return parse_entity(result)

    def retrieve_multiple(self, fetchxml: str) -> EntityPage:
        """Run one FetchXML page (RetrieveMultiple with a FetchExpression)."""
        root, op = new_envelope("RetrieveMultiple")
        query = sub(op, SERVICES, "query")
        set_type(query, XRM, "FetchExpression")
        # lxml escapes the FetchXML text again here: the double escaping the protocol needs.
        sub(query, XRM, "Query", fetchxml)
        self.pages += 1
        response = self._post("RetrieveMultiple", root, idempotent=True)
        result = child(response, SERVICES, "RetrieveMultipleResult")
        if result is None:
            raise NotDynamicsError("The RetrieveMultiple response has no RetrieveMultipleResult.")
        return parse_entity_page(result)

    def fetch_fits(self, fetchxml: str) -> bool:
        """Any FetchXML fits: the Organization Service takes it in a POST body."""
        return True

    def iter_fetch(self, fetch: str | Callable[[], str], page_size: int = 5000) -> Iterator[Entity]:
        """Yield every record of a FetchXML query (see ``iter_fetch``)."""
        return iter_fetch(self, fetch, page_size)

    def create(self, entity: str, attributes: Mapping[str, Any]) -> str:
        """Create a record and return its id."""
        root, op = new_envelope("Create")
        write_entity(sub(op, SERVICES, "entity"), entity, attributes)
        response = self._post("Create", root)
        new_id = child_text(response, SERVICES, "CreateResult")
        if not new_id:
            raise NotDynamicsError("The Create response has no CreateResult.")
        return new_id.strip().lower()

    def update(self, entity: str, id: str, attributes: Mapping[str, Any]) -> None:
        """Update the given attributes of a record."""
        root, op = new_envelope("Update")
        write_entity(sub(op, SERVICES, "entity"), entity, attributes, id)
        self._post("Update", root)

    def delete(self, entity: str, id: str) -> None:
        """Delete a record."""
        root, op = new_envelope("Delete")
        sub(op, SERVICES, "entityName", entity)
        sub(op, SERVICES, "id", format_guid(id))
        self._post("Delete", root)

    def set_state(self, entity: str, id: str, state: int, status: int) -> None:
        """Change statecode/statuscode (works on every version; e.g. lead 2/4 disqualifies as Lost)."""
        self.execute(
            "SetState",
            {
                "EntityMoniker": EntityReference(format_guid(id), entity),
                "State": OptionSetValue(state),
                "Status": OptionSetValue(status),
            },
            family=CRM,
        )

    def execute_multiple(
        self, requests: Sequence[BatchRequest], continue_on_error: bool = True, return_responses: bool = True
    ) -> list[BatchItemResult]:
        """Send up to 1000 Create/Update/SetState requests by ExecuteMultiple; one result per request, in order.

        The requests go in batches of ``batch_limit``: lowered (and kept) when the server names a smaller
        MaxBatchSize, halved after a batch that outlived its deadline. Records that met a passing fault (deadlock,
        SQL timeout, "try again later") are sent again a few times, with backoff, before they count as failed.
        A fault of the whole request raises when nothing of this call was written yet (so the caller may send it
        all again); after that, it becomes the failure of the records it concerned.
        """
        if len(requests) > MAX_BATCH_SIZE:
            raise BatchTooLargeError(f"{len(requests)} requests given; a batch may hold at most {MAX_BATCH_SIZE}.")
        if not requests:
            return []
        if not self.transport.authenticated:
            # NTLM re-sends the body on each handshake leg: authenticate with a tiny call first.
            self.who_am_i()
        results = self._send_in_batches(requests, continue_on_error, return_responses)
        for attempt in range(1, self.item_tries):
            again = [i for i, r in enumerate(results) if not r.ok and isinstance(r.error, TransientItemError)]
            if not again:
                break
            time.sleep(self.item_retry_delay * 2 ** (attempt - 1))
            try:
                retried = self._send_in_batches([requests[i] for i in again], continue_on_error, return_responses)
            except (AuthFailedError, ClaimsAuthError):
                raise
            except DynamicsError:
                break  # they stay failed (retryable): a later run sends them again
            for index, item in zip(again, retried, strict=True):
                item.index = index
                results[index] = item
        return results

    def batch_deadline(self, size: int) -> float:
        """Seconds allowed for a batch of `size` requests (grows with the size)."""
        return self.transport.config.batch_deadline(size)

    def _send_in_batches(self, requests: Sequence[BatchRequest], continue_on_error: bool,
                         return_responses: bool) -> list[BatchItemResult]:
        results: list[BatchItemResult] = []
        start = 0
        while start < len(requests):
            part = requests[start:start + self.batch_limit]
            try:
                part_results = self._execute_multiple_once(part, continue_on_error, return_responses)
            except BatchTooLargeError as exc:
                if not exc.max_batch_size or exc.max_batch_size >= len(part):
                    raise
                self.server_batch_limit = exc.max_batch_size
                self.batch_limit = min(self.batch_limit, exc.max_batch_size)
                self.notes.append(f"The CRM accepts at most {exc.max_batch_size} requests per batch "
                                  f"(MaxBatchSize): batches of {self.batch_limit} from now on.")
                continue
            except RequestTimeoutError as exc:
                exc.outcome_unknown = True  # the server may still be writing them
                smaller = max(1, len(part) // 2)
                if smaller < self.batch_limit:
                    self.batch_limit = smaller
                    self.notes.append(f"A batch of {len(part)} did not finish within "
                                      f"{self.batch_deadline(len(part)):.0f} s: batches of {smaller} from now on.")
                if not results:
                    raise
                results += _failed(part, start, exc, unknown=True)
                start += len(part)
                continue
            except (ServerBusyError, ServerError, UnreachableError, TransientItemError) as exc:
                if not results:
                    raise
                # Server Busy is refused before anything runs; a dropped answer leaves the outcome unknown.
                results += _failed(part, start, exc, unknown=not isinstance(exc, ServerBusyError))
                start += len(part)
                continue
            for item in part_results:
                item.index += start
            results += part_results
            start += len(part)
        return results

    def _execute_multiple_once(self, requests: Sequence[BatchRequest], continue_on_error: bool,
                               return_responses: bool) -> list[BatchItemResult]:
        envelope = execute_multiple_envelope(requests, continue_on_error, return_responses)
        response = self._post("Execute", envelope, deadline=self.batch_deadline(len(requests)))
        result_el = child(response, SERVICES, "ExecuteResult")
        if result_el is None:
            raise NotDynamicsError("The ExecuteMultiple response has no ExecuteResult.")
        values, elements = parse_results(result_el)
        result = ExecuteResult(child_text(result_el, XRM, "ResponseName"), values, elements)
        return parse_execute_multiple(result, requests, continue_on_error, return_responses)

    # -- option sets

    def retrieve_option_set(self, entity: str = "lead", attribute: str = "leadsourcecode") -> list[OptionMetadata]:
        """The options (value and labels) of a picklist attribute, as if published."""
        r = self.execute(
            "RetrieveAttribute",
            {
                "EntityLogicalName": entity,
                "LogicalName": attribute,
                "MetadataId": uuid.UUID(int=0),
                "RetrieveAsIfPublished": True,
            },
        )
        metadata = r.elements.get("AttributeMetadata")
        if metadata is None:
            raise NotDynamicsError("The RetrieveAttribute response has no AttributeMetadata.")
        return parse_option_set(metadata)

    def retrieve_max_lengths(self, entity: str) -> dict[str, int]:
        """MaxLength of every text attribute of an entity, from its metadata as published or not (RetrieveEntity)."""
        r = self.execute(
            "RetrieveEntity",
            {
                "EntityFilters": EntityFilters("Attributes"),
                "LogicalName": entity,
                "MetadataId": uuid.UUID(int=0),
                "RetrieveAsIfPublished": True,
            },
        )
        metadata = r.elements.get("EntityMetadata")
        if metadata is None:
            raise NotDynamicsError("The RetrieveEntity response has no EntityMetadata.")
        return parse_max_lengths(metadata)

    def find_option(self, label: str, entity: str = "lead", attribute: str = "leadsourcecode") -> int | None:
        """The value of the option whose label (in any language) equals label, ignoring case."""
        return find_option_value(self.retrieve_option_set(entity, attribute), label)

    def insert_option_value(
        self,
        label: str,
        language: int = 1033,
        entity: str = "lead",
        attribute: str = "leadsourcecode",
        publish: bool = True,
    ) -> int:
        """Add an option to a picklist (the server picks the value), then publish the entity."""
        r = self.execute(
            "InsertOptionValue",
            {"EntityLogicalName": entity, "AttributeLogicalName": attribute, "Label": Label(label, language)},
        )
        value = r.results.get("NewOptionValue")
        if not isinstance(value, int):
            raise FaultError("The CRM did not return the new option's value.", detail=repr(value))
        if publish:
            self.publish_entity(entity)
        return value

    def publish_entity(self, entity: str) -> None:
        """Publish customizations of one entity (PublishXml) so new options take effect."""
        root = etree.Element("importexportxml")
        entities = etree.SubElement(root, "entities")
        etree.SubElement(entities, "entity").text = entity
        for name in ("nodes", "securityroles", "settings", "workflows"):
            etree.SubElement(root, name)
        self.execute("PublishXml", {"ParameterXml": etree.tostring(root, encoding="unicode")}, family=CRM)

    def ensure_option(self, label: str, entity: str = "lead", attribute: str = "leadsourcecode") -> int:
        """Return the option's value, adding and publishing it first when it is missing."""
        existing = self.find_option(label, entity, attribute)
        if existing is not None:
            return existing
        return self.insert_option_value(label, entity=entity, attribute=attribute)


def _failed(part: Sequence[BatchRequest], start: int, exc: DynamicsError, *, unknown: bool) -> list[BatchItemResult]:
    """Every request of a batch that failed as a whole, as failed results (retryable; outcome maybe unknown)."""
    error = exc
    if not exc.retryable:
        error = DynamicsError(exc.message, action="Nothing to change: the portal tries again later.",
                              detail=exc.detail, retryable=True)
        error.code = exc.code
    error.outcome_unknown = unknown
    return [BatchItemResult(start + i, False, None, error) for i in range(len(part))]


def find_option_value(options: Iterable[OptionMetadata], label: str) -> int | None:
    """Match a label against every localized label of the options, ignoring case and outer spaces."""
    wanted = label.strip().casefold()
    for option in options:
        names = list(option.labels.values()) + ([option.user_label] if option.user_label else [])
        if any(n.strip().casefold() == wanted for n in names):
            return option.value
    return None
