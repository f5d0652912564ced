"""A tiny SOAP 1.1 client for exercising the sandbox (independent of the portal's connector)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import requests
from lxml import etree
from requests_ntlm import HttpNtlmAuth

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SVC = "http://schemas.microsoft.com/xrm/2011/Contracts/Services"
XRM = "http://schemas.microsoft.com/xrm/2011/Contracts"
CRM = "http://schemas.microsoft.com/crm/2011/Contracts"
EM = "http://schemas.microsoft.com/xrm/2012/Contracts"
KV = "http://schemas.datacontract.org/2004/07/System.Collections.Generic"
XI = "http://www.w3.org/2001/XMLSchema-instance"
XS = "http://www.w3.org/2001/XMLSchema"
SER = "http://schemas.microsoft.com/2003/10/Serialization/"
ARR = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"
ACTION = "http://schemas.microsoft.com/xrm/2011/Contracts/Services/IOrganizationService/"
# Deliberately unusual prefixes: the server must not depend on them.
NS = (
    f'xmlns:q1="{XRM}" xmlns:q2="{CRM}" xmlns:q3="{KV}" xmlns:q4="{XI}" xmlns:q5="{XS}" '
    f'xmlns:q6="{SER}" xmlns:q7="{EM}" xmlns:q8="{ARR}"'
)


def s(v: str) -> str:
    """xs:string value."""
    return f'<q3:value q4:type="q5:string">{escape(v)}</q3:value>'


def i(v: int) -> str:
    """xs:int value."""
    return f'<q3:value q4:type="q5:int">{v}</q3:value>'


def b(v: bool) -> str:
    """xs:boolean value."""
    return f'<q3:value q4:type="q5:boolean">{"true" if v else "false"}</q3:value>'


def g(v: str) -> str:
    """ser:guid value."""
    return f'<q3:value q4:type="q6:guid">{v}</q3:value>'


def opt(v: int) -> str:
    """OptionSetValue."""
    return f'<q3:value q4:type="q1:OptionSetValue"><q1:Value>{v}</q1:Value></q3:value>'


def ref(entity: str, rid: str) -> str:
    """EntityReference."""
    return (
        f'<q3:value q4:type="q1:EntityReference"><q1:Id>{rid}</q1:Id><q1:LogicalName>{entity}</q1:LogicalName>'
        '<q1:Name q4:nil="true"/></q3:value>'
    )


def pairs(attrs: dict[str, str]) -> str:
    """KeyValuePairOfstringanyType list from pre-serialized values."""
    return "".join(
        f"<q1:KeyValuePairOfstringanyType><q3:key>{k}</q3:key>{v}</q1:KeyValuePairOfstringanyType>"
        for k, v in attrs.items()
    )


def entity_xml(tag: str, entity: str, attrs: dict[str, str], rid: str | None = None, extra: str = "") -> str:
    """An Entity element in DataContract order."""
    return (
        f'<{tag}{extra}><q1:Attributes>{pairs(attrs)}</q1:Attributes><q1:EntityState q4:nil="true"/>'
        f"<q1:FormattedValues/><q1:Id>{rid or '00000000-0000-0000-0000-000000000000'}</q1:Id>"
        f"<q1:LogicalName>{entity}</q1:LogicalName><q1:RelatedEntities/></{tag}>"
    )


def request_xml(name: str, params: dict[str, str], type_ns_prefix: str = "q1", tag: str = "request") -> str:
    """An OrganizationRequest element."""
    type_attr = f' q4:type="{type_ns_prefix}:{name}Request"' if type_ns_prefix else ""
    return (
        f"<{tag}{type_attr}><q1:Parameters>{pairs(params)}</q1:Parameters>"
        f'<q1:RequestId q4:nil="true"/><q1:RequestName>{name}</q1:RequestName></{tag}>'
    )


@dataclass
class SoapFault(Exception):
    """A SOAP fault answer."""

    status: int
    code: int
    message: str
    details: dict[str, str]


@dataclass
class Page:
    """One RetrieveMultiple page."""

    entities: list[dict[str, Any]]
    more: bool
    cookie: str | None
    total: int


def _value(el: etree._Element) -> Any:
    if el.get(f"{{{XI}}}nil") == "true":
        return None
    t = el.get(f"{{{XI}}}type") or ""
    prefix, _, name = t.rpartition(":")
    ns = el.nsmap.get(prefix or None)
    if ns == XRM and name in ("OptionSetValue", "Money"):
        return float(el.findtext(f"{{{XRM}}}Value")) if name == "Money" else int(el.findtext(f"{{{XRM}}}Value"))
    if ns == XRM and name == "EntityReference":
        return {"Id": el.findtext(f"{{{XRM}}}Id"), "LogicalName": el.findtext(f"{{{XRM}}}LogicalName")}
    if ns == XS and name == "int":
        return int(el.text)
    if ns == XS and name == "boolean":
        return el.text == "true"
    return el.text


def parse_entity(el: etree._Element) -> dict[str, Any]:
    """Attributes (+ _id, _formatted) of an Entity element."""
    out: dict[str, Any] = {}
    for pair in el.find(f"{{{XRM}}}Attributes"):
        out[pair.findtext(f"{{{KV}}}key")] = _value(pair.find(f"{{{KV}}}value"))
    out["_id"] = el.findtext(f"{{{XRM}}}Id")
    out["_formatted"] = {
        p.findtext(f"{{{KV}}}key"): p.findtext(f"{{{KV}}}value") for p in el.find(f"{{{XRM}}}FormattedValues")
    }
    return out


def results(el: etree._Element) -> dict[str, etree._Element]:
    """Results key → value element."""
    return {
        p.findtext(f"{{{KV}}}key"): p.find(f"{{{KV}}}value")
        for p in el.find(f"{{{XRM}}}Results")
        if isinstance(p.tag, str)
    }


class Soap:
    """Posts SOAP 1.1 requests through one NTLM session."""

    def __init__(self, url: str, username: str, password: str) -> None:
        """Open an NTLM session."""
        self.url = url
        self.session = requests.Session()
        self.session.auth = HttpNtlmAuth(username, password)

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def raw(self, op: str, inner: str) -> requests.Response:
        """Send an operation; no interpretation."""
        body = f'<s:Envelope xmlns:s="{SOAP11}"><s:Body><{op} xmlns="{SVC}" {NS}>{inner}</{op}></s:Body></s:Envelope>'
        return self.session.post(
            self.url,
            data=body.encode("utf-8"),
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": ACTION + op},
            timeout=60,
        )

    def call(self, op: str, inner: str) -> etree._Element:
        """Send and return the response element (first child of Body) or raise SoapFault."""
        resp = self.raw(op, inner)
        root = etree.fromstring(resp.content)
        body = root.find(f"{{{SOAP11}}}Body")
        first = body[0]
        if etree.QName(first).localname == "Fault":
            f = first.find(f"detail/{{{XRM}}}OrganizationServiceFault")
            details = {
                p.findtext(f"{{{KV}}}key"): p.findtext(f"{{{KV}}}value") for p in f.find(f"{{{XRM}}}ErrorDetails")
            }
            raise SoapFault(
                resp.status_code, int(f.findtext(f"{{{XRM}}}ErrorCode")), f.findtext(f"{{{XRM}}}Message"), details
            )
        assert resp.status_code == 200, resp.text
        return first

    def execute(self, name: str, params: dict[str, str], family: str = "q1") -> etree._Element:
        """Execute a request; returns ExecuteResult."""
        return self.call("Execute", request_xml(name, params, family))[0]

    # ------------------------------------------------------------ conveniences

    def who_am_i(self) -> dict[str, str]:
        """WhoAmI results."""
        res = self.execute("WhoAmI", {}, "q2")
        return {k: v.text for k, v in results(res).items()}

    def create(self, entity: str, attrs: dict[str, str], rid: str | None = None) -> str:
        """Create → id."""
        return self.call("Create", entity_xml("entity", entity, attrs, rid)).findtext(f"{{{SVC}}}CreateResult")

    def update(self, entity: str, rid: str, attrs: dict[str, str]) -> None:
        """Update."""
        self.call("Update", entity_xml("entity", entity, attrs, rid))

    def delete(self, entity: str, rid: str) -> None:
        """Delete."""
        self.call("Delete", f"<entityName>{entity}</entityName><id>{rid}</id>")

    def retrieve(self, entity: str, rid: str, columns: list[str] | None = None) -> dict[str, Any]:
        """Retrieve → attributes."""
        if columns is None:
            cs = "<columnSet><q1:AllColumns>true</q1:AllColumns><q1:Columns/></columnSet>"
        else:
            cols = "".join(f"<q8:string>{c}</q8:string>" for c in columns)
            cs = f"<columnSet><q1:AllColumns>false</q1:AllColumns><q1:Columns>{cols}</q1:Columns></columnSet>"
        res = self.call("Retrieve", f"<entityName>{entity}</entityName><id>{rid}</id>{cs}")
        return parse_entity(res[0])

    def fetch(self, fetch_xml: str, via_execute: bool = False) -> Page:
        """RetrieveMultiple with a FetchExpression."""
        query = f'<query q4:type="q1:FetchExpression"><q1:Query>{escape(fetch_xml)}</q1:Query></query>'
        if via_execute:
            param = f'<q3:value q4:type="q1:FetchExpression"><q1:Query>{escape(fetch_xml)}</q1:Query></q3:value>'
            coll = results(self.execute("RetrieveMultiple", {"Query": param}))["EntityCollection"]
        else:
            coll = self.call("RetrieveMultiple", query)[0]
        return self._page(coll)

    def query_expression(self, qe_inner: str) -> Page:
        """RetrieveMultiple with a QueryExpression (children given in order)."""
        coll = self.call("RetrieveMultiple", f'<query q4:type="q1:QueryExpression">{qe_inner}</query>')[0]
        return self._page(coll)

    @staticmethod
    def _page(coll: etree._Element) -> Page:
        ents = [parse_entity(e) for e in coll.find(f"{{{XRM}}}Entities")]
        cookie_el = coll.find(f"{{{XRM}}}PagingCookie")
        cookie = None if cookie_el is None or cookie_el.get(f"{{{XI}}}nil") == "true" else cookie_el.text
        return Page(
            ents,
            coll.findtext(f"{{{XRM}}}MoreRecords") == "true",
            cookie,
            int(coll.findtext(f"{{{XRM}}}TotalRecordCount")),
        )


def new_email(tag: str) -> str:
    """A unique address for test isolation on a shared server."""
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"
