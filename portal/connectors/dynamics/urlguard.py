"""URL guard: refuse CRM URLs that point at private, loopback, metadata or otherwise non-public addresses."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import BlockedUrlError, InvalidUrlError, UnreachableError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# One address and port the portal may reach although the address is not public (e.g. the local sandbox).
Endpoint = tuple[IPAddress, int]

# Ordered: the first matching network names the reason. Specific ranges come before broad ones.
_V4_RULES: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network("0.0.0.0/8"), "unspecified"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local (cloud metadata)"),
    (ipaddress.IPv4Network("10.0.0.0/8"), "private (RFC 1918)"),
    (ipaddress.IPv4Network("172.16.0.0/12"), "private (RFC 1918)"),
    (ipaddress.IPv4Network("192.168.0.0/16"), "private (RFC 1918)"),
    (ipaddress.IPv4Network("100.64.0.0/10"), "carrier-grade NAT"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("255.255.255.255/32"), "broadcast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved"),
    (ipaddress.IPv4Network("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (ipaddress.IPv4Network("192.0.2.0/24"), "reserved (documentation)"),
    (ipaddress.IPv4Network("198.51.100.0/24"), "reserved (documentation)"),
    (ipaddress.IPv4Network("203.0.113.0/24"), "reserved (documentation)"),
    (ipaddress.IPv4Network("198.18.0.0/15"), "reserved (benchmarking)"),
]
_V6_RULES: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network("::/128"), "unspecified"),
    (ipaddress.IPv6Network("::1/128"), "loopback"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("fec0::/10"), "site-local"),
    (ipaddress.IPv6Network("fc00::/7"), "unique-local"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
    (ipaddress.IPv6Network("2001:db8::/32"), "reserved (documentation)"),
    (ipaddress.IPv6Network("100::/64"), "reserved (discard)"),
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPAT = ipaddress.IPv6Network("::/96")

# One legacy IPv4 component: hex (0x..), octal (leading 0) or decimal.
_PART_RE = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def normalize_host(host: str) -> str:
    """Return the canonical IP for an IP literal in any legacy form (decimal, octal, hex, short), else the host."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith(".") and not h.endswith(".."):
        # A trailing dot is the absolute form of a DNS name; some resolvers also accept it on literals.
        h = h[:-1]
    try:
        return str(ipaddress.ip_address(h.split("%", 1)[0]))
    except ValueError:
        pass
    legacy = _parse_legacy_ipv4(h)
    return str(legacy) if legacy is not None else h


def _parse_legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse the forms inet_aton accepts (1 to 4 parts, each hex/octal/decimal), or return None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_PART_RE.match(p) for p in parts):
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None  # e.g. "08": not octal, and inet_aton refuses it too
    # All parts but the last are single bytes; the last fills the remaining bytes (127.1 = 127.0.0.1).
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(value)


def _parse_ip(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    return ipaddress.ip_address(normalize_host(ip))


def classify_address(ip_string: str | IPAddress) -> str | None:
    """Return why an address is refused ("loopback", "private (RFC 1918)"...), or None if it is public."""
    try:
        ip = _parse_ip(ip_string)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that embed an IPv4 address are judged by the embedded address too.
        if ip.ipv4_mapped is not None:
            inner = classify_address(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        for network, reason in _V6_RULES:
            if ip in network:
                return reason
        if ip in _V4_COMPAT:
            return "reserved (IPv4-compatible)"
        if ip in _NAT64:
            inner = classify_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"NAT64 {inner}" if inner else None
        if ip.sixtofour is not None:
            inner = classify_address(ip.sixtofour)
            if inner:
                return f"6to4 {inner}"
        if ip.teredo is not None:
            server, client = ip.teredo
            inner = classify_address(client) or classify_address(server)
            if inner:
                return f"Teredo {inner}"
        return None if ip.is_global else "reserved"
    for network, reason in _V4_RULES:
        if ip in network:
            return reason
    return None if ip.is_global else "reserved"


def parse_allowed_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated list of networks ("10.0.0.0/8, 192.168.1.5") into network objects."""
    networks: list[IPNetwork] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"Invalid network in allowed networks: {item!r}") from exc
    return tuple(networks)


def parse_allowed_endpoints(text: str | None) -> tuple[Endpoint, ...]:
    """Parse a comma-separated list of IP:port entries ("127.0.0.1:5555, [::1]:5555") into endpoints."""
    endpoints: list[Endpoint] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        try:
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(item)
            endpoints.append((ipaddress.ip_address(host.removeprefix("[").removesuffix("]")), int(port)))
        except ValueError as exc:
            raise ValueError(f"Invalid endpoint in allowed endpoints (IP:port expected): {item!r}") from exc
    return tuple(endpoints)


def _unmapped(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_allowed_endpoint(ip: str | IPAddress, port: int | None, allowed_endpoints: Iterable[Endpoint]) -> bool:
    """True when exactly this address and port are allowed (an IPv4-mapped address counts as IPv4)."""
    if port is None:
        return False
    addr = _unmapped(_parse_ip(ip))
    return any(addr == _unmapped(a) and port == p for a, p in allowed_endpoints)


def is_allowed(ip: str | IPAddress, allowed_networks: Iterable[IPNetwork]) -> bool:
    """True when the address is inside one of the allowed networks (an IPv4-mapped address counts as IPv4)."""
    addr = _parse_ip(ip)
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(c.version == net.version and c in net for c in candidates for net in allowed_networks)


def check_address(ip: str, allowed_networks: Sequence[IPNetwork], host: str = "", *, port: int | None = None,
                  allowed_endpoints: Sequence[Endpoint] = ()) -> None:
    """Raise BlockedUrlError when the address is not public, not in an allowed network, and with this port
    not an allowed endpoint."""
    reason = classify_address(ip)
    if reason is None or is_allowed(ip, allowed_networks) or is_allowed_endpoint(ip, port, allowed_endpoints):
        return
    shown = f"{host} ({ip})" if host and host != ip else ip
    raise BlockedUrlError(
        f"The CRM address {shown} is a {reason} address; the portal only connects to public addresses.",
        detail=reason,
    )


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the guard, with the parts the transport needs."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def split_url(url: str) -> tuple[str, str, int]:
    """Validate scheme and host and return (scheme, host, port); raise InvalidUrlError otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidUrlError("The URL is empty.")
    url = url.strip()
    if any(ch.isspace() for ch in url):
        raise InvalidUrlError("The URL contains spaces.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrlError(f"The URL is malformed: {exc}.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidUrlError("The URL must start with http:// or https://.")
    if not parts.hostname:
        raise InvalidUrlError("The URL has no host name.")
    if parts.username or parts.password:
        # Credentials in the URL would bypass the password field and end up in logs.
        raise InvalidUrlError("The URL must not contain a user name or password; use the fields for them.")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Resolve a host to its addresses through the OS resolver; raise UnreachableError on DNS failure."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnreachableError(
            f"The host name {host} could not be resolved.", detail=str(exc)
        ) from exc
    addresses: list[str] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise UnreachableError(f"The host name {host} has no addresses.")
    return tuple(addresses)


def check_url(url: str, allowed_networks: Sequence[IPNetwork] = (),
              allowed_endpoints: Sequence[Endpoint] = ()) -> CheckedUrl:
    """Validate a CRM URL and refuse it if ANY address it resolves to is non-public and not allowed."""
    scheme, host, port = split_url(url)
    canonical = normalize_host(host)
    try:
        ipaddress.ip_address(canonical)
        addresses: tuple[str, ...] = (canonical,)
    except ValueError:
        addresses = resolve(host, port)
    for addr in addresses:
        check_address(addr, allowed_networks, host, port=port, allowed_endpoints=allowed_endpoints)
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=addresses)
