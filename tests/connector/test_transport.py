"""The transport against loopback HTTP servers: caps, redirects, auth failures, timeouts, secrets."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from portal.connectors.dynamics.errors import (
    AuthFailedError,
    BlockedUrlError,
    ClaimsAuthError,
    NotDynamicsError,
    RequestTimeoutError,
    ResponseTooLargeError,
    UnreachableError,
)
from portal.connectors.dynamics.transport import ConnectionConfig, Transport, redact

PATH = "/ORG/XRMServices/2011/Organization.svc/web"


def _reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None, chunked: bool = False):  # noqa: ANN202
    def handle(h) -> None:  # noqa: ANN001
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(body), 65536):
                part = body[i:i + 65536]
                h.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
        else:
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
    return handle


def test_config_hides_password_and_builds_ntlm_user(kit) -> None:
    c = kit.make_config()
    assert "s3cret" not in repr(c)
    assert c.ntlm_user == "CONTOSO\\svc-portal"
    other = ConnectionConfig(org_url="x", username="OTHER\\bob", password="p", domain="CONTOSO")
    assert other.ntlm_user == "OTHER\\bob"
    assert ConnectionConfig(org_url="x", username="bob", password="p").ntlm_user == "bob"


def test_request_reads_body_and_counts(loopback_server, kit, caplog: pytest.LogCaptureFixture) -> None:
    base = loopback_server(_reply(200, b"<ok/>", {"Content-Type": "text/xml"}))
    with Transport(kit.make_config(base + PATH)) as t, caplog.at_level(logging.INFO, "portal.connectors.dynamics"):
        r = t.request("POST", base + PATH + "?email=a@b.com", data=b"<x/>")
        r2 = t.request("GET", base + PATH)
    assert (r.status, r.content, r2.status) == (200, b"<ok/>", 200)
    assert t.requests_sent == 2
    text = caplog.text
    assert "POST" in text and PATH in text and "a@b.com" not in text and "s3cret" not in text


def test_blocked_without_allowed_networks(loopback_server, kit) -> None:
    base = loopback_server(_reply(200))
    with Transport(kit.make_config(base + PATH, allowed_networks=())) as t, pytest.raises(BlockedUrlError):
        t.request("GET", base + PATH)
    assert t.requests_sent == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_response_size_cap(loopback_server, kit, chunked: bool) -> None:
    base = loopback_server(_reply(200, b"x" * 300_000, chunked=chunked))
    with Transport(kit.make_config(base + PATH, max_response_bytes=100_000)) as t, \
            pytest.raises(ResponseTooLargeError):
        t.request("GET", base + PATH)


def test_redirects_are_not_followed(loopback_server, kit) -> None:
    adfs = loopback_server(_reply(302, headers={"Location": "https://sts.contoso.com/adfs/ls/?wa=wsignin1.0"}))
    with Transport(kit.make_config(adfs + PATH)) as t, pytest.raises(ClaimsAuthError):
        t.request("GET", adfs + PATH)
    other = loopback_server(_reply(301, headers={"Location": "http://169.254.169.254/latest/meta-data"}))
    with Transport(kit.make_config(other + PATH)) as t, pytest.raises(NotDynamicsError) as info:
        t.request("GET", other + PATH)
    assert "does not follow redirects" in info.value.message


def test_401_without_windows_auth(loopback_server, kit) -> None:
    base = loopback_server(_reply(401, headers={"WWW-Authenticate": 'Bearer realm="x"'}))
    with Transport(kit.make_config(base + PATH)) as t, pytest.raises(AuthFailedError) as info:
        t.request("GET", base + PATH)
    assert "Bearer" in info.value.message


def test_401_ntlm_without_challenge(loopback_server, kit) -> None:
    base = loopback_server(_reply(401, headers={"WWW-Authenticate": "NTLM"}))
    with Transport(kit.make_config(base + PATH)) as t, pytest.raises(AuthFailedError):
        t.request("POST", base + PATH, data=b"<x/>")


def test_connection_refused_is_unreachable(kit) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}{PATH}"
    with Transport(kit.make_config(url)) as t, pytest.raises(UnreachableError):
        t.request("GET", url)


def test_read_timeout(loopback_server, kit) -> None:
    def slow(h) -> None:  # noqa: ANN001
        time.sleep(1.0)
        _reply(200)(h)

    base = loopback_server(slow)
    with Transport(kit.make_config(base + PATH, read_timeout=0.2)) as t, pytest.raises(RequestTimeoutError) as info:
        t.request("GET", base + PATH)
    assert info.value.retryable


def test_redact() -> None:
    text = "Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAA password=hunter2 Cookie: a=b"
    out = redact(text)
    assert "TlRMTVNT" not in out and "hunter2" not in out and "a=b" not in out


def test_pyspnego_token_logs_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    token = "TlRMTVNTUAADAAAAGAAYAFgAAACSAJIAcAAAAA4ADgACAQAAEAAQABABAAAEAAQA"
    assert "TlRMTVNT" not in redact(f"NTLM step output: {token}") and "TlRMTVNT" not in redact(token)
    with caplog.at_level(logging.DEBUG, "spnego._ntlm"):
        logging.getLogger("spnego._ntlm").debug("NTLM step output: %s", token)
    assert caplog.records and "TlRMTVNT" not in caplog.text
