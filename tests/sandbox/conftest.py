"""Fixtures for the sandbox tests: one seeded sandbox per session and NTLM SOAP clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.testing import SandboxServer

from .soapclient import Soap


def shared_dir() -> Path:
    """The shared folder with the captured fixtures (SHARED_DIR overrides)."""
    env = os.environ.get("SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"


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
