"""The URL guard: address classification, legacy IPv4 forms, check_url and the peer-address check."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from portal.connectors.dynamics import transport as transport_mod
from portal.connectors.dynamics.errors import BlockedUrlError, InvalidUrlError, UnreachableError
from portal.connectors.dynamics.transport import Transport
from portal.connectors.dynamics.urlguard import (
    check_url,
    classify_address,
    is_allowed,
    normalize_host,
    parse_allowed_networks,
)


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("10.0.0.1", "private (RFC 1918)"),
        ("10.255.255.255", "private (RFC 1918)"),
        ("172.16.0.1", "private (RFC 1918)"),
        ("172.31.255.254", "private (RFC 1918)"),
        ("192.168.1.10", "private (RFC 1918)"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - a string under test, nothing binds
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("192.0.2.1", "reserved (documentation)"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "IPv4-mapped private (RFC 1918)"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local (cloud metadata)"),
        ("2002:a00:1::1", "6to4 private (RFC 1918)"),
        ("64:ff9b::a00:1", "NAT64 private (RFC 1918)"),
        ("2001:db8::1", "reserved (documentation)"),
    ],
)
def test_classify_refused(ip: str, reason: str) -> None:
    assert classify_address(ip) == reason


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "20.42.0.1", "2606:4700::1", "2a00:1450:4001::1",
                                "::ffff:8.8.8.8", "172.32.0.1", "100.128.0.1", "11.0.0.1"])
def test_classify_public(ip: str) -> None:
    assert classify_address(ip) is None


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("167772161", "10.0.0.1"),
        ("012.0.0.1", "10.0.0.1"),
        ("0xa.0.0.1", "10.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0xa000001", "10.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[FE80::1]", "fe80::1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("crm.example.com", "crm.example.com"),
        ("CRM.Example.com", "crm.example.com"),
        ("0x7g.0.0.1", "0x7g.0.0.1"),
        ("08.0.0.1", "08.0.0.1"),
        ("256.0.0.1", "256.0.0.1"),
    ],
)
def test_normalize_host(host: str, canonical: str) -> None:
    got = normalize_host(host)
    try:
        # Addresses, not their spelling: Python 3.13 prints IPv4-mapped addresses as ::ffff:127.0.0.1.
        assert ipaddress.ip_address(got) == ipaddress.ip_address(canonical)
    except ValueError:
        assert got == canonical


@pytest.mark.parametrize("form", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "012.0.0.1", "0xa.0.0.1",
                                  "10.1", "167772161", "1.2.3", "0x1.0x2.0x3.0x4", "255.255.255.255"])
def test_legacy_forms_agree_with_inet_aton(form: str) -> None:
    # inet_aton is pure parsing (no traffic); our parser must read the forms the same way.
    expected = socket.inet_ntoa(socket.inet_aton(form))
    assert normalize_host(form) == expected


@pytest.mark.parametrize("form", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1"])
def test_legacy_loopback_forms_are_refused(form: str) -> None:
    assert classify_address(form) == "loopback"
    with pytest.raises(BlockedUrlError):
        check_url(f"http://{form}/ORG/XRMServices/2011/Organization.svc/web")


@pytest.mark.parametrize("form", ["167772161", "012.0.0.1", "0xa.0.0.1", "10.1"])
def test_legacy_private_forms_are_refused(form: str) -> None:
    assert classify_address(form) == "private (RFC 1918)"


def test_parse_allowed_networks_and_is_allowed() -> None:
    nets = parse_allowed_networks(" 10.0.0.0/8, 192.168.1.5 ,fd00::/8,")
    assert nets == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.5/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert is_allowed("10.1.2.3", nets)
    assert is_allowed("::ffff:10.1.2.3", nets)
    assert not is_allowed("192.168.1.6", nets)
    assert is_allowed("fd00::5", nets)
    assert parse_allowed_networks("") == ()
    assert parse_allowed_networks(None) == ()
    with pytest.raises(ValueError):
        parse_allowed_networks("10.0.0.0/33")


@pytest.mark.parametrize(
    "url",
    ["ftp://crm.example.com/", "file:///etc/passwd", "http://", "crm.example.com/ORG", "",
     "http://user:pw@crm.example.com/", "http://crm.example.com:99999/", "javascript:alert(1)"],
)
def test_check_url_invalid(url: str) -> None:
    with pytest.raises(InvalidUrlError):
        check_url(url)


def test_check_url_loopback_literal_and_localhost_blocked() -> None:
    with pytest.raises(BlockedUrlError) as info:
        check_url("http://127.0.0.1:5555/ORG/XRMServices/2011/Organization.svc/web")
    assert "loopback" in info.value.message
    with pytest.raises(BlockedUrlError):
        check_url("http://localhost/ORG/XRMServices/2011/Organization.svc/web")
    with pytest.raises(BlockedUrlError):
        check_url("http://[::1]/x")


def test_check_url_loopback_allowed_by_network() -> None:
    checked = check_url("http://127.0.0.1:5555/ORG/x", parse_allowed_networks("127.0.0.0/8"))
    assert checked.addresses == ("127.0.0.1",)
    assert checked.port == 5555


def _fake_resolver(mapping: dict[str, list[str]]):
    def getaddrinfo(host, port, *args, **kwargs):  # noqa: ANN001, ANN202 - mirrors socket.getaddrinfo
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in mapping[host]:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, port, 0, 0) if family == socket.AF_INET6 else (addr, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return getaddrinfo


def test_check_url_name_resolving_to_private_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_resolver({"crm.example.com": ["10.0.0.5"]}))
    with pytest.raises(BlockedUrlError) as info:
        check_url("https://crm.example.com/ORG/XRMServices/2011/Organization.svc/web")
    assert "10.0.0.5" in info.value.message and "RFC 1918" in info.value.message


def test_check_url_any_private_address_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_resolver({"crm.example.com": ["8.8.8.8", "169.254.169.254"]}))
    with pytest.raises(BlockedUrlError):
        check_url("https://crm.example.com/x")


def test_check_url_public_and_allowed_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_resolver({
        "crm.example.com": ["8.8.8.8", "2606:4700::1"],
        "crm.internal.example": ["10.20.30.40"],
    }))
    assert check_url("https://crm.example.com/x").addresses == ("8.8.8.8", "2606:4700::1")
    allowed = parse_allowed_networks("10.20.0.0/16")
    assert check_url("https://crm.internal.example/x", allowed).addresses == ("10.20.30.40",)


def test_check_url_dns_failure_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_resolver({}))
    with pytest.raises(UnreachableError) as info:
        check_url("https://nowhere.example.com/x")
    assert info.value.code == "unreachable"


def test_peer_address_is_checked_after_connect(loopback_server, kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name passed the guard, but the connection lands on loopback and is refused."""

    def handle(h) -> None:  # noqa: ANN001
        h.send_response(200)
        h.send_header("Content-Length", "0")
        h.end_headers()

    base = loopback_server(handle)
    # Simulate a resolver that said "public" at check time; the socket then connects to 127.0.0.1.
    monkeypatch.setattr(transport_mod, "check_url", lambda url, allowed, endpoints=(): None)
    t = Transport(kit.make_config(base + "/ORG/XRMServices/2011/Organization.svc/web", allowed_networks=()))
    with pytest.raises(BlockedUrlError) as info:
        t.request("GET", base + "/ORG/XRMServices/2011/Organization.svc/web")
    assert "loopback" in info.value.message
    t.close()


def test_allowed_endpoint_allows_exactly_that_address_and_port() -> None:
    from portal.connectors.dynamics.urlguard import check_url, parse_allowed_endpoints

    endpoints = parse_allowed_endpoints("127.0.0.1:5555, [::1]:6000")
    assert check_url("http://127.0.0.1:5555/demo/XRMServices/2011/Organization.svc/web", (), endpoints)
    assert check_url("http://[::1]:6000/x/web", (), endpoints)
    assert check_url("http://[::ffff:127.0.0.1]:5555/x/web", (), endpoints)  # the same address, mapped
    for other in ("http://127.0.0.1:6379/", "http://127.0.0.1/", "http://127.0.0.2:5555/", "http://[::1]:5555/"):
        with pytest.raises(BlockedUrlError):
            check_url(other, (), endpoints)


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "crm.local:80", "::1:80x"])
def test_allowed_endpoints_must_be_address_and_port(bad: str) -> None:
    from portal.connectors.dynamics.urlguard import parse_allowed_endpoints

    with pytest.raises(ValueError, match="IP:port"):
        parse_allowed_endpoints(bad)
