"""Conformance with the captured Organization Service responses kept in tests/fixtures/dynamics."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from lxml import etree

from portal.connectors.dynamics.errors import FaultError, NotDynamicsError, ServerError
from portal.connectors.dynamics.soap import OrganizationService
from portal.connectors.dynamics.xml import (
    META,
    XRM,
    XSI,
    Entity,
    EntityReference,
    Money,
    OptionSetValue,
    parse_entity,
    parse_entity_page,
    parse_envelope,
    parse_option_set,
    parse_xml,
    q,
)
from tests.fixtures import soap_capture_names

SOAP_FILES = soap_capture_names()


def service_answering(kit, *files: str, status: int = 200) -> tuple[OrganizationService, object]:
    t = kit.FakeTransport(responses=[kit.http_response(kit.fixture_bytes(f"soap/{f}"), status=status) for f in files])
    return OrganizationService(t), t


def test_corpus_is_present() -> None:
    assert len(SOAP_FILES) >= 20, "the captured SOAP responses are missing from tests/fixtures/dynamics/soap"


@pytest.mark.parametrize("name", SOAP_FILES)
def test_every_capture_parses_safely(kit, name: str) -> None:
    root = parse_xml(kit.fixture_bytes(f"soap/{name}"))
    assert etree.QName(root).localname == "Envelope"
    if "fault" in name:
        with pytest.raises((FaultError, ServerError)):
            parse_envelope(kit.fixture_bytes(f"soap/{name}"))
    else:
        assert parse_envelope(kit.fixture_bytes(f"soap/{name}")) is not None


def test_who_am_i(kit) -> None:
    service, t = service_answering(kit, "who_am_i_result.xml")
    me = service.who_am_i()
    assert me.user_id == "1bfa3886-df7e-468c-8435-b5adfb0441ed"
    assert me.business_unit_id == "4e87d619-838a-e311-89a7-6c3be5a80184"
    assert me.organization_id == "0140d597-e270-494a-89e1-bd0b43774e50"
    call = t.calls[0]
    assert call["method"] == "POST"
    assert call["headers"]["Content-Type"] == "text/xml; charset=utf-8"
    assert call["headers"]["SOAPAction"] == (
        "http://schemas.microsoft.com/xrm/2011/Contracts/Services/IOrganizationService/Execute"
    )
    # The request names the crm-family type and the message.
    req = parse_xml(call["data"])
    request_el = next(req.iter("{http://schemas.microsoft.com/xrm/2011/Contracts/Services}request"))
    prefix, local = request_el.get(q(XSI, "type")).split(":")
    assert request_el.nsmap[prefix] == "http://schemas.microsoft.com/crm/2011/Contracts"
    assert local == "WhoAmIRequest"
    assert request_el.findtext(q(XRM, "RequestName")) == "WhoAmI"


def test_create_returns_new_guid(kit) -> None:
    service, t = service_answering(kit, "create_response.xml")
    new_id = service.create("lead", {"lastname": "Doe", "emailaddress1": "a@b.com"})
    assert new_id == "c4944f99-b5a0-e311-b64f-6c3be5a87df0"
    assert t.calls[0]["headers"]["SOAPAction"].endswith("/Create")


def test_update_and_delete_accept_empty_responses(kit) -> None:
    service, t = service_answering(kit, "update_response.xml", "delete_response.xml")
    service.update("lead", "c4944f99-b5a0-e311-b64f-6c3be5a87df0", {"firstname": "Jo"})
    service.delete("lead", "c4944f99-b5a0-e311-b64f-6c3be5a87df0")
    assert [c["headers"]["SOAPAction"].rsplit("/", 1)[1] for c in t.calls] == ["Update", "Delete"]


def test_wrong_response_element_is_not_dynamics(kit) -> None:
    # A Create answered with an UpdateResponse is not what an Organization Service does.
    service, _ = service_answering(kit, "update_response.xml")
    with pytest.raises(NotDynamicsError):
        service.create("lead", {"lastname": "Doe"})


def test_retrieve_result(kit) -> None:
    service, t = service_answering(kit, "retrieve_result.xml")
    account = service.retrieve("account", "93f0325c-a592-e311-b7f3-6c3be5a8a0c8", ["name", "address1_city"])
    assert isinstance(account, Entity)
    assert account.logical_name == "account"
    assert account.id == "93f0325c-a592-e311-b7f3-6c3be5a8a0c8"
    assert account.attributes["accountid"] == "93f0325c-a592-e311-b7f3-6c3be5a8a0c8"
    assert account.attributes["name"] == "Adventure Works (sample)"
    assert account.attributes["address1_city"] == "Santa Cruz"
    assert account.attributes["address1_composite"].startswith("4405 Balboa Court\r\n")
    assert account.formatted_values == {}
    sent = parse_xml(t.calls[0]["data"])
    columns = [e.text for e in sent.iter("{http://schemas.microsoft.com/2003/10/Serialization/Arrays}string")]
    assert columns == ["name", "address1_city"]
    assert sent.findtext(".//{http://schemas.microsoft.com/xrm/2011/Contracts/Services}entityName") == "account"


def test_retrieve_all_value_types(kit) -> None:
    service, _ = service_answering(kit, "retrieve_account_all_columns.xml")
    a = service.retrieve("account", "93f0325c-a592-e311-b7f3-6c3be5a8a0c8")
    attrs = a.attributes
    assert attrs["revenue"] == Money(Decimal("60000.0000"))
    assert attrs["statuscode"] == OptionSetValue(1)
    assert attrs["statecode"] == OptionSetValue(0)
    assert attrs["merged"] is False
    assert attrs["numberofemployees"] == 4300
    assert attrs["exchangerate"] == Decimal("1.0000000000")
    assert attrs["createdon"] == datetime(2014, 2, 10, 23, 38, 21, tzinfo=UTC)
    assert attrs["modifiedon"].tzinfo is UTC
    assert attrs["emailaddress1"] == "someone3@example.com"
    assert attrs["owninguser"] == EntityReference("1bfa3886-df7e-468c-8435-b5adfb0441ed", "systemuser", None)
    assert attrs["primarycontactid"] == EntityReference(
        "51f1325c-a592-e311-b7f3-6c3be5a8a0c8", "contact", "Nancy Anderson (sample)"
    )
    assert attrs["address1_addressid"] == "675cdbc7-8bca-4920-8a3a-ba6a698b5890"
    assert a.formatted_values["revenue"] == "$\u200e60,000.00"
    assert a.formatted_values["modifiedon"] == "2/10/2014 3:38 PM"
    assert a.formatted_values["merged"] == "No"
    assert a.formatted_values["donotpostalmail"] == "Allow"


def test_retrieve_multiple_page_and_cookie(kit) -> None:
    service, t = service_answering(kit, "retrieve_multiple_result.xml")
    page = service.retrieve_multiple("<fetch><entity name='account'><attribute name='accountid'/></entity></fetch>")
    assert [e.id for e in page.entities] == [
        "7bf2e032-ad92-e311-9752-6c3be5a87df0",
        "dbe9d7c9-2c98-e311-9752-6c3be5a87df0",
        "8ff0325c-a592-e311-b7f3-6c3be5a8a0c8",
    ]
    assert page.entity_name == "account"
    assert page.more_records is False
    assert page.total_record_count == -1
    assert page.paging_cookie == (
        '<cookie page="1"><accountid last="{BC73E579-2D98-E311-AD92-6C3BE5A8AD70}" '
        'first="{7BF2E032-AD92-E311-9752-6C3BE5A87DF0}" /></cookie>'
    )
    assert service.pages == 1
    assert t.calls[0]["headers"]["SOAPAction"].endswith("/RetrieveMultiple")


def test_fetch_xml_response_through_execute(kit) -> None:
    service, _ = service_answering(kit, "fetch_xml_response.xml")
    result = service.execute("RetrieveMultiple", {"Query": "<fetch/>"})
    assert result.response_name == "RetrieveMultiple"
    entities = result.results["EntityCollection"]
    assert [e.logical_name for e in entities] == ["new_tinderboxdocument"] * 3
    page = parse_entity_page(result.elements["EntityCollection"])
    assert page.more_records is False
    assert page.paging_cookie is not None and page.paging_cookie.startswith('<cookie page="1"><new_name last="Test')
    first = page.entities[0]
    assert first.id == "9c27cf91-ada3-e311-b64f-6c3be5a87df0"
    assert first.attributes["new_name"] == "6 orders of Product SKU JJ202"
    assert first.attributes["createdon"] == datetime(2014, 3, 4, 14, 59, 23, tzinfo=UTC)
    assert first.formatted_values["createdon"] == "3/4/2014 6:59 AM"


def test_picklist_options(kit) -> None:
    service, t = service_answering(kit, "retrieve_attribute_picklist_response.xml")
    options = service.retrieve_option_set("account", "industrycode")
    assert len(options) == 33
    assert (options[0].value, options[0].labels) == (1, {1033: "Accounting"})
    assert options[0].label == "Accounting"
    assert (options[-1].value, options[-1].label) == (33, "Wholesale")
    by_value = {o.value: o.label for o in options}
    assert by_value[2] == "Agriculture and Non-petrol Natural Resource Extraction"
    assert by_value[11] == "Doctor's Offices and Clinics"
    sent = parse_xml(t.calls[0]["data"])
    keys = [k.text for k in sent.iter("{http://schemas.datacontract.org/2004/07/System.Collections.Generic}key")]
    assert keys == ["EntityLogicalName", "LogicalName", "MetadataId", "RetrieveAsIfPublished"]


def test_find_option_matches_any_label_ignoring_case(kit) -> None:
    service, _ = service_answering(kit, "retrieve_attribute_picklist_response.xml",
                                   "retrieve_attribute_picklist_response.xml")
    assert service.find_option("  WHOLESALE ", "account", "industrycode") == 33
    assert service.find_option("ZiftONE", "account", "industrycode") is None


def test_sender_fault(kit) -> None:
    service, _ = service_answering(kit, "sender_fault.xml", status=500)
    with pytest.raises(FaultError) as info:
        service.update("account", "93f0325c-a592-e311-b7f3-6c3be5a8a0c8", {"ticketsymbol": "X"})
    err = info.value
    assert err.code == "fault"
    assert err.error_code == -2147217149
    assert err.error_code_hex == "0x80041103"
    assert err.message == "'account' entity doesn't contain attribute with Name = 'ticketsymbol'."
    assert err.retryable is False


def test_receiver_fault_is_retryable_server_error(kit) -> None:
    service, _ = service_answering(kit, "receiver_fault.xml", status=500)
    with pytest.raises(ServerError) as info:
        service.who_am_i()
    assert info.value.retryable is True
    assert "internal error" in info.value.message


@pytest.mark.parametrize(("name", "response"), [("win_opportunity_response.xml", "WinOpportunity"),
                                                ("lose_opportunity_response.xml", "LoseOpportunity")])
def test_win_lose_opportunity(kit, name: str, response: str) -> None:
    service, _ = service_answering(kit, name)
    result = service.execute(response, {"Status": OptionSetValue(-1)}, family="http://schemas.microsoft.com/crm/2011/Contracts")
    assert result.response_name == response
    assert result.results == {}


def test_entity_array_request_capture(kit) -> None:
    body = parse_envelope(kit.fixture_bytes("soap/entity_array_response.xml"))
    entity = parse_entity(body.find("{http://schemas.microsoft.com/xrm/2011/Contracts/Services}entity"))
    assert entity.logical_name == "phonecall"
    assert entity.id is None
    party = entity.attributes["from"][0]
    assert party.logical_name == "activityparty"
    assert party.attributes["partyid"] == EntityReference("f36aa96c-e7a5-4c70-8254-47c8ba947561", "systemuser")


def _wrap_fragment(data: bytes) -> bytes:
    return (
        b'<wrap xmlns:i="http://www.w3.org/2001/XMLSchema-instance" '
        b'xmlns:b="http://schemas.microsoft.com/xrm/2011/Contracts" '
        b'xmlns:d="http://schemas.microsoft.com/xrm/2011/Metadata">' + data + b"</wrap>"
    )


def test_metadata_fragment_picklist(kit) -> None:
    root = parse_xml(_wrap_fragment(kit.fixture_bytes("metadata-fragments/am.xml")))
    attribute = root.find(q(META, "AttributeMetadata"))
    options = parse_option_set(attribute)
    assert [(o.value, o.label) for o in options] == [(0, "Inactive"), (1, "Active")]
    assert attribute.findtext(q(META, "LogicalName")) == "formactivationstate"


def test_metadata_fragment_entity(kit) -> None:
    root = parse_xml(_wrap_fragment(kit.fixture_bytes("metadata-fragments/ed.xml")))
    entity = root.find(q(META, "EntityMetadata"))
    names = [a.findtext(q(META, "LogicalName")) for a in entity.find(q(META, "Attributes"))]
    assert names[:2] == ["subscriptionid", "objectid"]


# ---------------------------------------------------------------- prefix independence


def reprefix(data: bytes, default_ns: str | None = XRM) -> bytes:
    """Rewrite a document with fresh prefixes (and one namespace as the default), fixing xi:type QNames."""
    root = parse_xml(data)
    namespaces: list[str] = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for uri in el.nsmap.values():
            if uri not in namespaces:
                namespaces.append(uri)
    new_prefix = {uri: f"n{i}" for i, uri in enumerate(namespaces)}
    if default_ns in new_prefix:
        new_prefix[default_ns] = None  # type: ignore[assignment]
    nsmap = {p: uri for uri, p in new_prefix.items()}
    if XSI not in new_prefix or new_prefix[XSI] is None:
        nsmap["xsi9"] = XSI
        new_prefix[XSI] = "xsi9"

    def copy(src: etree._Element, parent: etree._Element | None) -> etree._Element:
        dst = etree.Element(src.tag, nsmap=nsmap) if parent is None else etree.SubElement(parent, src.tag)
        for key, value in src.attrib.items():
            if key == q(XSI, "type"):
                prefix, _, local = value.rpartition(":")
                uri = src.nsmap.get(prefix or None)
                p = new_prefix[uri]
                value = f"{p}:{local}" if p else local
            dst.set(key, value)
        dst.text = src.text
        dst.tail = src.tail
        for c in src:
            if isinstance(c.tag, str):
                copy(c, dst)
        return dst

    return etree.tostring(copy(root, None))


@pytest.mark.parametrize(
    "name",
    ["who_am_i_result.xml", "retrieve_account_all_columns.xml", "retrieve_multiple_result.xml",
     "fetch_xml_response.xml", "retrieve_attribute_picklist_response.xml"],
)
def test_prefix_independence(kit, name: str) -> None:
    original = kit.fixture_bytes(f"soap/{name}")
    rewritten = reprefix(original)
    assert rewritten != original
    assert b"<b:" not in rewritten and b' i:type="' not in rewritten

    def run(data: bytes):
        t = kit.FakeTransport(responses=[kit.http_response(data)])
        s = OrganizationService(t)
        if name == "who_am_i_result.xml":
            return s.who_am_i()
        if name == "retrieve_account_all_columns.xml":
            return s.retrieve("account", "93f0325c-a592-e311-b7f3-6c3be5a8a0c8")
        if name == "retrieve_multiple_result.xml":
            return s.retrieve_multiple("<fetch/>")
        if name == "fetch_xml_response.xml":
            return s.execute("RetrieveMultiple").results
        return s.retrieve_option_set("account", "industrycode")

    assert run(rewritten) == run(original)


def test_prefix_independence_sender_fault(kit) -> None:
    rewritten = reprefix(kit.fixture_bytes("soap/sender_fault.xml"), default_ns=None)
    with pytest.raises(FaultError) as info:
        parse_envelope(rewritten)
    assert info.value.error_code == -2147217149
