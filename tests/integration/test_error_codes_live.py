"""Every error code of the Dynamics connector, each made to happen for real over loopback (sandbox, sockets, TLS)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from portal.connectors.dynamics import (
    ConnectionConfig,
    CreateRequest,
    DynamicsError,
    OrganizationService,
    Transport,
    test_connection,
)
from portal.connectors.dynamics import errors as errors_module
from portal.connectors.dynamics.soap import execute_multiple_envelope

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
PATH = "/demo/XRMServices/2011/Organization.svc/web"
MISSING_ID = "00000000-0000-0000-0000-0000000000a1"

# Transient failures: the portal may simply try again later. Everything else needs a person to act.
RETRYABLE = {"timeout", "server_busy", "server_error", "transient", "crm_in_use"}


def config(crm, **kw) -> ConnectionConfig:
    """The sandbox's connection settings (loopback allowed), with overrides."""
    values = {"org_url": crm.org_url, "username": crm.username, "password": crm.password, "domain": crm.domain,
              "allowed_networks": LOOPBACK, "connect_timeout": 5.0, "read_timeout": 30.0}
    values.update(kw)
    return ConnectionConfig(**values)


def failed_test(cfg: ConnectionConfig, step: str) -> DynamicsError:
    """Run the layered connection test, check it stopped at ``step``, and return its error."""
    result = test_connection(cfg)
    assert not result.ok and result.error is not None, result.to_dict()
    assert result.steps[-1].name == step and result.steps[-1].ok is False, result.to_dict()
    assert all(s.ok for s in result.steps[:-1])
    assert result.to_dict()["error"]["code"] == result.error.code
    return result.error


def raised(fn: Callable[[], object]) -> DynamicsError:
    """The DynamicsError that ``fn`` raises."""
    with pytest.raises(DynamicsError) as info:
        fn()
    return info.value


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- a loopback TLS server with a self-signed cert


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (trusted by nobody unless given as the CA bundle)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _NotFound(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"<html><body>404 - not here</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that refuse the certificate hang up mid-handshake: that is the point, not an error."""


@contextmanager
def https_server(folder: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; yields (base URL, certificate path)."""
    cert, key = self_signed(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _QuietServer(("127.0.0.1", 0), _NotFound)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---------------------------------------------------------------- the scenarios, one per error code


def invalid_url(crm, stack: ExitStack) -> DynamicsError:
    return failed_test(config(crm, org_url=f"ftp://127.0.0.1:{crm.port}{PATH}"), "URL check")


def blocked_url(crm, stack: ExitStack) -> DynamicsError:
    before = crm.stats()
    err = failed_test(config(crm, allowed_networks=()), "URL check")
    after = crm.stats()
    assert (after["http"], after["ntlm_401"], after["requests"]) == (before["http"], before["ntlm_401"],
                                                                    before["requests"])
    return err


def unreachable(crm, stack: ExitStack) -> DynamicsError:
    return failed_test(config(crm, org_url=f"http://127.0.0.1:{closed_port()}{PATH}"), "DNS and TCP")


def tls(crm, stack: ExitStack) -> DynamicsError:
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="portal-tls-")))
    base, cert = stack.enter_context(https_server(folder))
    err = failed_test(config(crm, org_url=base + PATH), "TLS")
    assert "not trusted" in err.message
    # The same server with its certificate as the CA bundle passes TLS: it was the trust that failed.
    trusted = test_connection(config(crm, org_url=base + PATH, ca_bundle=str(cert)))
    assert [(s.name, s.ok) for s in trusted.steps][2:4] == [("TLS", True), ("NTLM handshake", True)]
    assert trusted.error is not None and trusted.error.code == "not_dynamics"
    return err


def timeout(crm, stack: ExitStack) -> DynamicsError:
    crm.set_faults(latency_ms=1500)
    return failed_test(config(crm, read_timeout=0.3), "NTLM handshake")


def auth_failed(crm, stack: ExitStack) -> DynamicsError:
    before = crm.stats()["ntlm_failed"]
    err = failed_test(config(crm, password="Not-The-Password-9"), "NTLM handshake")
    assert crm.stats()["ntlm_failed"] > before  # the sandbox really refused the NTLM sign-in
    return err


def claims_auth(crm, stack: ExitStack) -> DynamicsError:
    crm.set_faults(claims_mode=True)
    return failed_test(config(crm), "NTLM handshake")


def not_dynamics(crm, stack: ExitStack) -> DynamicsError:
    # The sandbox answers 404 HTML for another organization's path, like IIS for a wrong URL.
    return failed_test(config(crm, org_url=f"{crm.base_url}/nosuchorg/XRMServices/2011/Organization.svc/web"),
                       "Organization Service")


def privilege(crm, stack: ExitStack) -> DynamicsError:
    crm.set_faults(missing_privilege="prvReadLead")
    err = failed_test(config(crm), "Read access")
    assert "lead" in err.message and "prvReadLead" in err.action
    return err


def lead_source_missing(crm, stack: ExitStack) -> DynamicsError:
    crm.set_platform_option(False)
    stack.callback(crm.set_platform_option, True)
    err = failed_test(config(crm), "Lead source option")
    assert "ZiftONE" in err.message
    return err


def server_busy(crm, stack: ExitStack) -> DynamicsError:
    crm.set_faults(busy_ratio=1)
    return failed_test(config(crm), "WhoAmI")


def server_error(crm, stack: ExitStack) -> DynamicsError:
    crm.set_faults(http500_ratio=1)
    return failed_test(config(crm), "WhoAmI")


def _service(crm, stack: ExitStack, **kw) -> OrganizationService:
    return OrganizationService(stack.enter_context(Transport(config(crm, **kw))))


def fault(crm, stack: ExitStack) -> DynamicsError:
    service = _service(crm, stack)
    err = raised(lambda: service.create("lead", {"lastname": "Fault", "nosuchattribute": "x"}))
    assert "nosuchattribute" in err.message
    return err


def not_found(crm, stack: ExitStack) -> DynamicsError:
    service = _service(crm, stack)
    return raised(lambda: service.retrieve("lead", MISSING_ID, ["lastname"]))


def duplicate(crm, stack: ExitStack) -> DynamicsError:
    service = _service(crm, stack)
    lead_id = service.create("lead", {"lastname": "Original"})
    return raised(lambda: service.create("lead", {"leadid": lead_id, "lastname": "Copy"}))


def response_too_large(crm, stack: ExitStack) -> DynamicsError:
    return failed_test(config(crm, max_response_bytes=300), "WhoAmI")


def batch_too_large(crm, stack: ExitStack) -> DynamicsError:
    service = _service(crm, stack)
    service.who_am_i()
    # Past the connector's own check, the server refuses an oversized batch with MaxBatchSize in its fault.
    envelope = execute_multiple_envelope([CreateRequest("lead", {"lastname": "B"})] * 1001)
    err = raised(lambda: service._post("Execute", envelope))
    assert "1001" in err.message
    return err


def transient(crm, stack: ExitStack) -> DynamicsError:
    service = _service(crm, stack)
    service.item_tries = 1  # no resend: the record's own fault comes back
    crm.set_faults(item_fault_ratio=1, item_fault_kind="deadlock")
    (item,) = service.execute_multiple([CreateRequest("lead", {"lastname": "Deadlock"})])
    assert not item.ok and "deadlock" in item.error.message
    return item.error


def crm_in_use(crm, stack: ExitStack, app) -> DynamicsError:
    """Every in-flight slot of the integration held (in Redis) by a run's batches: the test gets no turn."""
    from portal.sync import inflight

    stack.enter_context(app.app_context())
    slots = inflight.Slots(990_001)  # an integration of its own: its keys are not another test's
    tokens = [slots.acquire(1) for _ in range(slots.limit())]
    stack.callback(lambda: [slots.release(token) for token in tokens])
    turn = inflight.Turn(990_001, wait=0.3)
    stack.callback(turn.close)
    before = sum(crm.stats()["http"].values())
    result = test_connection(config(crm), gate=turn)
    assert not result.ok and result.error is not None and result.steps[-1].ok is False, result.to_dict()
    assert sum(crm.stats()["http"].values()) == before  # nothing was sent beside the run's batches
    return result.error


SCENARIOS: dict[str, Callable[..., DynamicsError]] = {
    "invalid_url": invalid_url,
    "blocked_url": blocked_url,
    "unreachable": unreachable,
    "tls": tls,
    "timeout": timeout,
    "auth_failed": auth_failed,
    "claims_auth": claims_auth,
    "not_dynamics": not_dynamics,
    "privilege": privilege,
    "lead_source_missing": lead_source_missing,
    "server_busy": server_busy,
    "server_error": server_error,
    "fault": fault,
    "not_found": not_found,
    "duplicate": duplicate,
    "response_too_large": response_too_large,
    "batch_too_large": batch_too_large,
    "transient": transient,
}
# Made to happen by the portal around the connector (its Redis slots): these scenarios take the app too.
APP_SCENARIOS: dict[str, Callable[..., DynamicsError]] = {"crm_in_use": crm_in_use}


@pytest.mark.parametrize("code", list(SCENARIOS))
def test_error_code_happens_for_real(crm, code: str) -> None:
    with ExitStack() as stack:
        err = SCENARIOS[code](crm, stack)
    check_error(err, code)


@pytest.mark.parametrize("code", list(APP_SCENARIOS))
def test_error_code_happens_for_real_in_the_portal(app, crm, code: str) -> None:
    with ExitStack() as stack:
        err = APP_SCENARIOS[code](crm, stack, app)
    check_error(err, code)


def check_error(err: DynamicsError, code: str) -> None:
    """The error has its code, says whether it is worth retrying, and what happened and what to do."""
    assert err.code == code, repr(err)
    assert err.retryable is (code in RETRYABLE)
    assert err.message.strip() and err.action.strip()
    assert err.to_dict() == {"code": code, "message": err.message, "action": err.action}


def test_every_code_of_the_connector_has_a_live_scenario() -> None:
    classes = [c for c in vars(errors_module).values()
               if isinstance(c, type) and issubclass(c, DynamicsError) and c is not DynamicsError]
    assert {c.code for c in classes} == set(SCENARIOS) | set(APP_SCENARIOS)
