"""The connector against the sandbox server over real NTLM on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from portal.connectors.dynamics import ConnectionConfig, ODataClient, OrganizationService, Transport, test_connection
from portal.connectors.dynamics.soap import CreateRequest, UpdateRequest, fetch_xml
from sandbox import testing

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[object]:
    """One seeded sandbox (with the platform option) for the module."""
    with testing.SandboxServer(seed=True, platform_option=True) as server:
        yield server


def _config(sb, password: str | None = None, **kw) -> ConnectionConfig:  # noqa: ANN001
    return ConnectionConfig(org_url=sb.org_url, username=sb.username, password=password or sb.password,
                            domain=sb.domain, allowed_networks=LOOPBACK, **kw)


def test_connection_test_passes(sandbox) -> None:  # noqa: ANN001
    result = test_connection(_config(sandbox, odata_url=sandbox.webapi_url))
    assert result.ok, result.to_dict()
    assert result.lead_source_value is not None and result.user_id


def test_wrong_password_is_auth_failed(sandbox) -> None:  # noqa: ANN001
    result = test_connection(_config(sandbox, password="wrong"))
    assert result.error is not None and result.error.code == "auth_failed"
    assert result.steps[-1].name == "NTLM handshake"


def test_paging_create_and_batch(sandbox) -> None:  # noqa: ANN001
    with Transport(_config(sandbox)) as t:
        service = OrganizationService(t)
        ids = [e.id for e in service.iter_fetch(fetch_xml("lead", ["leadid"], order=["leadid"]), page_size=7)]
        assert len(ids) == len(set(ids)) > 7
        assert service.pages >= 2
        email = "a&b<c>o'brien+x@example.com"
        new_id = service.create("lead", {"lastname": "O'Brien", "emailaddress1": email})
        found = service.retrieve_multiple(fetch_xml("lead", ["leadid", "emailaddress1"],
                                                    [("emailaddress1", "eq", email)]))
        assert [e.id for e in found.entities] == [new_id]
        assert found.entities[0].attributes["emailaddress1"] == email
        results = service.execute_multiple([CreateRequest("lead", {"lastname": "Batch"}),
                                            UpdateRequest("lead", new_id, {"firstname": "Pat"})])
        assert all(r.ok for r in results) and results[0].id and results[1].id == new_id
        assert service.retrieve("lead", new_id, ["firstname"]).attributes["firstname"] == "Pat"


@pytest.mark.parametrize("which", ["odata_v2_url", "webapi_url"])
def test_odata_reads(sandbox, which: str) -> None:  # noqa: ANN001
    with Transport(_config(sandbox)) as t:
        client = ODataClient(t, getattr(sandbox, which))
        client.ping()
        entity_set = "LeadSet" if which == "odata_v2_url" else "leads"
        rows = list(client.iter_entities(entity_set))
        assert rows
