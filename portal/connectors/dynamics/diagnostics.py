"""The "Test CRM connection" check: ordered steps that stop at the first failure, each explained."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import (
    DynamicsError,
    LeadSourceMissingError,
    NotDynamicsError,
    PrivilegeError,
    RequestTimeoutError,
    ServerBusyError,
    TlsError,
    UnreachableError,
)
from .odata import ODataClient
from .soap import OrganizationService, fetch_xml, find_option_value, version_name
from .transport import ConnectionConfig, Gate, Transport
from .urlguard import CheckedUrl, check_address, check_url

log = logging.getLogger("portal.connectors.dynamics")

# Text attributes the sync writes, whose MaxLength the test reads from the CRM's metadata.
WRITTEN_TEXT = {
    "lead": ("subject", "firstname", "lastname", "companyname", "jobtitle", "emailaddress1", "telephone1",
             "mobilephone", "websiteurl", "address1_line1", "address1_line2", "address1_city",
             "address1_stateorprovince", "address1_postalcode", "address1_country", "description"),
    "contact": ("firstname", "lastname", "jobtitle", "emailaddress1", "telephone1", "mobilephone", "websiteurl",
                "address1_line1", "address1_line2", "address1_city", "address1_stateorprovince",
                "address1_postalcode", "address1_country", "description"),
}

READ_ENTITIES = (
    ("lead", "leadid"),
    ("contact", "contactid"),
    ("list", "listid"),
    ("campaign", "campaignid"),
    ("opportunity", "opportunityid"),
)


def check_read_access(service: Any, who: str, action: str | None = None) -> str:
    """Read one record of each entity the sync uses; a missing privilege says which entity and ``who`` lacks it."""
    counts = []
    for entity, key in READ_ENTITIES:
        try:
            page = service.retrieve_multiple(fetch_xml(entity, [key], page_size=1))
        except PrivilegeError as exc:
            raise PrivilegeError(
                f"The {who} cannot read {entity} records: {exc.message}",
                privilege=exc.privilege, error_code=exc.error_code, detail=exc.detail,
                action=action or exc.action,
            ) from exc
        counts.append(f"{entity} ok" if page.entities else f"{entity} ok (none yet)")
    return ", ".join(counts)


@dataclass
class Step:
    """One step of the connection test."""

    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The step as JSON-ready data."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class ConnectionTestResult:
    """The outcome of a connection test: the steps run, what was learned, and the error if any."""

    ok: bool = False
    steps: list[Step] = field(default_factory=list)
    user_id: str | None = None
    organization_id: str | None = None
    business_unit_id: str | None = None
    version: str | None = None
    lead_source_value: int | None = None
    # MaxLength of the text attributes the sync writes, by entity then attribute (customized CRMs differ).
    max_lengths: dict[str, dict[str, int]] = field(default_factory=dict)
    error: DynamicsError | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data for the page and the database."""
        return {
            "ok": self.ok,
            "steps": [s.to_dict() for s in self.steps],
            "user_id": self.user_id,
            "organization_id": self.organization_id,
            "version": self.version,
            "lead_source_value": self.lead_source_value,
            "max_lengths": self.max_lengths,
            "error": self.error.to_dict() if self.error else None,
        }


class _Stop(Exception):
    """Internal: a step failed and the test ends."""


class StepRunner:
    """A connection test's steps as they happen: each one reported when it ends, the first failure ends the test.

    ``on_fail`` may say a failure in other words (or tell the gate of a Server Busy) before it is kept.
    """

    def __init__(self, result: ConnectionTestResult, on_step: Callable[[Step], None] | None = None,
                 on_fail: Callable[[str, DynamicsError], DynamicsError] | None = None):
        self.result, self.on_step, self.on_fail = result, on_step, on_fail

    def done(self, name: str, ok: bool, detail: str = "") -> None:
        """Keep a step's outcome and report it."""
        step = Step(name, ok, detail)
        self.result.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)

    def fail(self, name: str, error: DynamicsError) -> None:
        """The step failed: keep the error and end the test (``_Stop``)."""
        if self.on_fail is not None:
            error = self.on_fail(name, error)
        self.result.error = error
        self.done(name, False, error.message)
        raise _Stop

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run a step's work; whatever goes wrong is reported as the step's failure, never a crash."""
        try:
            return fn()
        except DynamicsError as exc:
            self.fail(name, exc)
        except _Stop:
            raise
        except Exception as exc:  # the test must report, not crash, whatever goes wrong
            log.exception("Unexpected error in connection test step %s", name)
            self.fail(name, DynamicsError(f"Unexpected error: {type(exc).__name__}.", detail=str(exc)[:500]))


def _check_org_path(url: str) -> None:
    path = urlsplit(url).path.rstrip("/").lower()
    if path.endswith("/organization.svc"):
        raise NotDynamicsError("The Organization Service URL must end with /web.",
                               action="Append /web to the Organization Service URL from Developer Resources.")
    if not path.endswith("/organization.svc/web"):
        raise NotDynamicsError("The URL does not end with /XRMServices/2011/Organization.svc/web.")


def _tcp_connect(checked: CheckedUrl, config: ConnectionConfig) -> socket.socket:
    try:
        sock = socket.create_connection((checked.host, checked.port), timeout=config.connect_timeout)
    except TimeoutError as exc:
        raise RequestTimeoutError(f"Connecting to {checked.host}:{checked.port} timed out.") from exc
    except socket.gaierror as exc:
        raise UnreachableError(f"The host name {checked.host} could not be resolved.", detail=str(exc)) from exc
    except OSError as exc:
        raise UnreachableError(f"{checked.host}:{checked.port} could not be reached: {exc.strerror or exc}.",
                               detail=str(exc)) from exc
    try:
        # Check the address actually connected to, not the one resolved a moment ago.
        check_address(str(sock.getpeername()[0]).split("%", 1)[0], config.allowed_networks, checked.host,
                      port=sock.getpeername()[1], allowed_endpoints=config.allowed_endpoints)
    except DynamicsError:
        sock.close()
        raise
    return sock


def _tls_handshake(sock: socket.socket, host: str, config: ConnectionConfig) -> str:
    if config.verify_tls:
        context = ssl.create_default_context(cafile=config.ca_bundle)
    else:
        # The admin turned verification off explicitly for this connection.
        context = ssl._create_unverified_context()  # noqa: S323
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version() or "TLS"
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        raise TlsError(f"The certificate of {host} is not trusted: {exc.verify_message}.", detail=str(exc)) from exc
    except ssl.SSLError as exc:
        raise TlsError(f"The TLS handshake with {host} failed ({exc.reason}); the server may only offer an "
                       "old TLS version.", detail=str(exc)) from exc
    except TimeoutError as exc:
        raise RequestTimeoutError(f"The TLS handshake with {host} timed out.") from exc
    expires = cert.get("notAfter")
    return f"{version}, certificate valid until {expires}" if expires else version


TIME_LIMIT = 50.0  # seconds: a connection test ends within a minute, whatever the server does


def test_connection(
    config: ConnectionConfig,
    platform_name: str = "ZiftONE",
    on_step: Callable[[Step], None] | None = None,
    transport: Transport | None = None,
    time_limit: float = TIME_LIMIT,
    gate: Gate | None = None,
) -> ConnectionTestResult:
    """Run the connection test steps in order, stopping at the first failure; the whole test ends in time_limit.

    With a ``gate`` each request waits for a turn of the CRM, and a Server Busy answer is reported to it.
    """
    result = ConnectionTestResult()
    own_transport = transport is None
    until = time.monotonic() + time_limit

    def on_fail(name: str, error: DynamicsError) -> DynamicsError:
        if isinstance(error, RequestTimeoutError) and time.monotonic() >= until - 0.5:
            error = RequestTimeoutError(
                f"The CRM did not answer within the {time_limit:.0f} s a connection test may take "
                f"(it stopped at the step {name}).", detail=error.message)
        if gate is not None and isinstance(error, ServerBusyError):
            gate.busy()
        return error

    steps = StepRunner(result, on_step, on_fail)
    done, fail, run = steps.done, steps.fail, steps.run

    t: Transport | None = transport
    try:
        def url_check() -> CheckedUrl:
            checked = check_url(config.org_url, config.allowed_networks, config.allowed_endpoints)
            _check_org_path(config.org_url)
            return checked

        checked: CheckedUrl = run("URL check", url_check)
        done("URL check", True, f"{checked.scheme}://{checked.host}:{checked.port}")

        sock = run("DNS and TCP", lambda: _tcp_connect(checked, config))
        peer = sock.getpeername()[0]
        done("DNS and TCP", True, f"connected to {peer} port {checked.port}")
        try:
            if checked.scheme == "https":
                detail = run("TLS", lambda: _tls_handshake(sock, checked.host, config))
                done("TLS", True, detail)
            else:
                done("TLS", True, "plain HTTP (NTLM protects the password, not the data)")
        finally:
            sock.close()

        if t is None:
            t = Transport(config)
        tr = t
        tr.until = until
        if gate is not None:
            tr.gate = gate
        service = OrganizationService(tr)
        before = tr.handshakes

        run("NTLM handshake", tr.warm_up)
        done("NTLM handshake", True,
             f"signed in as {config.ntlm_user}" if tr.handshakes > before else "the server did not ask to sign in")

        try:
            me = service.who_am_i()
        except NotDynamicsError as exc:
            fail("Organization Service", exc)
        except DynamicsError as exc:
            if exc.code in ("auth_failed", "claims_auth", "unreachable", "tls", "timeout", "blocked_url"):
                fail("Organization Service", exc)
            done("Organization Service", True, "the endpoint is a Dynamics Organization Service")
            fail("WhoAmI", exc)
        else:
            done("Organization Service", True, "the endpoint is a Dynamics Organization Service")
            done("WhoAmI", True, f"user {me.user_id}")
        result.user_id, result.organization_id = me.user_id, me.organization_id
        result.business_unit_id = me.business_unit_id

        version = run("Version", service.retrieve_version)
        result.version = version
        done("Version", True, f"{version} ({version_name(version)})")

        done("Read access", True, run("Read access", lambda: check_read_access(service, "CRM user")))

        def lead_source() -> int:
            options = service.retrieve_option_set("lead", "leadsourcecode")
            value = find_option_value(options, platform_name)
            if value is None:
                raise LeadSourceMissingError(
                    f"The Lead Source field of Lead has no option named {platform_name}.",
                    action=(
                        f"Add the option {platform_name} as in step 1 of the integration guide: Settings > "
                        "Customizations > Customize the System > Entities > Lead > Fields > Lead Source; add the "
                        "option, save and publish. Or let the portal add it (the CRM user needs customization "
                        "privileges)."
                    ),
                )
            return value

        result.lead_source_value = run("Lead source option", lead_source)
        done("Lead source option", True, f"{platform_name} = {result.lead_source_value}")

        try:
            for entity, names in WRITTEN_TEXT.items():
                lengths = service.retrieve_max_lengths(entity)
                result.max_lengths[entity] = {n: lengths[n] for n in names if n in lengths}
            lead = result.max_lengths.get("lead", {})
            done("Field lengths", True, ", ".join(f"{n} {lead[n]}" for n in ("firstname", "companyname",
                                                                              "address1_city") if n in lead))
        except DynamicsError as exc:
            # Not fatal: records are then checked against the usual limits of an unmodified CRM.
            result.max_lengths = {}
            done("Field lengths", True, f"not read ({exc.message}); the usual limits apply")

        if config.odata_url:
            def odata() -> str:
                check_url(config.odata_url or "", config.allowed_networks, config.allowed_endpoints)
                info = ODataClient(tr, config.odata_url).ping()
                return "Web API answered" if info["flavour"] == "webapi" else "OData v2 answered"

            done("OData", True, run("OData", odata))
        else:
            done("OData", True, "not configured")
        result.ok = True
    except _Stop:
        result.ok = False
    finally:
        if own_transport and t is not None:
            t.close()
    return result


# Keep pytest from collecting this function when a test module imports it.
test_connection.__test__ = False  # type: ignore[attr-defined]
