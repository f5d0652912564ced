"""Safe parsing, value round-trips, entity serialization, escaping, paging and ExecuteMultiple."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from lxml import etree

from portal.connectors.dynamics.errors import (
    AuthFailedError,
    BatchTooLargeError,
    DuplicateError,
    FaultError,
    NotDynamicsError,
    NotFoundError,
    PrivilegeError,
)
from portal.connectors.dynamics.soap import (
    CreateRequest,
    OrganizationService,
    SetStateRequest,
    UpdateRequest,
    fetch_xml,
    set_fetch_paging,
)
from portal.connectors.dynamics.xml import (
    KV,
    SERVICES,
    XRM,
    XSD,
    XSI,
    Entity,
    EntityReference,
    Money,
    OptionSetValue,
    UnsafeXmlError,
    build_entity,
    parse_datetime,
    parse_entity,
    parse_envelope,
    parse_xml,
    q,
    to_bytes,
)

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><x>&xxe;</x></s:Body></s:Envelope>"""

LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<lolz>&lol4;</lolz>"""


@pytest.mark.parametrize("doc", [XXE, LAUGHS, b'<!DOCTYPE html><html></html>',
                                 b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><a/>'])
def test_doctype_documents_are_refused(doc: bytes) -> None:
    with pytest.raises(UnsafeXmlError):
        parse_xml(doc)


def test_doctype_in_utf16_is_refused() -> None:
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'.encode("utf-16")
    with pytest.raises(UnsafeXmlError):
        parse_xml(doc)


def test_html_and_garbage_are_not_dynamics() -> None:
    with pytest.raises(UnsafeXmlError) as info:
        parse_xml(b"<html><body>IIS</body>")
    assert info.value.code == "not_dynamics"
    with pytest.raises(NotDynamicsError):
        parse_envelope(b"<root/>")


def test_soap11_fault_with_service_fault() -> None:
    doc = b"""<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
 <faultcode>s:Client</faultcode><faultstring xml:lang="en-US">lead With Id = 1 Does Not Exist</faultstring>
 <detail><OrganizationServiceFault xmlns="http://schemas.microsoft.com/xrm/2011/Contracts"
   xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <ErrorCode>-2147220969</ErrorCode><ErrorDetails xmlns:b="http://schemas.datacontract.org/2004/07/System.Collections.Generic"/>
  <Message>lead With Id = 1 Does Not Exist</Message><Timestamp>2016-01-01T00:00:00Z</Timestamp>
  <InnerFault i:nil="true"/><TraceText i:nil="true"/></OrganizationServiceFault></detail>
</s:Fault></s:Body></s:Envelope>"""
    with pytest.raises(NotFoundError) as info:
        parse_envelope(doc)
    assert info.value.error_code == -2147220969
    assert info.value.code == "not_found"


def _soap11_fault(code: int, message: str, details: str = "") -> bytes:
    root = etree.Element(q("http://schemas.xmlsoap.org/soap/envelope/", "Envelope"),
                         nsmap={"s": "http://schemas.xmlsoap.org/soap/envelope/"})
    body = etree.SubElement(root, q("http://schemas.xmlsoap.org/soap/envelope/", "Body"))
    fault = etree.SubElement(body, q("http://schemas.xmlsoap.org/soap/envelope/", "Fault"))
    etree.SubElement(fault, "faultcode").text = "s:Client"
    etree.SubElement(fault, "faultstring").text = message
    detail = etree.SubElement(fault, "detail")
    osf = etree.SubElement(detail, q(XRM, "OrganizationServiceFault"), nsmap={None: XRM, "b": KV, "i": XSI})
    etree.SubElement(osf, q(XRM, "ErrorCode")).text = str(code)
    ed = etree.SubElement(osf, q(XRM, "ErrorDetails"))
    if details:
        pair = etree.SubElement(ed, q(XRM, "KeyValuePairOfstringanyType"))
        etree.SubElement(pair, q(KV, "key")).text = details
        v = etree.SubElement(pair, q(KV, "value"), nsmap={"xs": XSD})
        v.set(q(XSI, "type"), "xs:int")
        v.text = "1000"
    etree.SubElement(osf, q(XRM, "Message")).text = message
    return etree.tostring(root)


def test_privilege_fault_names_the_privilege() -> None:
    doc = _soap11_fault(-2147220960, "SecLib::AccessCheckEx failed. Returned hr = -2147220960, "
                        "ObjectID: , OwnerId: x, OwnerIdType: 8 and CallingUser: y. ObjectTypeCode: 4, "
                        "objectBusinessUnitId: z, AccessRights: prvReadLead ")
    with pytest.raises(PrivilegeError) as info:
        parse_envelope(doc)
    assert info.value.privilege == "prvReadLead"
    assert "prvReadLead" in info.value.action


def test_duplicate_and_max_batch_faults() -> None:
    with pytest.raises(DuplicateError):
        parse_envelope(_soap11_fault(-2147220937, "Cannot insert duplicate key."))
    with pytest.raises(BatchTooLargeError):
        parse_envelope(_soap11_fault(-2147220891, "The request batch is too big.", details="MaxBatchSize"))


def test_parse_datetime_forms() -> None:
    assert parse_datetime("2014-02-17T23:44:47.6574981Z") == datetime(2014, 2, 17, 23, 44, 47, 657498, tzinfo=UTC)
    assert parse_datetime("2016-05-01T15:00:00+02:00") == datetime(2016, 5, 1, 13, 0, tzinfo=UTC)
    assert parse_datetime("0001-01-01T00:00:00").tzinfo is UTC


ALL_VALUES = {
    "subject": "Tom & Jerry <3 \"quotes\" 'apos'",
    "donotemail": True,
    "numberofemployees": 42,
    "big": 2**40,
    "exchangerate": Decimal("1.2500000000"),
    "score": 0.5,
    "createdon": datetime(2016, 5, 1, 15, 0, tzinfo=timezone(timedelta(hours=2))),
    "leadsourcecode": OptionSetValue(100000000),
    "revenue": Money(Decimal("1500.00")),
    "campaignid": EntityReference("4E87D619-838A-E311-89A7-6C3BE5A80184", "campaign"),
    "parentid": uuid.UUID("1bfa3886-df7e-468c-8435-b5adfb0441ed"),
    "description": None,
}


def test_entity_serialization_order_and_types() -> None:
    el = build_entity("lead", ALL_VALUES)
    assert [etree.QName(c).localname for c in el] == [
        "Attributes", "EntityState", "FormattedValues", "Id", "LogicalName", "RelatedEntities"
    ]
    assert all(etree.QName(c).namespace == XRM for c in el)
    assert el.findtext(q(XRM, "Id")) == "00000000-0000-0000-0000-000000000000"
    types = {}
    for pair in el.find(q(XRM, "Attributes")):
        value = pair.find(q(KV, "value"))
        t = value.get(q(XSI, "type"))
        if t:
            prefix, local = t.split(":")
            types[pair.findtext(q(KV, "key"))] = (value.nsmap[prefix], local)
        else:
            types[pair.findtext(q(KV, "key"))] = value.get(q(XSI, "nil"))
    assert types["subject"] == (XSD, "string")
    assert types["donotemail"] == (XSD, "boolean")
    assert types["numberofemployees"] == (XSD, "int")
    assert types["big"] == (XSD, "long")
    assert types["exchangerate"] == (XSD, "decimal")
    assert types["score"] == (XSD, "double")
    assert types["createdon"] == (XSD, "dateTime")
    assert types["leadsourcecode"] == (XRM, "OptionSetValue")
    assert types["revenue"] == (XRM, "Money")
    assert types["campaignid"] == (XRM, "EntityReference")
    assert types["parentid"] == ("http://schemas.microsoft.com/2003/10/Serialization/", "guid")
    assert types["description"] == "true"
    ref = next(p for p in el.find(q(XRM, "Attributes")) if p.findtext(q(KV, "key")) == "campaignid")
    assert [etree.QName(c).localname for c in ref.find(q(KV, "value"))] == ["Id", "LogicalName", "Name"]


def test_entity_round_trip() -> None:
    el = build_entity("lead", ALL_VALUES, "1BFA3886-DF7E-468C-8435-B5ADFB0441ED")
    back = parse_entity(parse_xml(to_bytes(el)))
    assert back.logical_name == "lead"
    assert back.id == "1bfa3886-df7e-468c-8435-b5adfb0441ed"
    a = back.attributes
    assert a["subject"] == ALL_VALUES["subject"]
    assert a["donotemail"] is True
    assert a["numberofemployees"] == 42 and a["big"] == 2**40
    assert a["exchangerate"] == Decimal("1.2500000000")
    assert a["score"] == 0.5
    assert a["createdon"] == datetime(2016, 5, 1, 13, 0, tzinfo=UTC)
    assert a["leadsourcecode"] == OptionSetValue(100000000)
    assert a["revenue"] == Money(Decimal("1500.00"))
    assert a["campaignid"] == EntityReference("4e87d619-838a-e311-89a7-6c3be5a80184", "campaign")
    assert a["parentid"] == "1bfa3886-df7e-468c-8435-b5adfb0441ed"
    assert a["description"] is None
    assert b"2016-05-01T13:00:00Z" in to_bytes(el)


def test_unsupported_value_type_is_refused() -> None:
    with pytest.raises(TypeError):
        build_entity("lead", {"x": object()})


EMAILS = ["o'brien+x@example.com", "a&b<c>@example.com", 'q"uote@example.com']


@pytest.mark.parametrize("email", EMAILS)
def test_fetchxml_escaping_round_trips(kit, email: str) -> None:
    fetch = fetch_xml("lead", ["leadid", "statecode"],
                      [("emailaddress1", "eq", email), ("emailaddress2", "eq", email)],
                      page_size=50, filter_type="or")
    empty = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
             b'<RetrieveMultipleResponse xmlns="http://schemas.microsoft.com/xrm/2011/Contracts/Services">'
             b'<RetrieveMultipleResult xmlns:a="http://schemas.microsoft.com/xrm/2011/Contracts"><a:Entities/>'
             b'<a:MoreRecords>false</a:MoreRecords></RetrieveMultipleResult></RetrieveMultipleResponse>'
             b'</s:Body></s:Envelope>')
    t = kit.FakeTransport(responses=[kit.http_response(empty)])
    OrganizationService(t).retrieve_multiple(fetch)
    envelope = parse_xml(t.calls[0]["data"])
    query_text = envelope.findtext(f".//{q(SERVICES, 'query')}/{q(XRM, 'Query')}")
    inner = parse_xml(query_text)
    values = [c.get("value") for c in inner.iter("condition")]
    assert values == [email, email]
    assert inner.find("entity/filter").get("type") == "or"
    if "&" in email:
        # Escaped once inside FetchXML, then again as the text of <Query>.
        assert b"&amp;amp;" in t.calls[0]["data"]


def test_fetch_xml_in_values_order_and_links() -> None:
    text = fetch_xml("contact", ["contactid"], [("statecode", "eq", 0), ("emailaddress1", "in", ["a@b.c", "d&e@f.g"]),
                                                ("emailaddress1", "not-null")],
                     order=[("modifiedon", True), "contactid"],
                     links=[{"name": "listmember", "from": "entityid", "to": "contactid", "intersect": True,
                             "conditions": [("listid", "eq", "5f1a")]}])
    root = parse_xml(text)
    assert [v.text for v in root.iter("value")] == ["a@b.c", "d&e@f.g"]
    assert [o.get("descending") for o in root.iter("order")] == ["true", "false"]
    link = root.find("entity/link-entity")
    assert (link.get("from"), link.get("to"), link.get("intersect")) == ("entityid", "contactid", "true")
    assert root.find("entity/filter/condition[@operator='not-null']").get("value") is None


def test_paging_cookie_is_escaped_into_the_attribute() -> None:
    cookie = '<cookie page="1"><leadid last="{B4F2}" first="{9C27}" /><x v="a&amp;b"/></cookie>'
    text = set_fetch_paging(fetch_xml("lead", ["leadid"]), 2, 500, cookie)
    root = parse_xml(text)
    assert root.get("page") == "2"
    assert root.get("count") == "500"
    assert root.get("paging-cookie") == cookie


def _page(ids: list[str], more: bool, cookie: str | None) -> bytes:
    s, a = "http://schemas.xmlsoap.org/soap/envelope/", XRM
    root = etree.Element(q(s, "Envelope"), nsmap={"s": s})
    body = etree.SubElement(root, q(s, "Body"))
    resp = etree.SubElement(body, q(SERVICES, "RetrieveMultipleResponse"), nsmap={None: SERVICES})
    result = etree.SubElement(resp, q(SERVICES, "RetrieveMultipleResult"), nsmap={"a": a, "i": XSI})
    ents = etree.SubElement(result, q(a, "Entities"))
    for i in ids:
        e = etree.SubElement(ents, q(a, "Entity"))
        etree.SubElement(e, q(a, "Attributes"))
        etree.SubElement(e, q(a, "Id")).text = i
        etree.SubElement(e, q(a, "LogicalName")).text = "lead"
    etree.SubElement(result, q(a, "EntityName")).text = "lead"
    etree.SubElement(result, q(a, "MoreRecords")).text = "true" if more else "false"
    pc = etree.SubElement(result, q(a, "PagingCookie"))
    if cookie is None:
        pc.set(q(XSI, "nil"), "true")
    else:
        pc.text = cookie
    return etree.tostring(root)


def test_iter_fetch_follows_paging_cookies(kit) -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(1, 6)]
    cookie1 = f'<cookie page="1"><leadid last="{{{ids[1]}}}" first="{{{ids[0]}}}" /></cookie>'
    t = kit.FakeTransport(responses=[
        kit.http_response(_page(ids[:2], True, cookie1)),
        kit.http_response(_page(ids[2:4], True, None)),
        kit.http_response(_page(ids[4:], False, None)),
    ])
    service = OrganizationService(t)
    seen = [e.id for e in service.iter_fetch(fetch_xml("lead", ["leadid"], order=["leadid"]), page_size=2)]
    assert seen == ids
    assert service.pages == 3
    fetches = [parse_xml(parse_xml(c["data"]).findtext(f".//{q(XRM, 'Query')}")) for c in t.calls]
    assert [f.get("page") for f in fetches] == ["1", "2", "3"]
    assert [f.get("count") for f in fetches] == ["2", "2", "2"]
    assert fetches[0].get("paging-cookie") is None
    assert fetches[1].get("paging-cookie") == cookie1
    assert fetches[2].get("paging-cookie") is None  # no cookie came back: page by number alone


def _execute_multiple_response(items: list[tuple[int, str | None, tuple[int, str] | None]]) -> bytes:
    s, a, em = "http://schemas.xmlsoap.org/soap/envelope/", XRM, "http://schemas.microsoft.com/xrm/2012/Contracts"
    g = "http://schemas.microsoft.com/2003/10/Serialization/"
    root = etree.Element(q(s, "Envelope"), nsmap={"s": s})
    body = etree.SubElement(root, q(s, "Body"))
    resp = etree.SubElement(body, q(SERVICES, "ExecuteResponse"), nsmap={None: SERVICES})
    result = etree.SubElement(resp, q(SERVICES, "ExecuteResult"),
                              nsmap={"a": a, "i": XSI, "b": KV, "em": em, "xs": XSD, "g": g})
    result.set(q(XSI, "type"), "a:ExecuteMultipleResponse")
    etree.SubElement(result, q(a, "ResponseName")).text = "ExecuteMultiple"
    results = etree.SubElement(result, q(a, "Results"))
    pair = etree.SubElement(results, q(a, "KeyValuePairOfstringanyType"))
    etree.SubElement(pair, q(KV, "key")).text = "IsFaulted"
    v = etree.SubElement(pair, q(KV, "value"))
    v.set(q(XSI, "type"), "xs:boolean")
    v.text = "true" if any(f for _, _, f in items) else "false"
    pair = etree.SubElement(results, q(a, "KeyValuePairOfstringanyType"))
    etree.SubElement(pair, q(KV, "key")).text = "Responses"
    coll = etree.SubElement(pair, q(KV, "value"))
    coll.set(q(XSI, "type"), "em:ExecuteMultipleResponseItemCollection")
    for index, new_id, fault in items:
        item = etree.SubElement(coll, q(em, "ExecuteMultipleResponseItem"))
        f = etree.SubElement(item, q(em, "Fault"))
        if fault is None:
            f.set(q(XSI, "nil"), "true")
        else:
            etree.SubElement(f, q(a, "ErrorCode")).text = str(fault[0])
            etree.SubElement(f, q(a, "Message")).text = fault[1]
        etree.SubElement(item, q(em, "RequestIndex")).text = str(index)
        r = etree.SubElement(item, q(em, "Response"))
        if fault is not None:
            r.set(q(XSI, "nil"), "true")
            continue
        etree.SubElement(r, q(a, "ResponseName")).text = "Create" if new_id else "Update"
        rr = etree.SubElement(r, q(a, "Results"))
        if new_id:
            p = etree.SubElement(rr, q(a, "KeyValuePairOfstringanyType"))
            etree.SubElement(p, q(KV, "key")).text = "id"
            gv = etree.SubElement(p, q(KV, "value"))
            gv.set(q(XSI, "type"), "g:guid")
            gv.text = new_id
    return etree.tostring(root)


def test_execute_multiple_request_and_results(kit) -> None:
    lead_id = "4e87d619-838a-e311-89a7-6c3be5a80184"
    new_id = "c4944f99-b5a0-e311-b64f-6c3be5a87df0"
    reqs = [
        CreateRequest("lead", {"lastname": "Doe", "emailaddress1": "a&b<c>@example.com"}),
        UpdateRequest("lead", lead_id, {"firstname": "Jo"}),
        SetStateRequest("lead", lead_id, 2, 4),
    ]
    response = _execute_multiple_response([(0, new_id, None), (1, None, (-2147220969, "lead Does Not Exist")),
                                           (2, None, None)])
    t = kit.FakeTransport(responses=[kit.http_response(response)])
    results = OrganizationService(t).execute_multiple(reqs)
    assert [(r.index, r.ok) for r in results] == [(0, True), (1, False), (2, True)]
    assert results[0].id == new_id
    assert isinstance(results[1].error, NotFoundError)
    assert results[2].id == lead_id
    sent = parse_xml(t.calls[0]["data"])
    em = "http://schemas.microsoft.com/xrm/2012/Contracts"
    names = [r.findtext(q(XRM, "RequestName")) for r in sent.iter(q(em, "OrganizationRequest"))]
    assert names == ["Create", "Update", "SetState"]
    assert sent.findtext(f".//{q(em, 'ContinueOnError')}") == "true"
    assert sent.findtext(f".//{q(em, 'ReturnResponses')}") == "true"
    emails = [v.text for v in sent.iter(q(KV, "value")) if v.text == "a&b<c>@example.com"]
    assert emails == ["a&b<c>@example.com"]


def test_execute_multiple_stop_on_error_marks_rest_skipped(kit) -> None:
    reqs = [CreateRequest("lead", {"lastname": str(i)}) for i in range(4)]
    response = _execute_multiple_response([(1, None, (-2147220937, "duplicate"))])
    t = kit.FakeTransport(responses=[kit.http_response(response)])
    results = OrganizationService(t).execute_multiple(reqs, continue_on_error=False, return_responses=False)
    assert [(r.ok, r.skipped) for r in results] == [(True, False), (False, False), (False, True), (False, True)]
    assert isinstance(results[1].error, DuplicateError)


def test_execute_multiple_refuses_big_batches_and_warms_up(kit) -> None:
    t = kit.FakeTransport(responses=[])
    with pytest.raises(BatchTooLargeError):
        OrganizationService(t).execute_multiple([CreateRequest("lead", {})] * 1001)
    assert t.calls == []
    who = kit.fixture_bytes("soap/who_am_i_result.xml")
    t = kit.FakeTransport(responses=[kit.http_response(who), kit.http_response(_execute_multiple_response([]))],
                          authenticated=False)
    OrganizationService(t).execute_multiple([CreateRequest("lead", {"lastname": "x"})])
    assert b"WhoAmI" in t.calls[0]["data"] and b"ExecuteMultiple" in t.calls[1]["data"]


def test_set_state_and_option_insert_requests(kit) -> None:
    ok = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
          b'<ExecuteResponse xmlns="http://schemas.microsoft.com/xrm/2011/Contracts/Services">'
          b'<ExecuteResult xmlns:a="http://schemas.microsoft.com/xrm/2011/Contracts" '
          b'xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns:b="' + KV.encode() + b'" '
          b'xmlns:x="http://www.w3.org/2001/XMLSchema"><a:ResponseName>X</a:ResponseName><a:Results>'
          b'<a:KeyValuePairOfstringanyType><b:key>NewOptionValue</b:key><b:value i:type="x:int">100000001</b:value>'
          b'</a:KeyValuePairOfstringanyType></a:Results></ExecuteResult></ExecuteResponse></s:Body></s:Envelope>')
    t = kit.FakeTransport(responses=[kit.http_response(ok) for _ in range(3)])
    service = OrganizationService(t)
    service.set_state("lead", "4e87d619-838a-e311-89a7-6c3be5a80184", 2, 4)
    assert service.insert_option_value("ZiftONE") == 100000001
    names = [parse_xml(c["data"]).findtext(f".//{q(XRM, 'RequestName')}") for c in t.calls]
    assert names == ["SetState", "InsertOptionValue", "PublishXml"]
    label = next(parse_xml(t.calls[1]["data"]).iter(q(XRM, "LocalizedLabel")))
    assert (label.findtext(q(XRM, "Label")), label.findtext(q(XRM, "LanguageCode"))) == ("ZiftONE", "1033")
    publish = parse_xml(t.calls[2]["data"])
    param = parse_xml(next(v.text for v in publish.iter(q(KV, "value"))))
    assert param.findtext("entities/entity") == "lead"


def test_http_status_mapping(kit) -> None:
    from portal.connectors.dynamics.errors import ServerBusyError, ServerError

    cases = [
        (kit.http_response(b"<html>IIS 404</html>", status=404, content_type="text/html"), NotDynamicsError),
        (kit.http_response(b"<html>welcome</html>", status=200, content_type="text/html"), NotDynamicsError),
        (kit.http_response(b"", status=503, content_type=""), ServerBusyError),
        (kit.http_response(b"Bad gateway", status=502, content_type="text/plain"), ServerError),
        (kit.http_response(b"", status=415, content_type=""), NotDynamicsError),
        (kit.http_response(_soap11_fault(-2146233088, "Server Busy"), status=500), ServerBusyError),
        (kit.http_response(_soap11_fault(-2147180286, "The ticket specified for authentication is invalid."),
                           status=500), AuthFailedError),
        (kit.http_response(_soap11_fault(-2147220989, "Invalid argument."), status=500), FaultError),
    ]
    for response, error in cases:
        t = kit.FakeTransport(responses=[response])
        with pytest.raises(error):
            OrganizationService(t).who_am_i()


def test_entity_dataclass_get() -> None:
    e = Entity("lead", None, {"a": 1})
    assert e.get("a") == 1 and e.get("b", 2) == 2
