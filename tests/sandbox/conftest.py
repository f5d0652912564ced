"""Fixtures for the sandbox tests: one seeded sandbox per session and NTLM SOAP clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.testing import SandboxServer

from .soapclient import Soap


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    """A seeded sandbox shared by the session; tests use unique data and clear their faults."""
    with SandboxServer(seed=True, platform_option=True) as server:
        yield server


@pytest.fixture
def soap(sandbox: SandboxServer) -> Iterator[Soap]:
    """An authenticated SOAP client for the default user."""
    client = Soap(sandbox.org_url, sandbox.qualified_username, sandbox.password)
    yield client
    client.close()


@pytest.fixture
def clean_faults(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    """The sandbox, with injected faults removed afterwards."""
    yield sandbox
    sandbox.clear_faults()
