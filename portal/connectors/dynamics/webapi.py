"""Dynamics 365 online through the Web API v9.2: the same service methods as OrganizationService, over OAuth.

Writes go in ``$batch`` requests of at most 1,000 operations, outside change sets (a change set is all or
nothing, and the continue-on-error preference does not apply inside one), with ``Prefer: odata.continue-on-error``
so that one bad record does not stop the others. Service protection limits (HTTP 429 with ``Retry-After``) are
honoured by waiting and by lowering the number of requests in flight, never by failing records.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

import requests

from .auth import ApplicationUserError, OnlineConfig, TokenProvider, provider_for
from .errors import (
    MAX_BATCH_SIZE,
    AuthFailedError,
    BatchTooLargeError,
    DynamicsError,
    FaultError,
    NotDynamicsError,
    ServerBusyError,
    ServerError,
    error_from_fault,
)
from .odata import _signed_code, odata_literal
from .soap import (
    BatchItemResult,
    BatchRequest,
    CreateRequest,
    SetStateRequest,
    UpdateRequest,
    WhoAmI,
    iter_fetch,
)
from .soap import find_option_value as _find_option_value
from .transport import GuardedAdapter, HttpResponse, Transport, parse_dop_hint, parse_retry_after
from .xml import Entity, EntityPage, EntityReference, Label, Money, OptionMetadata, OptionSetValue, parse_xml

log = logging.getLogger("portal.connectors.dynamics")

# Service protection limit error codes (Web API answers 429 with one of these and a Retry-After header).
ERROR_REQUEST_COUNT = -2147015902  # 0x80072322: number of requests over the limit in 5 minutes
ERROR_EXECUTION_TIME = -2147015903  # 0x80072321: combined execution time over the limit in 5 minutes
ERROR_CONCURRENCY = -2147015898  # 0x80072326: too many concurrent requests
SERVICE_PROTECTION_CODES = {ERROR_REQUEST_COUNT, ERROR_EXECUTION_TIME, ERROR_CONCURRENCY}
# 0x80072560: the token is valid, but no (enabled) application user exists for the app in this environment.
ERROR_NOT_MEMBER = -2147015328  # 0x80072560

# Documented limits of a URL: 32,768 characters on its own, 65,536 for a request inside a $batch body. A longer
# query goes in a $batch; one too long for that is split (``soap.fetch_in``) before it is sent.
MAX_URL_LENGTH = 32 * 1024
MAX_BATCH_URL_LENGTH = 64 * 1024
PAGING_ROOM = 2048  # what page, count and the paging cookie of a later page may add to a query's URL
MAX_THROTTLE_WAITS = 8  # 429s met by one request before it is handed back as Server Busy

# Entity set names of the entities the sync uses; any other is read from the metadata once.
ENTITY_SETS = {
    "lead": "leads", "contact": "contacts", "annotation": "annotations", "campaign": "campaigns",
    "list": "lists", "listmember": "listmembers", "opportunity": "opportunities",
    "activitypointer": "activitypointers", "task": "tasks", "phonecall": "phonecalls",
    "systemuser": "systemusers", "team": "teams", "account": "accounts",
}
PRIMARY_IDS = {"activitypointer": "activityid", "task": "activityid", "phonecall": "activityid"}
# Lookups that may point at several entities have one navigation property per target: objectid_lead on a note,
# customerid_account. An activity's regarding property names the activity too (regardingobjectid_lead_task); the
# owner is a single property, ownerid, that binds to systemusers or teams.
POLYMORPHIC = {"objectid", "customerid", "parentcustomerid"}
# Written by the binding of objectid itself on the Web API.
DERIVED_ON_WRITE = {("annotation", "objecttypecode")}

_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ID_IN_URL = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")
FORMATTED = "@OData.Community.Display.V1.FormattedValue"
LOOKUP_NAME = "@Microsoft.Dynamics.CRM.lookuplogicalname"


class ThrottledError(ServerBusyError):
    """The environment's service protection limits refused the request (HTTP 429) for longer than we waited."""

    code = "throttled"
    default_message = "Dynamics 365 asked the portal to slow down (service protection limits)."
    default_action = "Nothing to change: the portal waits as asked and tries again."

    def __init__(self, message: str | None = None, *, retry_after: float = 0.0, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class QueryTooLongError(FaultError):
    """A FetchXML query whose URL would be longer than the Web API takes even inside a $batch."""

    code = "query_too_long"
    default_message = "The query is too long for the Dynamics 365 Web API (over 65,536 characters in its URL)."
    default_action = "Nothing to change in the settings: this is a fault in the portal; report it to support."


class Throttle:
    """Requests in flight to one environment: a limit that halves once per burst of 429s and climbs after successes.

    A burst is the requests sent under one limit: each request goes with the limit's generation (the halvings so
    far), and only a 429 for a request sent under the limit now halves it. The other requests refused with it wait
    as asked but do not halve it again; a request refused after a halving, sent under the lowered limit, halves it
    once more. It never goes above the configured limit, nor above the degree of parallelism the service recommends.
    """

    def __init__(self, limit: int) -> None:
        self.configured = max(1, limit)
        self.max_limit = self.configured
        self.limit = self.max_limit
        self.in_flight = 0
        self.not_before = 0.0
        self.events = 0
        self.waited = 0.0
        self.generation = 0  # the lowerings so far (429s, the recommended parallelism): the limit a request went under
        self._good = 0
        self._cond = threading.Condition()

    def acquire(self) -> int:
        """Wait for a free slot and for the end of any wait the service asked for; the limit's generation."""
        with self._cond:
            while True:
                now = time.monotonic()
                if now < self.not_before:
                    self._cond.wait(self.not_before - now)
                    continue
                if self.in_flight < self.limit:
                    self.in_flight += 1
                    return self.generation
                self._cond.wait(1.0)

    def release(self, ok: bool = True) -> None:
        """Give the slot back; after enough successes in a row, allow one more request in flight."""
        with self._cond:
            self.in_flight -= 1
            if ok:
                self._good += 1
                if self._good >= 20 and self.limit < self.max_limit:
                    self.limit += 1
                    self._good = 0
            self._cond.notify_all()

    def recommend(self, hint: int) -> None:
        """The service's recommended degree of parallelism (x-ms-dop-hint): at most that many requests at once."""
        with self._cond:
            top = max(1, min(self.configured, hint))
            if top != self.max_limit:
                self.max_limit = top
                if top < self.limit:  # lowered: a 429 for a request sent under the higher limit halves it no more
                    self.limit = top
                    self.generation += 1
                self._cond.notify_all()

    def throttled(self, retry_after: float, generation: int) -> None:
        """The service said 429 to a request sent under GENERATION (``acquire``'s): nobody sends before Retry-After
        is over, and the limit halves if the request was sent under the limit now."""
        with self._cond:
            self.events += 1
            self.waited += retry_after
            self.not_before = max(self.not_before, time.monotonic() + retry_after)
            if generation == self.generation:
                self.limit = max(1, self.limit // 2)
                self.generation += 1
            self._good = 0
            self._cond.notify_all()


_THROTTLES: dict[str, Throttle] = {}
_THROTTLES_LOCK = threading.Lock()


def throttle_for(config: OnlineConfig) -> Throttle:
    """The throttle of one environment and app, shared by every lane of this process."""
    key = f"{config.root}|{config.client_id}|{config.cache_key}"
    with _THROTTLES_LOCK:
        throttle = _THROTTLES.get(key)
        if throttle is None:
            throttle = _THROTTLES[key] = Throttle(config.max_parallel)
        return throttle


# ---------------------------------------------------------------- transport


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.provider.token()}"
        return r


class BearerTransport(Transport):
    """The Transport with a bearer token instead of NTLM: a refused token is renewed and the request sent again."""

    def __init__(self, config: OnlineConfig, session: requests.Session | None = None,
                 provider: TokenProvider | None = None) -> None:
        self.config = config  # type: ignore[assignment]
        self.until: float | None = None  # an overall end for every exchange, as on the Transport
        self.requests_sent = 0
        self.handshakes = 0
        self.authenticated = False
        self.provider = provider or provider_for(config)
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.session.auth = _BearerAuth(self.provider)
        self.session.verify = (config.ca_bundle or True) if config.verify_tls else False
        self.session.headers.update({"User-Agent": config.user_agent, "Connection": "Keep-Alive"})
        adapter = GuardedAdapter(config.allowed_networks, config.allowed_endpoints, max_retries=0,
                                 pool_maxsize=max(4, config.max_parallel))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                data: bytes | None = None, deadline: float | None = None) -> HttpResponse:
        """Send one request; on 401 forget the token and try once more with a new one."""
        try:
            return super().request(method, url, headers=headers, data=data, deadline=deadline)
        except ApplicationUserError:
            raise
        except AuthFailedError as exc:
            if exc.detail != "bearer-401":
                raise
            self.provider.invalidate()
            return super().request(method, url, headers=headers, data=data, deadline=deadline)

    def _check_auth_and_redirects(self, result: HttpResponse, resp: requests.Response) -> None:
        status = result.status
        if 300 <= status < 400:
            raise NotDynamicsError(
                f"The environment URL redirects (HTTP {status}); the portal does not follow redirects.",
                action="Use the Environment URL from the Power Platform admin center (https://<org>.crm<N>.dynamics.com).",
                detail=(result.headers.get("Location") or "")[:300],
            )
        if status == 401:
            raise AuthFailedError(
                "Dynamics 365 refused the access token.",
                action=("Check that the Environment URL is the environment the app user was added to, and that the "
                        "tenant id is the environment's tenant."),
                detail="bearer-401",
            )

    def warm_up(self) -> None:
        """Nothing to warm up: a bearer token is sent with every request."""


# ---------------------------------------------------------------- value conversion


def _write_value(entity: str, name: str, value: Any) -> tuple[str, Any]:
    """One attribute as the Web API takes it: (property name, JSON value)."""
    if isinstance(value, EntityReference):
        nav = name
        if name == "regardingobjectid":
            nav = f"{name}_{value.logical_name}_{entity}"
        elif name in POLYMORPHIC:
            nav = f"{name}_{value.logical_name}"
        return f"{nav}@odata.bind", f"/{entity_set(value.logical_name)}({value.id.strip('{}').lower()})"
    if isinstance(value, OptionSetValue):
        return name, value.value
    if isinstance(value, Money):
        return name, float(value.value)
    if isinstance(value, Decimal):
        return name, float(value)
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        return name, when.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        # The sync's dates go to Date and Time columns (Edm.DateTimeOffset): midnight UTC, as over SOAP.
        return name, f"{value.isoformat()}T00:00:00Z"
    return name, value


def record_body(entity: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A create/update body: lookups as @odata.bind, option sets as numbers, dates in ISO form."""
    body: dict[str, Any] = {}
    for name, value in attributes.items():
        if (entity, name) in DERIVED_ON_WRITE:
            continue
        key, converted = _write_value(entity, name, value)
        body[key] = converted
    return body


def entity_set(logical_name: str) -> str:
    """The entity set name of an entity (leads for lead)."""
    found = ENTITY_SETS.get(logical_name)
    if found is None:
        raise FaultError(f"The portal does not know the Web API collection of the entity {logical_name}.")
    return found


def _read_value(key: str, value: Any, record: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        if _ISO_DATETIME.match(value):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        if _ISO_DATE.match(value) and f"{key}{FORMATTED}" in record:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def parse_record(entity: str, record: Mapping[str, Any]) -> Entity:
    """A Web API record as the connector's Entity: lookups as EntityReference, formatted values kept."""
    primary = PRIMARY_IDS.get(entity, f"{entity}id")
    attributes: dict[str, Any] = {}
    formatted: dict[str, str] = {}
    for key, value in record.items():
        if "@" in key:
            name, _, annotation = key.partition("@")
            if annotation == FORMATTED[1:]:
                formatted[_lookup_name(name)] = str(value)
            continue
        lookup = re.fullmatch(r"_(\w+)_value", key)
        if lookup:
            name = lookup.group(1)
            target = record.get(f"{key}{LOOKUP_NAME}") or ""
            attributes[name] = (EntityReference(str(value).lower(), str(target), record.get(f"{key}{FORMATTED}"))
                                if value else None)
            continue
        attributes[key] = _read_value(key, value, record)
    rid = attributes.get(primary)
    return Entity(entity, str(rid).lower() if rid else None, attributes, formatted)


def _lookup_name(name: str) -> str:
    found = re.fullmatch(r"_(\w+)_value", name)
    return found.group(1) if found else name


def _cookie_from_annotation(annotation: str) -> tuple[str | None, int | None]:
    """The paging cookie and next page from @Microsoft.Dynamics.CRM.fetchxmlpagingcookie (double-encoded)."""
    try:
        root = parse_xml(annotation)
    except DynamicsError:
        return None, None
    inner = root.get("pagingcookie")
    page = root.get("pagenumber")
    cookie = unquote(unquote(inner)) if inner else None
    return cookie, int(page) if page and page.isdigit() else None


# ---------------------------------------------------------------- $batch


def batch_body(boundary: str, base_path: str, operations: Sequence[tuple[str, str, dict[str, Any] | None]]) -> bytes:
    """A multipart/mixed $batch body of independent operations, outside any change set.

    As documented, a part outside a change set has no Content-ID (that header names a change-set operation for
    ``$n`` references); the answers come back in the order of the operations.
    """
    lines: list[str] = []
    for method, path, body in operations:
        lines += [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary",
                  "", f"{method} {base_path}{path} HTTP/1.1"]
        if method == "PATCH":
            lines.append("If-Match: *")  # an update never creates a record that was deleted meanwhile
        if body is not None:
            lines += ["Content-Type: application/json; type=entry", "", json.dumps(body, separators=(",", ":"))]
        else:
            # A preference is per request inside a batch: the formatted values and paging cookie of a query.
            lines += ["Accept: application/json", 'Prefer: odata.include-annotations="*"', ""]
        lines.append("")
    lines.append(f"--{boundary}--")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8")


class BatchPart:
    """One operation's answer inside a $batch response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body decoded as JSON (None when empty or not JSON)."""
        try:
            return json.loads(self.body.decode("utf-8-sig")) if self.body.strip() else None
        except (ValueError, UnicodeDecodeError, RecursionError):  # a hostile server's 100,000-deep JSON too
            return None


def _boundary(content_type: str) -> str | None:
    found = re.search(r'boundary="?([^";]+)"?', content_type or "", re.IGNORECASE)
    return found.group(1) if found else None


def _split_headers(block: bytes) -> tuple[dict[str, str], bytes]:
    head, _, rest = block.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def parse_batch(content_type: str, content: bytes) -> list[BatchPart]:
    """The parts of a $batch response in order; a change set's parts are flattened in place."""
    boundary = _boundary(content_type)
    if not boundary:
        raise NotDynamicsError("The $batch answer is not multipart.", detail=content_type[:200])
    content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    delimiter = b"--" + boundary.encode()
    parts: list[BatchPart] = []
    for chunk in content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        mime_headers, payload = _split_headers(chunk.lstrip(b"\r\n"))
        ctype = mime_headers.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            parts.extend(parse_batch(ctype, payload))
            continue
        status_line, _, rest = payload.partition(b"\r\n")
        match = re.match(rb"HTTP/1\.[01] (\d{3})", status_line)
        if not match:
            raise NotDynamicsError("A $batch part has no HTTP status line.", detail=status_line[:200].decode("latin-1"))
        headers, body = _split_headers(rest)
        parts.append(BatchPart(int(match.group(1)), headers, body.rstrip(b"\r\n")))
    return parts


def error_from_json(status: int, body: Any, raw: str = "") -> DynamicsError:
    """A Web API error answer ({"error": {"code", "message"}}) as the typed error."""
    err = body.get("error") if isinstance(body, dict) else None
    message = str(err.get("message") or f"HTTP {status}") if isinstance(err, dict) else f"HTTP {status}"
    code = _signed_code(str(err.get("code") or "")) if isinstance(err, dict) else None
    if code in SERVICE_PROTECTION_CODES or status == 429:
        return ThrottledError(message, error_code=code, detail=raw[:2000] or None)
    if code == ERROR_NOT_MEMBER or (status == 403 and "not a member of the organization" in message.lower()):
        return ApplicationUserError(f"{ApplicationUserError.default_message} ({message})", detail=raw[:2000] or None)
    if code is not None:
        return error_from_fault(code, message, raw[:2000])
    if status == 404:
        return error_from_fault(-2147220969, message, raw[:2000])
    if status == 503:
        return ServerBusyError(message)
    if status >= 500:
        return ServerError(message, detail=raw[:2000] or None)
    if status == 403:
        return AuthFailedError(f"Dynamics 365 refused access: {message}")
    return FaultError(message, detail=raw[:2000] or f"HTTP {status}")


# ---------------------------------------------------------------- the service


class WebApiService:
    """Dynamics 365 online through the Web API v9.2, with the methods the sync engine calls."""

    def __init__(self, transport: BearerTransport, throttle: Throttle | None = None) -> None:
        self.transport = transport
        self.config: OnlineConfig = transport.config  # type: ignore[assignment]
        self.base = self.config.webapi_url
        self.base_path = "/api/data/v9.2/"
        self.throttle = throttle or throttle_for(self.config)
        self.pages = 0
        self._sets: dict[str, str] = {}
        # What the sync engine reads of any service: the batch size in use, a limit the server named, and what
        # the service changed on its own (for the run's log). $batch takes at most 1,000 operations.
        self.batch_limit = MAX_BATCH_SIZE
        self.server_batch_limit: int | None = None
        self.notes: list[str] = []

    # -- plumbing

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0",
                   "Content-Type": "application/json; charset=utf-8"}
        headers.update(extra or {})
        return headers

    def _send(self, method: str, url: str, headers: Mapping[str, str], data: bytes | None = None) -> HttpResponse:
        """One request through the throttle; 429s wait as asked (and lower the parallelism), then go again."""
        return self._send_counted(method, url, headers, data)[0]

    def _send_counted(self, method: str, url: str, headers: Mapping[str, str], data: bytes | None = None
                      ) -> tuple[HttpResponse, int]:
        """As ``_send``, with the throttle's generation the answered request went under (see Throttle)."""
        waits = 0
        while True:
            generation = self.throttle.acquire()
            ok = False
            try:
                resp = self.transport.request(method, url, headers=headers, data=data)
                ok = resp.status != 429
            finally:
                self.throttle.release(ok)
            hint = parse_dop_hint(resp.headers.get("x-ms-dop-hint"))
            if hint is not None:
                self.throttle.recommend(hint)
            if resp.status != 429:
                return resp, generation
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            waits += 1
            log.info("throttled by %s: waiting %.1fs (%d)", self.config.root, retry_after, waits)
            self.throttle.throttled(retry_after, generation)
            if waits >= MAX_THROTTLE_WAITS:
                raise error_from_json(429, _json_or_none(resp), resp.text())

    def _json(self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        url = path if path.startswith("https://") or path.startswith("http://") else self.base + path
        data = json.dumps(body).encode() if body is not None else None
        resp = self._send(method, url, self._headers(headers), data)
        if resp.status >= 400:
            raise error_from_json(resp.status, _json_or_none(resp), resp.text())
        if resp.status == 204 or not resp.content.strip():
            return {"__entity_id": resp.headers.get("OData-EntityId") or ""}
        payload = _json_or_none(resp)
        if payload is None:
            raise NotDynamicsError(f"The Web API answered with {resp.content_type or 'no content type'}, not JSON.",
                                   detail=f"HTTP {resp.status}")
        return payload

    def entity_set(self, logical_name: str) -> str:
        """The collection of an entity: known names, else read once from the entity's metadata."""
        if logical_name in ENTITY_SETS:
            return ENTITY_SETS[logical_name]
        if logical_name not in self._sets:
            body = self._json("GET", f"EntityDefinitions(LogicalName={odata_literal(logical_name)})"
                                     "?$select=EntitySetName")
            self._sets[logical_name] = str(body.get("EntitySetName") or "")
        if not self._sets[logical_name]:
            raise FaultError(f"The environment has no entity {logical_name}.")
        return self._sets[logical_name]

    # -- messages

    def who_am_i(self) -> WhoAmI:
        """The application user's id, business unit and organization."""
        body = self._json("GET", "WhoAmI")
        try:
            return WhoAmI(str(body["UserId"]).lower(), str(body["BusinessUnitId"]).lower(),
                          str(body["OrganizationId"]).lower())
        except (KeyError, TypeError) as exc:
            raise NotDynamicsError("The WhoAmI answer lacks the expected ids.", detail=str(exc)) from exc

    def retrieve_version(self) -> str:
        """The environment's version (9.2.x)."""
        return str(self._json("GET", "RetrieveVersion()").get("Version") or "")

    def retrieve(self, entity: str, id: str, columns: Iterable[str] | None = None) -> Entity:
        """Read one record."""
        cols = None if columns is None else ",".join(columns)
        path = f"{self.entity_set(entity)}({_guid(id)})" + (f"?$select={quote(cols)}" if cols else "")
        body = self._json("GET", path, headers={"Prefer": 'odata.include-annotations="*"'})
        return parse_record(entity, body)

    def retrieve_multiple(self, fetchxml: str) -> EntityPage:
        """Run one FetchXML page; a query too long for a URL goes as a GET inside a $batch body."""
        root = parse_xml(fetchxml)
        ent = root.find("entity")
        if ent is None or not ent.get("name"):
            raise ValueError("FetchXML needs an <entity name=...>")
        entity = ent.get("name") or ""
        path = self._fetch_path(entity, fetchxml)
        prefer = {"Prefer": 'odata.include-annotations="*"'}
        length = len(self.base) + len(path)
        if length > MAX_BATCH_URL_LENGTH:
            raise QueryTooLongError(detail=f"{length} characters")
        self.pages += 1
        if length <= MAX_URL_LENGTH:
            body = self._json("GET", path, headers=prefer)
        else:
            part = self._batch([("GET", path, None)])[0][0]
            if part.status >= 400:
                raise error_from_json(part.status, part.json(), part.body.decode("utf-8", "replace"))
            body = part.json()
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise NotDynamicsError("The Web API answer has no value array.")
        cookie, _ = _cookie_from_annotation(str(body.get("@Microsoft.Dynamics.CRM.fetchxmlpagingcookie") or ""))
        return EntityPage([parse_record(entity, r) for r in body["value"]], entity,
                          bool(body.get("@Microsoft.Dynamics.CRM.morerecords")), cookie)

    def _fetch_path(self, entity: str, fetchxml: str) -> str:
        return f"{self.entity_set(entity)}?fetchXml={quote(fetchxml, safe='')}"

    def fetch_fits(self, fetchxml: str) -> bool:
        """Whether a query's URL stays within the $batch limit, with room left for the paging of later pages."""
        entity = parse_xml(fetchxml).find("entity")
        name = entity.get("name") if entity is not None else None
        if not name:
            raise ValueError("FetchXML needs an <entity name=...>")
        return len(self.base) + len(self._fetch_path(name, fetchxml)) + PAGING_ROOM <= MAX_BATCH_URL_LENGTH

    def iter_fetch(self, fetch: str | Callable[[], str], page_size: int = 5000) -> Iterator[Entity]:
        """Every record of a FetchXML query (see ``soap.iter_fetch``)."""
        return iter_fetch(self, fetch, page_size)

    def create(self, entity: str, attributes: Mapping[str, Any]) -> str:
        """Create a record and return its id."""
        answer = self._json("POST", self.entity_set(entity), record_body(entity, attributes))
        return _id_from_entity_url(answer.get("__entity_id", ""))

    def update(self, entity: str, id: str, attributes: Mapping[str, Any]) -> None:
        """Update the given attributes (If-Match: * so that a deleted record is not created again)."""
        self._json("PATCH", f"{self.entity_set(entity)}({_guid(id)})", record_body(entity, attributes),
                   headers={"If-Match": "*"})

    def delete(self, entity: str, id: str) -> None:
        """Delete a record."""
        self._json("DELETE", f"{self.entity_set(entity)}({_guid(id)})")

    def set_state(self, entity: str, id: str, state: int, status: int) -> None:
        """Change statecode/statuscode (an update of both on the Web API)."""
        self.update(entity, id, {"statecode": state, "statuscode": status})

    # -- $batch

    def _batch(self, operations: Sequence[tuple[str, str, dict[str, Any] | None]]) -> tuple[list[BatchPart], int]:
        """The operations in one $batch: their answers, and the throttle's generation the batch went under."""
        boundary = f"batch_{uuid.uuid4()}"
        headers = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0",
                   "Content-Type": f"multipart/mixed; boundary={boundary}",
                   "Prefer": "odata.continue-on-error"}
        resp, generation = self._send_counted("POST", self.base + "$batch", headers,
                                              batch_body(boundary, self.base_path, operations))
        if resp.status >= 400:
            raise error_from_json(resp.status, _json_or_none(resp), resp.text())
        return parse_batch(resp.headers.get("Content-Type") or "", resp.content), generation

    def _operation(self, req: BatchRequest) -> tuple[str, str, dict[str, Any]]:
        if isinstance(req, CreateRequest):
            return "POST", self.entity_set(req.entity), record_body(req.entity, req.attributes)
        if isinstance(req, UpdateRequest):
            return "PATCH", f"{self.entity_set(req.entity)}({_guid(req.id)})", record_body(req.entity, req.attributes)
        if isinstance(req, SetStateRequest):
            return ("PATCH", f"{self.entity_set(req.entity)}({_guid(req.id)})",
                    {"statecode": req.state, "statuscode": req.status})
        raise TypeError(f"Unsupported batch request: {type(req).__name__}")

    def execute_multiple(self, requests: Sequence[BatchRequest], continue_on_error: bool = True,
                         return_responses: bool = True) -> list[BatchItemResult]:
        """Send up to 1000 Create/Update/SetState requests in one $batch; one result per request, in order.

        Operations the service refused for its limits (429 inside the batch) were not run: they wait as asked and go
        again, so they come back with the outcome of their real attempt.
        """
        if len(requests) > MAX_BATCH_SIZE:
            raise BatchTooLargeError(f"{len(requests)} requests given; a batch may hold at most {MAX_BATCH_SIZE}.")
        results: dict[int, BatchItemResult] = {}
        todo = list(range(len(requests)))
        waits = 0
        while todo:
            parts, generation = self._batch([self._operation(requests[i]) for i in todo])
            again: list[int] = []
            retry_after = 0.0
            for position, index in enumerate(todo):
                part = parts[position] if position < len(parts) else None
                if part is None:
                    # The service stopped at a failure (without continue-on-error): the rest did not run.
                    results[index] = BatchItemResult(index, False, skipped=True)
                    continue
                if part.status == 429:
                    again.append(index)
                    retry_after = max(retry_after, parse_retry_after(part.headers.get("retry-after")))
                    continue
                results[index] = self._item_result(index, requests[index], part)
            if again:
                waits += 1
                self.throttle.throttled(retry_after, generation)
                self.transport.throttled(retry_after)  # and the portal's limit of every worker, through the gate
                if waits >= MAX_THROTTLE_WAITS:
                    error = ThrottledError("Dynamics 365 kept refusing these records for its service protection "
                                           "limits.", retry_after=retry_after)
                    for index in again:
                        results[index] = BatchItemResult(index, False, error=error)
                    break
                # Wait here too: a lane alone must not send again before Retry-After is over (not a success).
                self.throttle.acquire()
                self.throttle.release(ok=False)
            todo = again
        return [results[i] for i in range(len(requests))]

    @staticmethod
    def _item_result(index: int, req: BatchRequest, part: BatchPart) -> BatchItemResult:
        if part.status >= 400:
            return BatchItemResult(index, False, error=error_from_json(part.status, part.json(),
                                                                       part.body.decode("utf-8", "replace")))
        if isinstance(req, CreateRequest):
            new_id = _id_from_entity_url(part.headers.get("odata-entityid") or part.headers.get("location") or "")
            return BatchItemResult(index, True, id=new_id)
        return BatchItemResult(index, True, id=_guid(req.id))

    # -- the lead source option

    def retrieve_option_set(self, entity: str = "lead", attribute: str = "leadsourcecode") -> list[OptionMetadata]:
        """The options of a picklist attribute (value and localized labels)."""
        path = (f"EntityDefinitions(LogicalName={odata_literal(entity)})/Attributes(LogicalName="
                f"{odata_literal(attribute)})/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
                "?$select=LogicalName&$expand=OptionSet($select=Options)")
        body = self._json("GET", path)
        options = ((body.get("OptionSet") or {}).get("Options")) if isinstance(body, dict) else None
        if not isinstance(options, list):
            raise NotDynamicsError("The attribute metadata has no OptionSet options.")
        out = []
        for option in options:
            label = option.get("Label") or {}
            labels = {int(loc["LanguageCode"]): str(loc["Label"]) for loc in label.get("LocalizedLabels") or []
                      if isinstance(loc, dict) and "LanguageCode" in loc and "Label" in loc}
            user = (label.get("UserLocalizedLabel") or {}).get("Label")
            out.append(OptionMetadata(int(option["Value"]), labels, user))
        return out

    def find_option(self, label: str, entity: str = "lead", attribute: str = "leadsourcecode") -> int | None:
        """The value of the option whose label equals label, ignoring case."""
        return _find_option_value(self.retrieve_option_set(entity, attribute), label)

    def insert_option_value(self, label: str, language: int = 1033, entity: str = "lead",
                            attribute: str = "leadsourcecode", publish: bool = True) -> int:
        """Add an option through the metadata API (InsertOptionValue), then publish the entity."""
        text = Label(label, language)
        body = {
            "EntityLogicalName": entity, "AttributeLogicalName": attribute,
            "Label": {"@odata.type": "Microsoft.Dynamics.CRM.Label", "LocalizedLabels": [
                {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text.text,
                 "LanguageCode": text.language}]},
        }
        answer = self._json("POST", "InsertOptionValue", body)
        value = answer.get("NewOptionValue") if isinstance(answer, dict) else None
        if not isinstance(value, int):
            raise FaultError("Dynamics 365 did not return the new option's value.", detail=repr(value))
        if publish:
            self.publish_entity(entity)
        return value

    def publish_entity(self, entity: str) -> None:
        """Publish one entity's customizations (PublishXml) so the new option takes effect."""
        xml = (f"<importexportxml><entities><entity>{entity}</entity></entities><nodes/><securityroles/>"
               "<settings/><workflows/></importexportxml>")
        self._json("POST", "PublishXml", {"ParameterXml": xml})

    def ensure_option(self, label: str, entity: str = "lead", attribute: str = "leadsourcecode") -> int:
        """The option's value, adding and publishing it first when it is missing."""
        existing = self.find_option(label, entity, attribute)
        if existing is not None:
            return existing
        return self.insert_option_value(label, entity=entity, attribute=attribute)


def _json_or_none(resp: HttpResponse) -> Any:
    try:
        return json.loads(resp.content.decode("utf-8-sig")) if resp.content.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # a hostile server's 100,000-deep JSON too
        return None


def _guid(value: str) -> str:
    return str(uuid.UUID(str(value).strip("{}"))).lower()


def _id_from_entity_url(url: str) -> str:
    found = _ID_IN_URL.search(url or "")
    if not found:
        raise NotDynamicsError("Dynamics 365 did not say the id of the new record.", detail=(url or "")[:300])
    return found.group(1).lower()
