"""The connection test against a loopback stand-in that answers from the fixture corpus (no NTLM)."""

from __future__ import annotations

import pytest

from portal.connectors.dynamics.diagnostics import Step, test_connection

PATH = "/ORG/XRMServices/2011/Organization.svc/web"
STEPS = ["URL check", "DNS and TCP", "TLS", "NTLM handshake", "Organization Service", "WhoAmI", "Version",
         "Read access", "Lead source option", "Field lengths", "OData"]

VERSION = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
           b'<ExecuteResponse xmlns="http://schemas.microsoft.com/xrm/2011/Contracts/Services">'
           b'<ExecuteResult xmlns:a="http://schemas.microsoft.com/xrm/2011/Contracts" '
           b'xmlns:i="http://www.w3.org/2001/XMLSchema-instance" '
           b'xmlns:b="http://schemas.datacontract.org/2004/07/System.Collections.Generic" '
           b'xmlns:c="http://www.w3.org/2001/XMLSchema"><a:ResponseName>RetrieveVersion</a:ResponseName><a:Results>'
           b'<a:KeyValuePairOfstringanyType><b:key>Version</b:key><b:value i:type="c:string">8.2.2.112</b:value>'
           b'</a:KeyValuePairOfstringanyType></a:Results></ExecuteResult></ExecuteResponse></s:Body></s:Envelope>')

PRIVILEGE_FAULT = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
                   b'<faultcode>s:Client</faultcode><faultstring>missing prvReadList</faultstring><detail>'
                   b'<OrganizationServiceFault xmlns="http://schemas.microsoft.com/xrm/2011/Contracts">'
                   b'<ErrorCode>-2147220960</ErrorCode><Message>Principal user is missing prvReadList privilege'
                   b'</Message></OrganizationServiceFault></detail></s:Fault></s:Body></s:Envelope>')


def _crm(kit, *, deny_list: bool = False):  # noqa: ANN001, ANN202
    def handle(h) -> None:  # noqa: ANN001
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        status, ctype, out = 200, "text/xml; charset=utf-8", b""
        if h.command == "GET":
            status, ctype, out = 405, "text/plain", b"Method not allowed"
        elif b"WhoAmI" in body:
            out = kit.fixture_bytes("soap/who_am_i_result.xml")
        elif b"RetrieveVersion" in body:
            out = VERSION
        elif b"RetrieveEntity" in body:
            out = kit.fixture_bytes("soap/retrieve_entity_response.xml")
        elif b"RetrieveAttribute" in body:
            out = kit.fixture_bytes("soap/retrieve_attribute_picklist_response.xml")
        elif b"FetchExpression" in body:
            if deny_list and b'&lt;entity name="list"&gt;' in body:
                status, out = 500, PRIVILEGE_FAULT
            else:
                out = kit.fixture_bytes("soap/retrieve_multiple_result.xml")
        else:
            status, out = 400, b"unexpected"
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)
    return handle


def test_all_steps_pass(loopback_server, kit) -> None:
    base = loopback_server(_crm(kit))
    seen: list[Step] = []
    result = test_connection(kit.make_config(base + PATH), platform_name="wholesale", on_step=seen.append)
    assert result.ok, result.to_dict()
    assert [s.name for s in result.steps] == STEPS
    assert seen == result.steps
    d = result.to_dict()
    assert set(d) == {"ok", "steps", "user_id", "organization_id", "version", "lead_source_value", "max_lengths",
                      "error"}
    assert d["user_id"] == "1bfa3886-df7e-468c-8435-b5adfb0441ed"
    assert d["organization_id"] == "0140d597-e270-494a-89e1-bd0b43774e50"
    assert d["version"] == "8.2.2.112"
    assert d["lead_source_value"] == 33
    assert d["error"] is None
    assert d["steps"][2] == {"name": "TLS", "ok": True,
                             "detail": "plain HTTP (NTLM protects the password, not the data)"}
    assert d["steps"][-1]["detail"] == "not configured"


def test_missing_lead_source_stops_with_action(loopback_server, kit) -> None:
    base = loopback_server(_crm(kit))
    result = test_connection(kit.make_config(base + PATH))
    assert not result.ok
    assert [s.name for s in result.steps] == STEPS[:-2]
    assert result.steps[-1].ok is False
    assert result.to_dict()["error"]["code"] == "lead_source_missing"
    assert "Lead Source" in result.error.action and "ZiftONE" in result.error.action


def test_missing_read_privilege_names_the_entity(loopback_server, kit) -> None:
    base = loopback_server(_crm(kit, deny_list=True))
    result = test_connection(kit.make_config(base + PATH))
    assert [s.name for s in result.steps][-1] == "Read access"
    assert result.error.code == "privilege"
    assert "list" in result.error.message and "prvReadList" in result.error.action


@pytest.mark.parametrize(
    ("url", "code"),
    [("ftp://127.0.0.1/x", "invalid_url"),
     ("http://127.0.0.1:1/ORG/XRMServices/2011/Organization.svc", "not_dynamics"),
     ("http://10.0.0.1/ORG/XRMServices/2011/Organization.svc/web", "blocked_url")],
)
def test_url_step_failures(kit, url: str, code: str) -> None:
    result = test_connection(kit.make_config(url))
    assert [s.name for s in result.steps] == ["URL check"]
    assert result.error.code == code


def test_refused_port_fails_tcp_step(kit) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = test_connection(kit.make_config(f"http://127.0.0.1:{port}{PATH}"))
    assert [(s.name, s.ok) for s in result.steps] == [("URL check", True), ("DNS and TCP", False)]
    assert result.error.code == "unreachable"
