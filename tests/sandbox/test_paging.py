"""Paging through many records: FetchXML cookies, OData v2 __next and Web API nextLink."""

from __future__ import annotations

import time
from collections.abc import Iterator
from xml.sax.saxutils import quoteattr

import pytest
import requests
from requests_ntlm import HttpNtlmAuth

from sandbox.testing import SandboxServer

from .soapclient import Soap

TOTAL = 12_000


@pytest.fixture(scope="module")
def loaded() -> Iterator[SandboxServer]:
    """A sandbox of its own with TOTAL leads (every tenth without email)."""
    with SandboxServer() as server:
        rows = [
            {
                "lastname": f"Lead {n}",
                "emailaddress1": None if n % 10 == 9 else f"lead{n}@example.com",
                "leadsourcecode": n % 10 + 1,
            }
            for n in range(TOTAL)
        ]
        server.insert_records("lead", rows)
        yield server


@pytest.fixture
def session(loaded: SandboxServer) -> Iterator[requests.Session]:
    """An NTLM session."""
    with requests.Session() as sess:
        sess.auth = HttpNtlmAuth(loaded.qualified_username, loaded.password)
        yield sess


def test_fetch_paging_with_cookie(loaded: SandboxServer) -> None:
    soap = Soap(loaded.org_url, loaded.qualified_username, loaded.password)
    try:
        seen: list[str] = []
        page_no, cookie = 1, None
        started = time.monotonic()
        while True:
            cookie_attr = f" paging-cookie={quoteattr(cookie)}" if cookie else ""
            fetch = (
                f'<fetch count="5000" page="{page_no}"{cookie_attr}><entity name="lead">'
                '<attribute name="emailaddress1"/><attribute name="leadsourcecode"/>'
                '<filter><condition attribute="emailaddress1" operator="not-null"/></filter>'
                '<order attribute="leadid"/></entity></fetch>'
            )
            page = soap.fetch(fetch)
            seen += [e["_id"] for e in page.entities]
            assert page.cookie and page.cookie.startswith(f'<cookie page="{page_no}"><leadid last="{{')
            if not page.more:
                break
            page_no, cookie = page_no + 1, page.cookie
        assert page_no == 3
        assert len(seen) == len(set(seen)) == TOTAL * 9 // 10
        assert seen == sorted(seen)
        assert time.monotonic() - started < 20
        # Page numbers alone (no cookie) give the same rows.
        page2 = soap.fetch(
            '<fetch count="5000" page="2"><entity name="lead"><attribute name="leadid"/>'
            '<filter><condition attribute="emailaddress1" operator="not-null"/></filter>'
            "</entity></fetch>"
        )
        assert [e["_id"] for e in page2.entities] == seen[5000:10000]
    finally:
        soap.close()


def test_odata_v2_pages_of_50(loaded: SandboxServer, session: requests.Session) -> None:
    url = loaded.odata_v2_url + "LeadSet?$select=LeadId,EMailAddress1,LeadSourceCode&$filter=LeadSourceCode/Value eq 3"
    seen = []
    pages = 0
    while url:
        resp = session.get(url, headers={"Accept": "application/json"}, timeout=30)
        assert resp.status_code == 200, resp.text
        d = resp.json()["d"]
        assert len(d["results"]) <= 50
        for rec in d["results"]:
            assert rec["LeadSourceCode"]["Value"] == 3
            assert rec["__metadata"]["type"] == "Microsoft.Crm.Sdk.Data.Services.Lead"
        seen += [r["LeadId"] for r in d["results"]]
        url = d.get("__next")
        pages += 1
    assert len(seen) == len(set(seen)) == TOTAL // 10
    assert pages == TOTAL // 10 // 50


def test_webapi_maxpagesize_and_next_link(loaded: SandboxServer, session: requests.Session) -> None:
    url = loaded.webapi_url + "leads?$select=emailaddress1&$filter=leadsourcecode eq 5 and emailaddress1 ne null"
    headers = {"Accept": "application/json", "OData-Version": "4.0", "Prefer": "odata.maxpagesize=500"}
    seen = []
    while url:
        resp = session.get(url, headers=headers, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["value"]) <= 500
        seen += [r["leadid"] for r in body["value"]]
        url = body.get("@odata.nextLink")
    assert len(seen) == len(set(seen)) == TOTAL // 10


def test_webapi_filter_quotes_and_errors(loaded: SandboxServer, session: requests.Session) -> None:
    loaded.insert_records("contact", [{"lastname": "O'Brien", "emailaddress1": "o'brien+x@example.com"}])
    resp = session.get(
        loaded.webapi_url + "contacts",
        params={"$filter": "emailaddress1 eq 'o''brien+x@example.com'", "$select": "lastname"},
        timeout=10,
    )
    assert [r["lastname"] for r in resp.json()["value"]] == ["O'Brien"]
    resp = session.get(loaded.webapi_url + "contacts?$select=nosuchfield", timeout=10)
    assert resp.status_code == 400
    resp = session.get(loaded.webapi_url + "leads(00000000-0000-0000-0000-000000000001)", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "0x80040217"
    who = session.get(loaded.webapi_url + "WhoAmI()", timeout=10).json()
    assert set(who) >= {"UserId", "BusinessUnitId", "OrganizationId"}
