"""Read-only OData v2 (OrganizationData.svc) and Web API v8.2 front ends over the same records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from lxml import etree

from . import schema as s
from .crm import Crm, User
from .like import escape_like
from .query import Condition, Filter, Query, Result, cookie_last_id, parse_fetch, parse_xml
from .values import E_INVALID_ARGUMENT, E_MISSING_PRIVILEGE, E_NOT_FOUND, CrmFault, norm_guid

V2_PAGE = 50
WEBAPI_PAGE = 5000
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

_TOKEN = re.compile(
    rf"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<guidlit>guid'(?P<g>{_GUID})')
      | (?P<dtlit>datetime'(?P<dt>[^']+)')
      | (?P<guid>{_GUID})
      | (?P<date>\d{{4}}-\d{{2}}-\d{{2}}(?:T[0-9:.]+(?:Z|[+-]\d{{2}}:\d{{2}})?)?)
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<lp>\() | (?P<rp>\)) | (?P<comma>,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_/]*)
    )""",
    re.VERBOSE,
)
_OPS = {"eq": "eq", "ne": "ne", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le"}


class ODataError(Exception):
    """An error answered as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, code: int = E_INVALID_ARGUMENT) -> None:
        """Keep status, message and CRM error code."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ODataError(400, f"Syntax error at position {pos} in '{text}'.")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "g":
            kind = "guidlit"
        if kind == "dt":
            kind = "dtlit"
        value = m.group(kind)
        if kind == "guidlit":
            value = m.group("g")
        elif kind == "dtlit":
            value = m.group("dt")
        elif kind == "str":
            value = value[1:-1].replace("''", "'")
        out.append((kind, value))
    return out


class _FilterParser:
    """Recursive descent over: expr := term (or term)*; term := factor (and factor)*."""

    def __init__(self, text: str, attr: Any) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.attr = attr

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ODataError(400, "Unexpected end of $filter.")
        self.i += 1
        return tok

    def parse(self) -> Filter:
        flt = self.expr()
        if self.peek() is not None:
            raise ODataError(400, f"Unexpected token '{self.peek()[1]}' in $filter.")  # type: ignore[index]
        return flt

    def expr(self) -> Filter:
        parts = [self.term()]
        while (tok := self.peek()) and tok == ("word", "or"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Filter("or", [], parts)

    def term(self) -> Filter:
        parts = [self.factor()]
        while (tok := self.peek()) and tok == ("word", "and"):
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else Filter("and", [], parts)

    def factor(self) -> Filter:
        kind, value = self.take()
        if kind == "lp":
            inner = self.expr()
            if self.take()[0] != "rp":
                raise ODataError(400, "Missing ')' in $filter.")
            return inner
        if kind != "word":
            raise ODataError(400, f"Expected a property name, found '{value}'.")
        if value in ("startswith", "endswith", "substringof", "contains") and self.peek() == ("lp", "("):
            self.take()
            a = self.take()
            self.take()  # comma
            b = self.take()
            if self.take()[0] != "rp":
                raise ODataError(400, "Missing ')' in $filter.")
            if value == "substringof":
                prop, lit = b[1], a[1]
            else:
                prop, lit = a[1], b[1]
            op = {"startswith": "begins-with", "endswith": "ends-with"}.get(value, "like")
            # OData string functions match their literal exactly: the server escapes it for LIKE.
            pattern = f"%{escape_like(lit)}%" if op == "like" else escape_like(lit)
            return Filter("and", [Condition(self.attr(prop), op, [pattern])])
        op_tok = self.take()
        op = _OPS.get(op_tok[1])
        if op_tok[0] != "word" or op is None:
            raise ODataError(400, f"Unsupported operator '{op_tok[1]}' in $filter.")
        lit_kind, lit = self.take()
        attr = self.attr(value)
        if lit_kind == "word" and lit == "null":
            return Filter("and", [Condition(attr, "null" if op == "eq" else "not-null")])
        if lit_kind == "word" and lit in ("true", "false"):
            lit = "1" if lit == "true" else "0"
        elif lit_kind == "word":
            raise ODataError(400, f"Unexpected '{lit}' in $filter.")
        return Filter("and", [Condition(attr, op, [lit])])


def _ms(iso: str) -> int:
    return int(datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000)


class ODataService:
    """Handles GET requests for both OData flavours."""

    def __init__(self, crm: Crm) -> None:
        """Bind to the organization's data."""
        self.crm = crm
        self.v2_sets = {e.set_v2: e for e in s.ENTITIES.values()}
        self.webapi_sets = {e.set_webapi: e for e in s.ENTITIES.values()}

    # ------------------------------------------------------------ shared

    @staticmethod
    def _check_attr(ent: s.EntityDef, name: str, flavour: str) -> str:
        if name not in ent.attributes:
            type_name = f"Microsoft.Dynamics.CRM.{ent.name}" if flavour == "webapi" else ent.schema_name
            raise ODataError(400, f"Could not find a property named '{name}' on type '{type_name}'.")
        return name

    def _run(self, query: Query, user: User) -> Result:
        try:
            return self.crm.retrieve_multiple(query, user)
        except CrmFault as fault:
            raise _as_odata(fault) from fault

    # ------------------------------------------------------------ OData v2

    def v2(self, path: str, args: dict[str, str], base: str, user: User) -> tuple[int, Any]:
        """GET on OrganizationData.svc; path is what follows the service root."""
        if path in ("", "/"):
            return 200, {"d": {"EntitySets": sorted(self.v2_sets)}}
        m = re.fullmatch(rf"/?(\w+)(?:\(guid'({_GUID})'\))?", path)
        if not m or m.group(1) not in self.v2_sets:
            raise ODataError(404, f"Resource not found for the segment '{path.strip('/')}'.")
        ent = self.v2_sets[m.group(1)]

        def attr(name: str) -> str:
            return self._check_attr(ent, name.split("/")[0].lower(), "v2")

        select = [attr(c.strip()) for c in args.get("$select", "").split(",") if c.strip()] or None
        if m.group(2):
            try:
                data = self.crm.retrieve(ent.name, m.group(2), select, user)
            except CrmFault as fault:
                raise _as_odata(fault) from fault
            return 200, {"d": self._v2_record(ent, norm_guid(m.group(2)), data, select, base)}
        query = Query(entity=ent.name, columns=select)
        if args.get("$filter"):
            query.filters.append(_FilterParser(args["$filter"], attr).parse())
        top = int(args["$top"]) if args.get("$top", "").isdigit() else None
        count = min(top, V2_PAGE) if top else V2_PAGE
        query.count = count
        token = args.get("$skiptoken")
        if token:
            guids = re.findall(_GUID, unquote(token))
            if not guids:
                raise ODataError(400, "Invalid $skiptoken.")
            query.after_id = norm_guid(guids[-1])
        result = self._run(query, user)
        out: dict[str, Any] = {
            "results": [self._v2_record(ent, rid, data, select, base) for _, rid, data in result.rows]
        }
        if result.more and not top and result.rows:
            last = result.rows[-1][1].upper()
            nxt = {k: v for k, v in args.items() if k != "$skiptoken"}
            nxt["$skiptoken"] = f"1,'{ent.primary_id}','{{{last}}}'"
            out["__next"] = f"{base}/{ent.set_v2}?" + urlencode(nxt, safe="$,'{}/", quote_via=quote)
        return 200, {"d": out}

    def _v2_record(
        self, ent: s.EntityDef, rid: str, data: dict[str, Any], select: list[str] | None, base: str
    ) -> dict[str, Any]:
        names = select or [a for a in ent.attributes if a != "activitytypecode" or ent.name == "activitypointer"]
        rec: dict[str, Any] = {
            "__metadata": {
                "uri": f"{base}/{ent.set_v2}(guid'{rid}')",
                "type": f"Microsoft.Crm.Sdk.Data.Services.{ent.schema_name}",
            }
        }
        for name in names:
            kind = ent.attributes[name]
            value = rid if name == ent.primary_id else data.get(name)
            rec[s.schema_name(name)] = self._v2_value(kind, value)
        return rec

    @staticmethod
    def _v2_value(kind: str, value: Any) -> Any:
        meta = "Microsoft.Crm.Sdk.Data.Services."
        if kind == s.OPTIONSET:
            return {"__metadata": {"type": meta + "OptionSetValue"}, "Value": value}
        if kind == s.MONEY:
            return {"__metadata": {"type": meta + "Money"}, "Value": None if value is None else f"{value:.4f}"}
        if kind == s.LOOKUP:
            value = value or {}
            return {
                "__metadata": {"type": meta + "EntityReference"},
                "Id": value.get("Id"),
                "LogicalName": value.get("LogicalName"),
                "Name": value.get("Name"),
                "RowVersion": None,
            }
        if value is None:
            return None
        if kind == s.DATETIME:
            return f"/Date({_ms(value)})/"
        if kind in (s.DECIMAL,):
            return str(value)
        return value

    # ------------------------------------------------------------ Web API

    def webapi(
        self, path: str, args: dict[str, str], headers: dict[str, str], base: str, user: User
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        """GET on /api/data/v8.2/; returns (status, JSON body, extra headers)."""
        if path in ("WhoAmI", "WhoAmI()"):
            return (
                200,
                {
                    "@odata.context": f"{base}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": self.crm.business_unit_id,
                    "UserId": user.id,
                    "OrganizationId": self.crm.organization_id,
                },
                [],
            )
        if path in ("", "/"):
            return (
                200,
                {
                    "@odata.context": f"{base}/$metadata",
                    "value": [{"name": n, "kind": "EntitySet", "url": n} for n in sorted(self.webapi_sets)],
                },
                [],
            )
        m = re.fullmatch(rf"(\w+)(?:\(({_GUID})\))?", path)
        if not m or m.group(1) not in self.webapi_sets:
            raise ODataError(404, f"Resource not found for the segment '{path}'.")
        ent = self.webapi_sets[m.group(1)]

        def attr(name: str) -> str:
            lookup = re.fullmatch(r"_(\w+)_value", name)
            return self._check_attr(ent, lookup.group(1) if lookup else name, "webapi")

        select = [attr(c.strip()) for c in args.get("$select", "").split(",") if c.strip()] or None
        prefer = headers.get("prefer", "")
        annotations = "include-annotations" in prefer
        if m.group(2):
            try:
                data = self.crm.retrieve(ent.name, m.group(2), select, user)
            except CrmFault as fault:
                raise _as_odata(fault) from fault
            rec = self._webapi_record(ent, norm_guid(m.group(2)), data, select, annotations)
            ctx = f"{base}/$metadata#{ent.set_webapi}/$entity"
            return 200, {"@odata.context": ctx, **rec}, []
        if "$skip" in args:
            raise ODataError(400, "The query parameter $skip is not supported")
        size_m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        size = min(int(size_m.group(1)), WEBAPI_PAGE) if size_m else WEBAPI_PAGE
        applied: list[tuple[str, str]] = []
        if size_m:
            applied.append(("Preference-Applied", f"odata.maxpagesize={size}"))
        if args.get("fetchXml"):
            query = parse_fetch(args["fetchXml"])
            if query.entity != ent.name:
                raise ODataError(400, "The FetchXML entity does not match the entity set.")
        else:
            query = Query(entity=ent.name, columns=select, count=size)
            if args.get("$filter"):
                query.filters.append(_FilterParser(args["$filter"], attr).parse())
            top = args.get("$top")
            if top and top.isdigit():
                query.top = int(top)
            token = args.get("$skiptoken")
            if token:
                query.after_id = _skiptoken_last(token, ent.primary_id)
        result = self._run(query, user)
        body: dict[str, Any] = {"@odata.context": f"{base}/$metadata#{ent.set_webapi}"}
        body["value"] = [
            self._webapi_record(ent, rid, data, query.columns, annotations) for _, rid, data in result.rows
        ]
        if result.more and result.rows:
            if args.get("fetchXml"):
                body["@Microsoft.Dynamics.CRM.morerecords"] = True
                if annotations and result.cookie:
                    inner = quote(quote(result.cookie, safe=""), safe="")
                    body["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"] = (
                        f'<cookie pagenumber="{query.page + 1}" pagingcookie="{inner}" istracking="False" />'
                    )
            else:
                cookie = result.cookie or ""
                token = (
                    f'<cookie pagenumber="2" pagingcookie="{quote(quote(cookie, safe=""), safe="")}" '
                    'istracking="False" />'
                )
                nxt = {k: v for k, v in args.items() if k != "$skiptoken"}
                nxt["$skiptoken"] = token
                body["@odata.nextLink"] = f"{base}/{ent.set_webapi}?" + urlencode(nxt, quote_via=quote)
        return 200, body, applied

    def _webapi_record(
        self, ent: s.EntityDef, rid: str, data: dict[str, Any], select: list[str] | None, annotations: bool
    ) -> dict[str, Any]:
        names = select if select is not None else list(ent.attributes)
        rec: dict[str, Any] = {"@odata.etag": f'W/"{_etag(data)}"'}
        extra = self.crm.extra_options(ent.name)
        for name in names:
            kind = ent.attributes.get(name)
            if kind is None:
                continue
            value = rid if name == ent.primary_id else data.get(name)
            if kind == s.LOOKUP:
                key = f"_{name}_value"
                if annotations and value:
                    rec[f"{key}@Microsoft.Dynamics.CRM.lookuplogicalname"] = value.get("LogicalName")
                    if value.get("Name") is not None:
                        rec[f"{key}@OData.Community.Display.V1.FormattedValue"] = value.get("Name")
                rec[key] = value.get("Id") if value else None
                continue
            if annotations and kind == s.OPTIONSET and value is not None:
                label = s.option_label(ent, name, int(value), extra.get(name))
                if label is not None:
                    rec[f"{name}@OData.Community.Display.V1.FormattedValue"] = label
            rec[name] = value
        if ent.primary_id not in rec:
            rec[ent.primary_id] = rid
        return rec


def _etag(data: dict[str, Any]) -> int:
    stamp = data.get("modifiedon") or "1970-01-01T00:00:00Z"
    return _ms(stamp) // 1000


def _skiptoken_last(token: str, primary_id: str) -> str:
    """Last id from a Web API $skiptoken (<cookie pagingcookie="double-encoded cookie"/>)."""
    try:
        root = parse_xml(token)
        inner = unquote(unquote(root.get("pagingcookie") or ""))
        parsed = cookie_last_id(inner, primary_id)
    except (CrmFault, etree.XMLSyntaxError) as exc:
        raise ODataError(400, "Invalid $skiptoken.") from exc
    if parsed is None:
        raise ODataError(400, "Invalid $skiptoken.")
    return parsed[1]


def _as_odata(fault: CrmFault) -> ODataError:
    status = {E_NOT_FOUND: 404, E_MISSING_PRIVILEGE: 403}.get(fault.code, 400)
    return ODataError(status, fault.message, fault.code)


def v2_error(err: ODataError) -> bytes:
    """OData v2 error body."""
    return json.dumps({"error": {"code": "", "message": {"lang": "en-US", "value": err.message}}}).encode()


def webapi_error(err: ODataError) -> bytes:
    """Web API error body; code is the hex form of the CRM ErrorCode."""
    code = f"0x{err.code & 0xFFFFFFFF:08x}"
    return json.dumps({"error": {"code": code, "message": err.message}}).encode()


def query_args(query_string: str) -> dict[str, str]:
    """Query-string arguments (last one wins)."""
    return dict(parse_qsl(query_string, keep_blank_values=True))
