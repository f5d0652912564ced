"""NTLM at the HTTP layer: IIS-like offers, handshakes per connection, refusals."""

from __future__ import annotations

import base64
import http.client

import pytest
import requests
import spnego
from requests_ntlm import HttpNtlmAuth

from sandbox.testing import SandboxServer

from .soapclient import Soap


def test_first_401_offers_negotiate_and_ntlm(sandbox: SandboxServer) -> None:
    with requests.post(sandbox.org_url, data=b"<x/>", headers={"Content-Type": "text/xml"}, timeout=10) as resp:
        assert resp.status_code == 401
        assert resp.raw.headers.getlist("WWW-Authenticate") == ["Negotiate", "NTLM"]


def test_handshake_then_connection_stays_authenticated(sandbox: SandboxServer, soap: Soap) -> None:
    before = sandbox.stats()["ntlm_handshakes"]
    first = soap.who_am_i()
    second = soap.who_am_i()
    assert first == second
    assert set(first) == {"UserId", "BusinessUnitId", "OrganizationId"}
    # Two calls on one kept-alive connection need one handshake.
    assert sandbox.stats()["ntlm_handshakes"] == before + 1


def test_principal_maps_to_systemuser(sandbox: SandboxServer, soap: Soap) -> None:
    user_id = soap.who_am_i()["UserId"]
    users = sandbox.records("systemuser", domainname=sandbox.qualified_username)
    assert [u["systemuserid"] for u in users] == [user_id]
    other = Soap(sandbox.org_url, f"{sandbox.domain}\\{sandbox.second_username}", sandbox.second_password)
    try:
        assert other.who_am_i()["UserId"] != user_id
    finally:
        other.close()


def test_wrong_password_gets_401(sandbox: SandboxServer) -> None:
    with requests.Session() as session:
        session.auth = HttpNtlmAuth(sandbox.qualified_username, "not-the-password")
        resp = session.post(sandbox.org_url, data=b"<x/>", headers={"Content-Type": "text/xml"}, timeout=10)
        assert resp.status_code == 401
        resp.close()


def test_unknown_user_gets_401(sandbox: SandboxServer) -> None:
    with requests.Session() as session:
        session.auth = HttpNtlmAuth("SANDBOX\\nobody", sandbox.password)
        resp = session.get(sandbox.webapi_url + "WhoAmI()", timeout=10)
        assert resp.status_code == 401
        resp.close()


def _raw_handshake(sandbox: SandboxServer, client: spnego.ContextProxy, scheme: str = "NTLM") -> int:
    """Run a handshake by hand on one connection; return the final status."""
    conn = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=10)
    try:
        path = f"/{sandbox.org}/api/data/v8.2/WhoAmI()"
        conn.request("GET", path, headers={"Authorization": f"{scheme} {base64.b64encode(client.step()).decode()}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 401
        challenge = resp.getheader("WWW-Authenticate").split(" ", 1)[1]
        token = client.step(base64.b64decode(challenge))
        conn.request("GET", path, headers={"Authorization": f"{scheme} {base64.b64encode(token).decode()}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_negotiate_scheme_with_raw_ntlm(sandbox: SandboxServer) -> None:
    client = spnego.client(sandbox.qualified_username, sandbox.password, protocol="ntlm")
    assert _raw_handshake(sandbox, client, "Negotiate") == 200


def test_ntlmv1_refused(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # pyspnego reads LM_COMPAT_LEVEL when the context is created: level 0 makes the client send NTLMv1.
    monkeypatch.setenv("LM_COMPAT_LEVEL", "0")
    client = spnego.client(sandbox.qualified_username, sandbox.password, protocol="ntlm")
    monkeypatch.delenv("LM_COMPAT_LEVEL")
    assert _raw_handshake(sandbox, client) == 401


def test_control_api_needs_no_ntlm_and_unknown_paths_are_404(sandbox: SandboxServer) -> None:
    assert sandbox.stats()["records"]["lead"] >= 30
    with requests.get(f"{sandbox.base_url}/nope/XRMServices/2011/Organization.svc/web", timeout=10) as resp:
        assert resp.status_code == 404
        assert "text/html" in resp.headers["Content-Type"]
    with requests.get(f"{sandbox.base_url}/{sandbox.org}/something/else", timeout=10) as resp:
        assert resp.status_code == 404
