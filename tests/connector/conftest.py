"""Fixtures for the Dynamics connector tests: fixture files, a fake transport and a loopback HTTP server."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from portal.connectors.dynamics.transport import ConnectionConfig, HttpResponse
from tests.fixtures import DYNAMICS, dynamics_bytes

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def fixtures_dir() -> Path:
    """The captured Dynamics responses kept in the repository (tests/fixtures/dynamics)."""
    return DYNAMICS


def fixture_bytes(relative: str) -> bytes:
    """Read one fixture file as bytes; a missing file fails the test with its name."""
    return dynamics_bytes(relative)


DEFAULT_URL = "http://127.0.0.1:1/ORG/XRMServices/2011/Organization.svc/web"


def make_config(url: str = DEFAULT_URL, **kw: Any) -> ConnectionConfig:
    """A config for loopback tests (loopback explicitly allowed)."""
    values: dict[str, Any] = {
        "org_url": url,
        "username": "svc-portal",
        "password": "s3cret-Pa55",
        "domain": "CONTOSO",
        "allowed_networks": LOOPBACK,
    }
    values.update(kw)
    return ConnectionConfig(**values)


@dataclass
class FakeTransport:
    """Stands in for Transport: records requests and answers from a queue (or a function)."""

    responses: list[HttpResponse | Callable[[str, str, dict[str, str], bytes | None], HttpResponse]] = field(
        default_factory=list
    )
    config: ConnectionConfig = field(default_factory=make_config)
    authenticated: bool = True
    calls: list[dict[str, Any]] = field(default_factory=list)
    requests_sent: int = 0
    handshakes: int = 0

    def request(self, method: str, url: str, *, headers: Any = None, data: bytes | None = None) -> HttpResponse:
        """Record the call and return the next queued response."""
        self.requests_sent += 1
        self.calls.append({"method": method, "url": url, "headers": dict(headers or {}), "data": data})
        item = self.responses.pop(0)
        if callable(item):
            return item(method, url, dict(headers or {}), data)
        return item


def http_response(content: bytes, status: int = 200, content_type: str = "text/xml; charset=utf-8",
                  url: str = "http://127.0.0.1/") -> HttpResponse:
    """A canned HttpResponse."""
    return HttpResponse(status, {"Content-Type": content_type}, content, url, 0.0)


class Kit:
    """Helpers handed to tests through the `kit` fixture (test modules cannot import conftest reliably)."""

    fixtures_dir = staticmethod(fixtures_dir)
    fixture_bytes = staticmethod(fixture_bytes)
    make_config = staticmethod(make_config)
    http_response = staticmethod(http_response)
    FakeTransport = FakeTransport
    LOOPBACK = LOOPBACK


@pytest.fixture
def kit() -> type[Kit]:
    """The helper kit."""
    return Kit


@pytest.fixture
def fake_transport() -> FakeTransport:
    """An empty FakeTransport; tests queue responses on it."""
    return FakeTransport()


Handler = Callable[[BaseHTTPRequestHandler], None]


class _QuietServer(ThreadingHTTPServer):
    """A test server that does not print the tracebacks of clients that hang up on purpose (timeouts)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def loopback_server() -> Iterator[Callable[[Handler], str]]:
    """Start HTTP servers on 127.0.0.1 with a given handler function; returns their base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(handle: Handler) -> str:
        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                handle(self)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        server = _QuietServer(("127.0.0.1", 0), _H)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
