"""The sandbox's SOAP bodies have the element structure of captured real responses."""

from __future__ import annotations

from lxml import etree

from sandbox.testing import SandboxServer

from ..fixtures import dynamics_bytes
from .soapclient import SOAP11, Soap, b, g, request_xml, s

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
Path_ = tuple[tuple[str, str], ...]


def body_paths(envelope: bytes) -> tuple[str, set[Path_]]:
    """(envelope namespace, set of element paths inside Body as (namespace, local name) tuples)."""
    root = etree.fromstring(envelope)
    env_ns = etree.QName(root).namespace
    body = root.find(f"{{{env_ns}}}Body")
    out: set[Path_] = set()

    def walk(el: etree._Element, prefix: Path_) -> None:
        q = etree.QName(el)
        here = (*prefix, (q.namespace or "", q.localname))
        out.add(here)
        for c in el:
            if isinstance(c.tag, str):
                walk(c, here)

    for c in body:
        if isinstance(c.tag, str):
            walk(c, ())
    return env_ns or "", out


def capture(name: str) -> bytes:
    """A captured response kept in tests/fixtures/dynamics/soap; a missing one fails the test."""
    return dynamics_bytes(f"soap/{name}")


def assert_same_shape(capture_name: str, resp_content: bytes) -> None:
    """Same (namespace, local name) paths in the Body; SOAP 1.1 envelope without header."""
    cap_ns, expected = body_paths(capture(capture_name))
    assert cap_ns == SOAP12
    ns, got = body_paths(resp_content)
    assert ns == SOAP11
    assert etree.fromstring(resp_content).find(f"{{{SOAP11}}}Header") is None
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    assert not missing and not extra, f"missing={missing[:5]} extra={extra[:5]}"


def test_who_am_i_shape(soap: Soap) -> None:
    resp = soap.raw("Execute", request_xml("WhoAmI", {}, "q2"))
    assert_same_shape("who_am_i_result.xml", resp.content)


def test_create_and_retrieve_shape(soap: Soap) -> None:
    inner = (
        "<entity><q1:Attributes>"
        + "".join(
            f"<q1:KeyValuePairOfstringanyType><q3:key>{k}</q3:key>{s(v)}</q1:KeyValuePairOfstringanyType>"
            for k, v in {
                "name": "Adventure Works (sample)",
                "address1_city": "Santa Cruz",
                "websiteurl": "http://www.adventure-works.com/",
            }.items()
        )
        + '</q1:Attributes><q1:EntityState q4:nil="true"/><q1:FormattedValues/>'
        "<q1:Id>00000000-0000-0000-0000-000000000000</q1:Id><q1:LogicalName>account</q1:LogicalName>"
        "<q1:RelatedEntities/></entity>"
    )
    resp = soap.raw("Create", inner)
    assert_same_shape("create_response.xml", resp.content)
    rid = etree.fromstring(resp.content).findtext(".//{*}CreateResult")
    cols = "".join(f"<q8:string>{c}</q8:string>" for c in ("accountid", "name", "address1_city", "websiteurl"))
    resp = soap.raw(
        "Retrieve",
        f"<entityName>account</entityName><id>{rid}</id><columnSet><q1:AllColumns>false</q1:AllColumns>"
        f"<q1:Columns>{cols}</q1:Columns></columnSet>",
    )
    assert_same_shape("retrieve_result.xml", resp.content)


def test_fetch_via_execute_shape(soap: Soap) -> None:
    fetch = (
        '<fetch count="3"><entity name="lead"><attribute name="leadid"/><attribute name="lastname"/>'
        '<attribute name="createdon"/><filter><condition attribute="lastname" operator="not-null"/></filter>'
        "</entity></fetch>"
    )
    from xml.sax.saxutils import escape

    param = f'<q3:value q4:type="q1:FetchExpression"><q1:Query>{escape(fetch)}</q1:Query></q3:value>'
    resp = soap.raw("Execute", request_xml("RetrieveMultiple", {"Query": param}))
    assert_same_shape("fetch_xml_response.xml", resp.content)


def test_retrieve_attribute_picklist_shape(sandbox: SandboxServer, soap: Soap) -> None:
    params = {
        "EntityLogicalName": s("lead"),
        "LogicalName": s("leadsourcecode"),
        "MetadataId": g("00000000-0000-0000-0000-000000000000"),
        "RetrieveAsIfPublished": b(True),
    }
    resp = soap.raw("Execute", request_xml("RetrieveAttribute", params))
    assert_same_shape("retrieve_attribute_picklist_response.xml", resp.content)


def test_fault_shape_matches_sender_fault_detail(soap: Soap) -> None:
    resp = soap.raw(
        "Retrieve",
        "<entityName>lead</entityName><id>00000000-0000-0000-0000-00000000abcd</id>"
        "<columnSet><q1:AllColumns>true</q1:AllColumns></columnSet>",
    )
    assert resp.status_code == 500
    _, cap = body_paths(capture("sender_fault.xml"))
    _, got = body_paths(resp.content)
    xrm = "http://schemas.microsoft.com/xrm/2011/Contracts"

    def detail(paths: set[Path_]) -> set[Path_]:
        # Only the OrganizationServiceFault part is shared between SOAP 1.2 and 1.1 faults.
        return {
            p[p.index((xrm, "OrganizationServiceFault")) :] for p in paths if (xrm, "OrganizationServiceFault") in p
        }

    assert detail(cap) == detail(got)
    root = etree.fromstring(resp.content)
    assert root.findtext(f".//{{{SOAP11}}}Fault/faultcode") == "s:Client"
