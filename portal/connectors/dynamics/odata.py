"""Reads through the OData Service URL: OData v2 (OrganizationData.svc) or the Web API (/api/data/v8+)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import (
    AuthFailedError,
    DynamicsError,
    FaultError,
    NotDynamicsError,
    ServerBusyError,
    ServerError,
    error_from_fault,
)
from .transport import HttpResponse, Transport
from .xml import EntityReference, Money, OptionSetValue

V2 = "v2"
WEBAPI = "webapi"
V2_PAGE_SIZE = 50

_WEBAPI_RE = re.compile(r"/api/data/v(\d+)\.(\d+)/?", re.IGNORECASE)
_V2_DATE_RE = re.compile(r"^\\?/Date\((-?\d+)([+-]\d{4})?\)\\?/$")


def detect_flavour(url: str) -> str:
    """"v2" for OrganizationData.svc, "webapi" for /api/data/vX.Y; NotDynamicsError otherwise."""
    path = urlsplit(url).path
    if "organizationdata.svc" in path.lower():
        return V2
    if _WEBAPI_RE.search(path):
        return WEBAPI
    raise NotDynamicsError(
        "The OData Service URL must end with /XRMServices/2011/OrganizationData.svc or /api/data/v8.x or v9.x.",
        action="Copy the OData URL from Settings > Customizations > Developer Resources.",
    )


def odata_literal(value: Any) -> str:
    """An OData literal: strings quoted with single quotes doubled; numbers, booleans and null bare."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _quote(value: str) -> str:
    # Everything that has a meaning in a query string (& = + # %, spaces) is percent-encoded.
    return quote(value, safe="$,'()/:@*!-._~")


def build_url(base: str, path: str, params: Mapping[str, str | None] | None = None) -> str:
    """Join base and path and append the query with every value percent-encoded."""
    url = base.rstrip("/") + "/" + quote(path.lstrip("/"), safe="/()'=,$")
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in (params or {}).items() if v is not None)
    return f"{url}?{query}" if query else url


def parse_v2_date(text: str) -> datetime | None:
    """Parse an OData v2 "/Date(ms)/" string to an aware UTC datetime, or None when it is not one."""
    m = _V2_DATE_RE.match(text.strip())
    if not m:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(m.group(1)))


def convert_v2_value(value: Any) -> Any:
    """Convert an OData v2 JSON value: /Date()/ strings, OptionSetValue, Money and EntityReference objects."""
    if isinstance(value, str):
        parsed = parse_v2_date(value)
        return parsed if parsed is not None else value
    if isinstance(value, dict):
        typ = str((value.get("__metadata") or {}).get("type", ""))
        if typ.endswith(".OptionSetValue"):
            return None if value.get("Value") is None else OptionSetValue(int(value["Value"]))
        if typ.endswith(".Money"):
            return None if value.get("Value") is None else Money(Decimal(str(value["Value"])))
        if typ.endswith(".EntityReference"):
            if not value.get("Id"):
                return None
            return EntityReference(str(value["Id"]).lower(), value.get("LogicalName") or "", value.get("Name"))
        if "results" in value and isinstance(value["results"], list):
            return [convert_v2_record(v) for v in value["results"]]
        return convert_v2_record(value)
    return value


def convert_v2_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A v2 record without __metadata and with typed values."""
    return {k: convert_v2_value(v) for k, v in record.items() if k != "__metadata"}


def parse_json(resp: HttpResponse) -> Any:
    """Decode a JSON body; a body that is not JSON means the URL is not an OData endpoint."""
    try:
        return json.loads(resp.content.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotDynamicsError(
            f"The OData URL answered with {resp.content_type or 'an unknown type'}, not JSON.",
            detail=f"HTTP {resp.status}",
        ) from exc


def _signed_code(code: str) -> int | None:
    # Web API codes are the hex form of the SOAP ErrorCode (0x80040217 = -2147220969).
    try:
        value = int(code, 16) if code.lower().startswith("0x") else int(code)
    except ValueError:
        return None
    return value - 2**32 if value >= 2**31 else value


def error_from_odata(resp: HttpResponse) -> DynamicsError:
    """Map an OData error response (v2 or Web API JSON, or anything else) to a typed error."""
    body: Any = None
    try:
        body = json.loads(resp.content.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        if isinstance(message, dict):  # v2: {"lang": ..., "value": ...}
            message = message.get("value")
        text = str(message or f"HTTP {resp.status}")
        code = _signed_code(str(err.get("code") or ""))
        if code is not None:
            return error_from_fault(code, text, resp.text()[:2000])
        if resp.status == 404 and "does not exist" in text.lower():
            return error_from_fault(-2147220969, text, resp.text()[:2000])
        if resp.status == 503:
            return ServerBusyError(text)
        if resp.status >= 500:
            return ServerError(text, detail=resp.text()[:2000])
        if resp.status == 403:
            return AuthFailedError(f"The CRM refused access to the OData service: {text}")
        return FaultError(text, detail=f"HTTP {resp.status}")
    if resp.status == 503:
        return ServerBusyError("The CRM server is busy (HTTP 503).")
    if resp.status >= 500:
        return ServerError(f"The CRM server failed (HTTP {resp.status}).")
    return NotDynamicsError(
        f"The OData URL did not answer as a Dynamics OData service (HTTP {resp.status}).",
        action="Copy the OData URL from Settings > Customizations > Developer Resources.",
    )


class ODataClient:
    """Read-only access through OData v2 or the Web API, following server-driven paging."""

    def __init__(self, transport: Transport, url: str | None = None, page_size: int = 500) -> None:
        base = url or transport.config.odata_url
        if not base:
            raise NotDynamicsError("No OData Service URL is configured.")
        self.transport = transport
        self.base = base.rstrip("/")
        self.flavour = detect_flavour(self.base)
        self.page_size = page_size
        self.pages = 0

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.flavour == WEBAPI:
            headers.update({
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "Prefer": f"odata.maxpagesize={int(self.page_size)}",
            })
        return headers

    def get(self, url: str) -> Any:
        """GET a URL under the service and return the decoded JSON; errors become typed errors."""
        resp = self.transport.request("GET", url, headers=self._headers())
        if resp.status != 200:
            raise error_from_odata(resp)
        return parse_json(resp)

    def entities_url(
        self,
        entity_set: str,
        select: Iterable[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        top: int | None = None,
    ) -> str:
        """The URL of a collection query; filter must be built with odata_literal for its values."""
        params: dict[str, str | None] = {
            "$select": ",".join(select) if select else None,
            "$filter": filter,
            "$orderby": orderby,
            "$top": str(int(top)) if top is not None else None,
        }
        return build_url(self.base, entity_set, params)

    def _same_service(self, next_url: str) -> str:
        # Next links must stay on the configured host; anything else is refused, not followed.
        nxt, base = urlsplit(next_url), urlsplit(self.base)
        if (nxt.scheme.lower(), nxt.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
            raise NotDynamicsError("The OData service sent a next-page link to another host.", detail=next_url[:300])
        return next_url

    def iter_pages(self, url: str) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of records from a collection URL, following __next / @odata.nextLink."""
        next_url: str | None = url
        while next_url:
            self.pages += 1
            body = self.get(next_url)
            if self.flavour == V2:
                d = body.get("d") if isinstance(body, dict) else None
                if isinstance(d, dict) and "results" in d:
                    rows, link = d.get("results") or [], d.get("__next")
                elif isinstance(d, list):
                    rows, link = d, None
                else:
                    raise NotDynamicsError("The OData v2 response has no d/results.")
                yield [convert_v2_record(r) for r in rows]
            else:
                if not isinstance(body, dict) or "value" not in body:
                    raise NotDynamicsError("The Web API response has no value array.")
                rows, link = body.get("value") or [], body.get("@odata.nextLink")
                yield [dict(r) for r in rows]
            next_url = self._same_service(link.strip()) if link else None

    def iter_entities(
        self,
        entity_set: str,
        select: Iterable[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield every record of an entity set (LeadSet for v2, leads for the Web API)."""
        for page in self.iter_pages(self.entities_url(entity_set, select, filter, orderby)):
            yield from page

    def ping(self) -> dict[str, Any]:
        """A cheap authenticated call for the connection test: WhoAmI (Web API) or the service document (v2)."""
        if self.flavour == WEBAPI:
            body = self.get(build_url(self.base, "WhoAmI"))
            if not isinstance(body, dict) or "UserId" not in body:
                raise NotDynamicsError("The Web API WhoAmI answer has no UserId.")
            return {"flavour": WEBAPI, "user_id": str(body["UserId"]).lower()}
        body = self.get(self.base + "/")
        d = body.get("d") if isinstance(body, dict) else None
        if not isinstance(d, dict):
            raise NotDynamicsError("The OData v2 service document has no d element.")
        return {"flavour": V2, "entity_sets": len(d.get("EntitySets") or [])}
