"""One door for the sync engine and the jobs: the right service and connection test for a connection's kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .auth import OnlineConfig
from .diagnostics import ConnectionTestResult, Step, test_connection
from .soap import OrganizationService
from .transport import ConnectionConfig, Gate, Transport
from .webapi import BearerTransport, WebApiService

AnyConfig = ConnectionConfig | OnlineConfig


def open_service(config: AnyConfig, batch_limit: int | None = None) -> tuple[Any, Transport]:
    """A service with the Organization Service's methods, and the transport to close after use."""
    if isinstance(config, OnlineConfig):
        bearer = BearerTransport(config)
        return WebApiService(bearer), bearer
    transport = Transport(config)
    if batch_limit is None:
        return OrganizationService(transport), transport
    return OrganizationService(transport, batch_limit=batch_limit), transport


def run_connection_test(config: AnyConfig, platform_name: str = "ZiftONE",
                        on_step: Callable[[Step], None] | None = None,
                        gate: Gate | None = None) -> ConnectionTestResult:
    """The layered connection test of the connection's kind (each request through ``gate`` when given)."""
    if isinstance(config, OnlineConfig):
        from .online_test import test_online_connection

        return test_online_connection(config, platform_name, on_step, gate=gate)
    return test_connection(config, platform_name, on_step, gate=gate)
