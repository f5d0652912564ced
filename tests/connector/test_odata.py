"""OData v2 and Web API: flavour detection, literals and URL encoding, fixture parsing, paging, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from portal.connectors.dynamics.errors import FaultError, NotDynamicsError, NotFoundError, ServerBusyError
from portal.connectors.dynamics.odata import (
    V2,
    WEBAPI,
    ODataClient,
    build_url,
    convert_v2_record,
    detect_flavour,
    error_from_odata,
    odata_literal,
    parse_v2_date,
)
from portal.connectors.dynamics.xml import EntityReference, OptionSetValue

V2_URL = "http://127.0.0.1:8080/ORG/XRMServices/2011/OrganizationData.svc"
API_URL = "http://127.0.0.1:8080/ORG/api/data/v8.2/"


def test_detect_flavour() -> None:
    assert detect_flavour(V2_URL) == V2
    assert detect_flavour(V2_URL + "/") == V2
    assert detect_flavour(API_URL) == WEBAPI
    assert detect_flavour("https://crm.example.com/ORG/api/data/v9.1") == WEBAPI
    with pytest.raises(NotDynamicsError):
        detect_flavour("https://crm.example.com/ORG/XRMServices/2011/Organization.svc/web")


@pytest.mark.parametrize(
    ("value", "literal"),
    [("o'brien+x@example.com", "'o''brien+x@example.com'"), ("a&b<c>@example.com", "'a&b<c>@example.com'"),
     ("''", "''''''"), (None, "null"), (True, "true"), (5, "5")],
)
def test_odata_literal(value, literal: str) -> None:  # noqa: ANN001
    assert odata_literal(value) == literal


@pytest.mark.parametrize("email", ["o'brien+x@example.com", "a&b<c>@example.com", "x y#z%20=@example.com"])
def test_filter_url_encoding_round_trips(email: str) -> None:
    flt = f"EMailAddress1 eq {odata_literal(email)}"
    url = build_url(V2_URL, "LeadSet", {"$select": "LeadId,EMailAddress1", "$filter": flt})
    query = urlsplit(url).query
    assert "+" not in query and " " not in query and "#" not in query
    parsed = parse_qs(query, keep_blank_values=True)
    assert parsed["$filter"] == [flt]
    assert parsed["$select"] == ["LeadId,EMailAddress1"]
    assert url.startswith(V2_URL + "/LeadSet?")


def test_v2_fixture_records(kit) -> None:
    body = json.loads(kit.fixture_bytes("odata-v2/01_odatav2_AccountSet_query_top2.response.json"))
    first, second = (convert_v2_record(r) for r in body["d"]["results"])
    assert "__metadata" not in first
    assert first["OwnershipCode"] == OptionSetValue(2)
    assert first["PrimaryContactId"] == EntityReference("dff27d1f-a61b-4bfe-a203-b2e5a36cda0e", "contact", "Sam Smith")
    assert first["OpenDeals_Date"] == datetime(2022, 9, 20, 23, 14, 51, tzinfo=UTC)
    assert first["NumberOfEmployees"] == 500 and first["DoNotPhone"] is False
    assert second["OwnershipCode"] is None and second["IndustryCode"] is None
    assert second["Name"] == "Fourth Coffee"
    # The same record through the Web API carries the same instant as ISO text.
    api = json.loads(kit.fixture_bytes("webapi/03_webapi_accounts_query_maxpagesize2.response.json"))
    assert api["value"][0]["opendeals_date"] == "2022-09-20T23:14:51Z"
    retrieved = json.loads(kit.fixture_bytes("odata-v2/06_odatav2_AccountSet_retrieve.response.json"))
    single = convert_v2_record(retrieved["d"])
    assert single["OpenDeals_Date"] == datetime(2022, 9, 21, 18, 14, 58, tzinfo=UTC)


def test_parse_v2_date_forms() -> None:
    assert parse_v2_date("/Date(0)/") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_v2_date("\\/Date(1462107600000)\\/") == datetime(2016, 5, 1, 13, 0, tzinfo=UTC)
    assert parse_v2_date("not a date") is None


def _json(kit, body: object, status: int = 200):  # noqa: ANN001, ANN202
    return kit.http_response(json.dumps(body).encode(), status=status, content_type="application/json")


def test_v2_paging_follows_next(kit) -> None:
    t = kit.FakeTransport(responses=[
        _json(kit, {"d": {"results": [{"LeadId": "1"}, {"LeadId": "2"}],
                          "__next": V2_URL + "/LeadSet?$skiptoken=1,'leadid','%7B2%7D'"}}),
        _json(kit, {"d": {"results": [{"LeadId": "3", "CreatedOn": "/Date(0)/"}]}}),
    ])
    client = ODataClient(t, V2_URL)
    rows = list(client.iter_entities("LeadSet", ["LeadId"], f"EMailAddress1 eq {odata_literal('a&b')}"))
    assert [r["LeadId"] for r in rows] == ["1", "2", "3"]
    assert rows[2]["CreatedOn"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert client.pages == 2
    assert t.calls[1]["url"].endswith("$skiptoken=1,'leadid','%7B2%7D'")
    assert t.calls[0]["headers"]["Accept"] == "application/json"


def test_webapi_paging_and_headers(kit) -> None:
    page1 = json.loads(kit.fixture_bytes("webapi/03_webapi_accounts_query_maxpagesize2.response.json"))
    page1["@odata.nextLink"] = page1["@odata.nextLink"].replace(" [Organization URI]", "http://127.0.0.1:8080/ORG")
    t = kit.FakeTransport(responses=[_json(kit, page1), _json(kit, {"value": []})])
    client = ODataClient(t, API_URL, page_size=2)
    rows = list(client.iter_entities("accounts", ["name"]))
    assert [r["name"] for r in rows] == ["Contoso, Ltd. (sample)", "Fourth Coffee"]
    headers = t.calls[0]["headers"]
    assert headers["Prefer"] == "odata.maxpagesize=2"
    assert headers["OData-Version"] == "4.0" and headers["OData-MaxVersion"] == "4.0"
    assert "$skiptoken=" in t.calls[1]["url"]


def test_next_link_to_another_host_is_refused(kit) -> None:
    t = kit.FakeTransport(responses=[_json(kit, {"value": [], "@odata.nextLink": "http://169.254.169.254/x"})])
    with pytest.raises(NotDynamicsError):
        list(ODataClient(t, API_URL).iter_entities("leads"))


def test_error_bodies(kit) -> None:
    v2 = _json(kit, {"error": {"code": "", "message": {"lang": "en-US", "value": "Bad filter"}}}, status=400)
    assert isinstance(error_from_odata(v2), FaultError)
    assert error_from_odata(v2).message == "Bad filter"
    api = _json(kit, {"error": {"code": "0x80040217", "message": "lead With Id = 1 Does Not Exist"}}, status=404)
    err = error_from_odata(api)
    assert isinstance(err, NotFoundError) and err.error_code == -2147220969
    busy = kit.http_response(b"", status=503, content_type="")
    assert isinstance(error_from_odata(busy), ServerBusyError)
    truncated = kit.fixture_bytes(
        "webapi/conditional-operations-sample__04_patch_if_match_star_deleted_404.response.TRUNCATED.txt")
    assert isinstance(error_from_odata(kit.http_response(truncated, status=404)), NotDynamicsError)
    html = kit.http_response(b"<html>not found</html>", status=404, content_type="text/html")
    assert isinstance(error_from_odata(html), NotDynamicsError)


def test_ping(kit) -> None:
    t = kit.FakeTransport(responses=[_json(kit, {"UserId": "1BFA3886-DF7E-468C-8435-B5ADFB0441ED"}),
                                     _json(kit, {"d": {"EntitySets": ["LeadSet", "ContactSet"]}})])
    assert ODataClient(t, API_URL).ping() == {"flavour": WEBAPI, "user_id": "1bfa3886-df7e-468c-8435-b5adfb0441ed"}
    assert ODataClient(t, V2_URL).ping() == {"flavour": V2, "entity_sets": 2}
    assert t.calls[0]["url"] == "http://127.0.0.1:8080/ORG/api/data/v8.2/WhoAmI"
