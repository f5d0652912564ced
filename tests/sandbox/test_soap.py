"""Organization service over SOAP 1.1: CRUD, queries, messages and real fault codes."""

from __future__ import annotations

import uuid
from xml.sax.saxutils import quoteattr

import pytest
from lxml import etree

from sandbox.testing import SandboxServer

from .soapclient import (
    EM,
    KV,
    XRM,
    Soap,
    SoapFault,
    b,
    entity_xml,
    g,
    i,
    new_email,
    opt,
    pairs,
    ref,
    request_xml,
    results,
    s,
)


def test_create_then_retrieve(soap: Soap) -> None:
    email = new_email("create")
    rid = soap.create(
        "lead",
        {
            "firstname": s("Pat"),
            "lastname": s("Doe"),
            "emailaddress1": s(email),
            "leadsourcecode": opt(8),
            "donotemail": b(True),
        },
    )
    rec = soap.retrieve(
        "lead",
        rid,
        [
            "firstname",
            "lastname",
            "fullname",
            "emailaddress1",
            "leadsourcecode",
            "statecode",
            "statuscode",
            "donotemail",
            "createdon",
        ],
    )
    assert rec["_id"] == rid
    assert rec["fullname"] == "Pat Doe"
    assert rec["emailaddress1"] == email
    assert rec["leadsourcecode"] == 8
    assert rec["_formatted"]["leadsourcecode"] == "Web"
    assert (rec["statecode"], rec["statuscode"]) == (0, 1)
    assert rec["_formatted"]["statecode"] == "Open"
    assert rec["createdon"].endswith("Z")


def test_escaped_values_round_trip(soap: Soap) -> None:
    for email in ("o'brien+x@example.com", "a&b<c>@example.com"):
        rid = soap.create("contact", {"lastname": s("Quote & <Co>"), "emailaddress1": s(email)})
        assert soap.retrieve("contact", rid)["emailaddress1"] == email
        fetch = (
            '<fetch><entity name="contact"><attribute name="emailaddress1"/><filter>'
            f'<condition attribute="emailaddress1" operator="eq" value={quoteattr(email)}/>'
            "</filter></entity></fetch>"
        )
        page = soap.fetch(fetch)
        assert [e["_id"] for e in page.entities] == [rid]
        # Email matching is case-insensitive, as on SQL Server's default collation.
        upper = fetch.replace(quoteattr(email), quoteattr(email.upper()))
        assert [e["_id"] for e in soap.fetch(upper).entities] == [rid]


def test_update_and_delete(soap: Soap) -> None:
    rid = soap.create("lead", {"lastname": s("Before")})
    soap.update("lead", rid, {"lastname": s("After"), "jobtitle": s("CTO")})
    rec = soap.retrieve("lead", rid)
    assert (rec["lastname"], rec["jobtitle"], rec["fullname"]) == ("After", "CTO", "After")
    soap.delete("lead", rid)
    with pytest.raises(SoapFault) as err:
        soap.retrieve("lead", rid)
    assert err.value.code == -2147220969
    assert err.value.message == f"lead With Id = {rid} Does Not Exist"
    assert err.value.status == 500


def test_faults_for_bad_writes(soap: Soap) -> None:
    with pytest.raises(SoapFault) as err:
        soap.create("lead", {"lastname": s("X"), "leadsourcecode": opt(4242)})
    assert err.value.code == -2147204326
    with pytest.raises(SoapFault) as err:
        soap.create("lead", {"lastname": s("X"), "ticketsymbol": s("Y")})
    assert err.value.code == -2147217149
    assert "ticketsymbol" in err.value.message
    rid = str(uuid.uuid4())
    soap.create("lead", {"lastname": s("One")}, rid=rid)
    with pytest.raises(SoapFault) as err:
        soap.create("lead", {"lastname": s("Two")}, rid=rid)
    assert err.value.code == -2147220937
    with pytest.raises(SoapFault) as err:
        soap.create("lead", {"campaignid": ref("campaign", str(uuid.uuid4()))})
    assert err.value.code == -2147220969


def test_set_state_rules(soap: Soap) -> None:
    rid = soap.create("lead", {"lastname": s("State")})
    moniker = ref("lead", rid)
    with pytest.raises(SoapFault):
        soap.execute("SetState", {"EntityMoniker": moniker, "State": opt(1), "Status": opt(5)}, "q2")
    soap.execute("SetState", {"EntityMoniker": moniker, "State": opt(2), "Status": opt(6)}, "q2")
    rec = soap.retrieve("lead", rid, ["statecode", "statuscode"])
    assert (rec["statecode"], rec["statuscode"]) == (2, 6)
    assert rec["_formatted"]["statuscode"] == "No Longer Interested"


def test_message_namespace_must_match_family(soap: Soap) -> None:
    with pytest.raises(SoapFault):
        soap.execute("WhoAmI", {}, "q1")
    version = results(soap.execute("RetrieveVersion", {}, "q2"))["Version"].text
    assert version.startswith("8.")


def test_retrieve_attribute_insert_option_publish(sandbox: SandboxServer, soap: Soap) -> None:
    def options() -> dict[str, int]:
        res = soap.execute(
            "RetrieveAttribute",
            {
                "EntityLogicalName": s("lead"),
                "LogicalName": s("leadsourcecode"),
                "MetadataId": g("00000000-0000-0000-0000-000000000000"),
                "RetrieveAsIfPublished": b(True),
            },
        )
        meta = results(res)["AttributeMetadata"]
        md = "http://schemas.microsoft.com/xrm/2011/Metadata"
        out = {}
        for o in meta.iter(f"{{{md}}}OptionMetadata"):
            label = o.find(f"{{{md}}}Label/{{{XRM}}}UserLocalizedLabel/{{{XRM}}}Label").text
            out[label] = int(o.findtext(f"{{{md}}}Value"))
        return out

    opts = options()
    assert opts["Advertisement"] == 1 and opts["Other"] == 10
    assert opts["ZiftONE"] >= 100_000_000
    label = (
        '<q3:value q4:type="q1:Label"><q1:LocalizedLabels><q1:LocalizedLabel><q1:Label>Extra Source</q1:Label>'
        "<q1:LanguageCode>1033</q1:LanguageCode></q1:LocalizedLabel></q1:LocalizedLabels></q3:value>"
    )
    res = soap.execute(
        "InsertOptionValue",
        {"EntityLogicalName": s("lead"), "AttributeLogicalName": s("leadsourcecode"), "Label": label},
    )
    new_value = int(results(res)["NewOptionValue"].text)
    assert new_value == opts["ZiftONE"] + 1
    soap.execute(
        "PublishXml",
        {
            "ParameterXml": s(
                "<importexportxml><entities><entity>lead</entity></entities><nodes/><securityroles/><settings/>"
                "<workflows/></importexportxml>"
            )
        },
        "q2",
    )
    assert options()["Extra Source"] == new_value
    rid = soap.create("lead", {"lastname": s("Custom"), "leadsourcecode": opt(new_value)})
    assert soap.retrieve("lead", rid, ["leadsourcecode"])["_formatted"]["leadsourcecode"] == "Extra Source"


def test_static_list_members_via_link_entity(soap: Soap) -> None:
    list_id = soap.create("list", {"listname": s("Test static"), "type": b(False), "createdfromcode": opt(4)})
    members = [soap.create("lead", {"lastname": s(f"M{n}"), "emailaddress1": s(new_email("m"))}) for n in range(3)]
    soap.create("lead", {"lastname": s("Outsider")})
    for member in members:
        res = soap.execute("AddMemberList", {"ListId": g(list_id), "EntityId": g(member)}, "q2")
        assert results(res)["Id"].text
    fetch = (
        '<fetch count="50"><entity name="lead"><attribute name="emailaddress1"/>'
        '<link-entity name="listmember" from="entityid" to="leadid" intersect="true" visible="false">'
        f'<filter><condition attribute="listid" operator="eq" value="{list_id}"/></filter></link-entity>'
        "</entity></fetch>"
    )
    page = soap.fetch(fetch)
    assert sorted(e["_id"] for e in page.entities) == sorted(members)
    assert soap.retrieve("list", list_id, ["membercount"])["membercount"] == 3


def test_dynamic_list_query_runs(soap: Soap) -> None:
    page = soap.fetch(
        '<fetch><entity name="list"><attribute name="query"/><attribute name="createdfromcode"/>'
        '<filter><condition attribute="type" operator="eq" value="1"/></filter></entity></fetch>'
    )
    assert page.entities
    for lst in page.entities:
        assert lst["createdfromcode"] in (2, 4)
        members = soap.fetch(lst["query"])
        assert members.entities


def test_fetch_operators_and_activity_union(soap: Soap) -> None:
    lead = soap.create("lead", {"lastname": s("Busy"), "companyname": s("Acme Widgets")})
    soap.create("task", {"subject": s("Follow up"), "regardingobjectid": ref("lead", lead), "prioritycode": opt(2)})
    soap.create("phonecall", {"subject": s("Ring"), "regardingobjectid": ref("lead", lead)})
    page = soap.fetch(
        '<fetch><entity name="activitypointer"><attribute name="subject"/><attribute name="activitytypecode"/>'
        '<attribute name="prioritycode"/><attribute name="statecode"/><attribute name="scheduledend"/>'
        f'<filter><condition attribute="regardingobjectid" operator="eq" value="{{{lead.upper()}}}"/></filter>'
        '<order attribute="subject"/></entity></fetch>'
    )
    assert [(e["subject"], e["activitytypecode"]) for e in page.entities] == [
        ("Follow up", "task"),
        ("Ring", "phonecall"),
    ]
    like = soap.fetch(
        '<fetch><entity name="lead"><filter type="or">'
        '<condition attribute="companyname" operator="like" value="acme%"/>'
        '<condition attribute="lastname" operator="in"><value>Nope</value></condition>'
        "</filter></entity></fetch>"
    )
    assert lead in [e["_id"] for e in like.entities]


def test_query_expression(soap: Soap) -> None:
    email = new_email("qe")
    rid = soap.create("lead", {"lastname": s("QE"), "emailaddress1": s(email)})
    page = soap.query_expression(
        "<q1:ColumnSet><q1:AllColumns>false</q1:AllColumns><q1:Columns><q8:string>emailaddress1</q8:string>"
        "</q1:Columns></q1:ColumnSet><q1:Criteria><q1:Conditions><q1:ConditionExpression>"
        "<q1:AttributeName>emailaddress1</q1:AttributeName><q1:Operator>Equal</q1:Operator>"
        f'<q1:Values><q8:anyType q4:type="q5:string">{email}</q8:anyType></q1:Values>'
        "</q1:ConditionExpression></q1:Conditions><q1:FilterOperator>And</q1:FilterOperator><q1:Filters/>"
        "</q1:Criteria><q1:Distinct>false</q1:Distinct><q1:EntityName>lead</q1:EntityName><q1:LinkEntities/>"
        "<q1:Orders/><q1:PageInfo><q1:Count>10</q1:Count><q1:PageNumber>1</q1:PageNumber>"
        '<q1:PagingCookie q4:nil="true"/><q1:ReturnTotalRecordCount>true</q1:ReturnTotalRecordCount></q1:PageInfo>'
    )
    assert [e["_id"] for e in page.entities] == [rid]
    assert page.total == 1


def _em_item(name: str, target: str) -> str:
    return request_xml(name, {"Target": target}, "", tag="q7:OrganizationRequest")


def _execute_multiple(
    soap: Soap, items: list[str], continue_on_error: bool = True, return_responses: bool = True
) -> etree._Element:
    settings = (
        f'<q3:value q4:type="q7:ExecuteMultipleSettings"><q7:ContinueOnError>{str(continue_on_error).lower()}'
        f"</q7:ContinueOnError><q7:ReturnResponses>{str(return_responses).lower()}</q7:ReturnResponses></q3:value>"
    )
    reqs = f'<q3:value q4:type="q7:OrganizationRequestCollection">{"".join(items)}</q3:value>'
    return soap.execute("ExecuteMultiple", {"Requests": reqs, "Settings": settings})


def test_execute_multiple_continues_after_bad_item(sandbox: SandboxServer, soap: Soap) -> None:
    emails = [new_email(f"em{n}") for n in range(3)]
    good = [
        entity_xml("q3:value", "lead", {"lastname": s("EM"), "emailaddress1": s(e)}, extra=' q4:type="q1:Entity"')
        for e in emails
    ]
    bad = entity_xml(
        "q3:value", "lead", {"lastname": s("Bad"), "leadsourcecode": opt(999)}, extra=' q4:type="q1:Entity"'
    )
    res = _execute_multiple(
        soap,
        [
            _em_item("Create", good[0]),
            _em_item("Create", bad),
            _em_item("Create", good[1]),
            _em_item("Create", good[2]),
        ],
    )
    out = results(res)
    assert out["IsFaulted"].text == "true"
    items = out["Responses"].findall(f"{{{EM}}}ExecuteMultipleResponseItem")
    assert [int(it.findtext(f"{{{EM}}}RequestIndex")) for it in items] == [0, 1, 2, 3]
    assert items[1].find(f"{{{EM}}}Fault/{{{XRM}}}ErrorCode").text == "-2147204326"
    created = items[0].find(f"{{{EM}}}Response/{{{XRM}}}Results/{{{XRM}}}KeyValuePairOfstringanyType")
    assert created.findtext(f"{{{KV}}}key") == "id"
    for email in emails:
        assert len(sandbox.records("lead", email=email)) == 1
    # Without ContinueOnError processing stops at the fault; without ReturnResponses only faults come back.
    emails2 = [new_email("stop") for _ in range(2)]
    items2 = [
        _em_item(
            "Create",
            entity_xml("q3:value", "lead", {"lastname": s("x"), "emailaddress1": s(e)}, extra=' q4:type="q1:Entity"'),
        )
        for e in emails2
    ]
    res = _execute_multiple(soap, [items2[0], _em_item("Create", bad), items2[1]], False, False)
    got = results(res)["Responses"].findall(f"{{{EM}}}ExecuteMultipleResponseItem")
    assert [int(it.findtext(f"{{{EM}}}RequestIndex")) for it in got] == [1]
    assert sandbox.records("lead", email=emails2[1]) == []


def test_execute_multiple_over_1000_faults(soap: Soap) -> None:
    item = _em_item("Create", entity_xml("q3:value", "lead", {"lastname": s("x")}, extra=' q4:type="q1:Entity"'))
    with pytest.raises(SoapFault) as err:
        _execute_multiple(soap, [item] * 1001)
    assert err.value.details == {"MaxBatchSize": "1000"}


def test_unsafe_xml_rejected(soap: Soap) -> None:
    body = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>'
    )
    resp = soap.session.post(
        soap.url,
        data=body,
        timeout=10,
        headers={
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": "http://schemas.microsoft.com/xrm/2011/Contracts/Services/IOrganizationService/Create",
        },
    )
    assert resp.status_code == 500
    assert "root:" not in resp.text
    resp = soap.session.post(soap.url, data=b"<x/>", headers={"Content-Type": "application/soap+xml"}, timeout=10)
    assert resp.status_code == 415


def test_pairs_helper_is_order_preserving() -> None:
    assert pairs({"a": i(1), "b": i(2)}).index("a") < pairs({"a": i(1), "b": i(2)}).index("b")


def test_qualify_lead_creates_contact_and_opportunity(soap: Soap) -> None:
    email = new_email("qualify")
    lead = soap.create("lead", {"lastname": s("Qualified"), "subject": s("Big deal"), "emailaddress1": s(email)})
    res = soap.execute(
        "QualifyLead",
        {
            "LeadId": ref("lead", lead),
            "CreateAccount": b(False),
            "CreateContact": b(True),
            "CreateOpportunity": b(True),
            "Status": opt(3),
        },
        "q2",
    )
    created = results(res)["CreatedEntities"]
    names = sorted(e.findtext(f"{{{XRM}}}LogicalName") for e in created)
    assert names == ["contact", "opportunity"]
    rec = soap.retrieve("lead", lead, ["statecode", "statuscode", "qualifyingopportunityid"])
    assert (rec["statecode"], rec["statuscode"]) == (1, 3)
    opps = soap.fetch(
        '<fetch><entity name="opportunity"><attribute name="name"/><attribute name="parentcontactid"/>'
        f'<filter><condition attribute="originatingleadid" operator="eq" value="{lead}"/></filter></entity></fetch>'
    )
    assert [o["name"] for o in opps.entities] == ["Big deal"]
    assert opps.entities[0]["parentcontactid"]["LogicalName"] == "contact"
