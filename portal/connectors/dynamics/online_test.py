"""The connection test for Dynamics 365 online: the same layered steps, with the sign-in explained per culprit."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from .auth import MemoryTokenCache, OnlineConfig, TokenProvider
from .diagnostics import ConnectionTestResult, Step, StepRunner, _Stop, _tcp_connect, _tls_handshake, check_read_access
from .errors import DynamicsError, InvalidUrlError, LeadSourceMissingError, ServerBusyError
from .soap import find_option_value
from .transport import Gate
from .urlguard import CheckedUrl, check_url
from .webapi import BearerTransport, ThrottledError, WebApiService


def test_online_connection(
    config: OnlineConfig,
    platform_name: str = "ZiftONE",
    on_step: Callable[[Step], None] | None = None,
    gate: Gate | None = None,
) -> ConnectionTestResult:
    """Run the online connection test steps in order, stopping at the first failure.

    With a ``gate`` each request to the environment waits for a turn, and 429s and Server Busy are reported to it.
    """
    result = ConnectionTestResult()

    def on_fail(name: str, error: DynamicsError) -> DynamicsError:
        # Each 429 was reported by the transport as it came; a Server Busy of another kind is reported here.
        if gate is not None and isinstance(error, ServerBusyError) and not isinstance(error, ThrottledError):
            gate.busy()
        return error

    steps = StepRunner(result, on_step, on_fail)
    done, run = steps.done, steps.run

    # A provider and a cache of its own: the test must really ask Entra, not reuse a token got earlier.
    provider = TokenProvider(config, cache=MemoryTokenCache(size=1))
    transport: BearerTransport | None = None
    try:
        def url_check() -> CheckedUrl:
            checked = check_url(config.environment_url, config.allowed_networks, config.allowed_endpoints)
            if checked.scheme != "https":
                raise InvalidUrlError("The environment URL must start with https://.",
                                      action="Copy the Environment URL from the Power Platform admin center.")
            if urlsplit(config.environment_url).path.strip("/") not in ("", "api/data/v9.2"):
                raise InvalidUrlError("The environment URL is the address alone, without a path.",
                                      action="Enter it as https://<org>.crm<N>.dynamics.com.")
            return checked

        checked: CheckedUrl = run("URL check", url_check)
        done("URL check", True, f"{checked.scheme}://{checked.host}:{checked.port}")

        sock = run("DNS and TCP", lambda: _tcp_connect(checked, config))  # type: ignore[arg-type]
        peer = sock.getpeername()[0]
        done("DNS and TCP", True, f"connected to {peer} port {checked.port}")
        try:
            detail = run("TLS", lambda: _tls_handshake(sock, checked.host, config))  # type: ignore[arg-type]
            done("TLS", True, detail)
        finally:
            sock.close()

        def sign_in() -> str:
            provider.token()
            kind = "certificate" if config.certificate_pem.strip() else "client secret"
            return f"token for application {config.client_id} from tenant {config.tenant_id} ({kind})"

        done("Sign-in (Microsoft Entra ID)", True, run("Sign-in (Microsoft Entra ID)", sign_in))

        transport = BearerTransport(config, provider=provider)
        transport.gate = gate
        service = WebApiService(transport)
        me = run("Application user", service.who_am_i)
        done("Application user", True, f"user {me.user_id}")
        result.user_id, result.organization_id = me.user_id, me.organization_id
        result.business_unit_id = me.business_unit_id

        version = run("Version", service.retrieve_version)
        result.version = version
        done("Version", True, f"{version} (Dynamics 365 online)")

        read_action = ("Give the application user a security role that can read leads, contacts, marketing lists, "
                       "campaigns and opportunities (for example Sales Manager).")
        done("Read access", True, run("Read access", lambda: check_read_access(service, "application user",
                                                                                 read_action)))

        def lead_source() -> int:
            value = find_option_value(service.retrieve_option_set("lead", "leadsourcecode"), platform_name)
            if value is None:
                raise LeadSourceMissingError(
                    f"The Lead Source field of Lead has no option named {platform_name}.",
                    action=(f"Add the option {platform_name} in make.powerapps.com > Tables > Lead > Columns > "
                            "Lead Source > Choices, save and publish. Or let the portal add it (the application "
                            "user needs the System Customizer role)."),
                )
            return value

        result.lead_source_value = run("Lead source option", lead_source)
        done("Lead source option", True, f"{platform_name} = {result.lead_source_value}")
        result.ok = True
    except _Stop:
        result.ok = False
    finally:
        if transport is not None:
            transport.close()
        provider.close()
    return result


# Keep pytest from collecting this function when a test module imports it.
test_online_connection.__test__ = False  # type: ignore[attr-defined]
