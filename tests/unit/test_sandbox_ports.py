"""The sandbox's ports for `make run` and `python -m sandbox`: the TLS port follows SANDBOX_PORT unless set itself."""

from __future__ import annotations

import pytest

from portal import serve
from sandbox.__main__ import parse_args


@pytest.fixture
def every_port_free(monkeypatch):
    """Every preferred port counts as free, so the answer does not depend on what else listens here."""
    monkeypatch.setattr(serve, "_port_or_free", lambda preferred: preferred)


@pytest.mark.parametrize(("env", "ports"), [
    ({}, (5555, 5556)),
    ({"SANDBOX_PORT": "7000"}, (7000, 7001)),
    ({"SANDBOX_PORT": "7000", "SANDBOX_TLS_PORT": "7443"}, (7000, 7443)),
    ({"SANDBOX_TLS_PORT": "7443"}, (5555, 7443)),
])
def test_make_run_derives_the_tls_port_from_sandbox_port(every_port_free, env, ports):
    assert serve.sandbox_ports(env) == ports


def test_make_run_takes_any_free_port_when_the_next_one_is_busy(monkeypatch):
    monkeypatch.setattr(serve, "_port_or_free", lambda preferred: 9999 if preferred == 7001 else preferred)
    assert serve.sandbox_ports({"SANDBOX_PORT": "7000"}) == (7000, 9999)


@pytest.mark.parametrize(("env", "ports"), [
    ({}, (5555, 5556)),
    ({"SANDBOX_PORT": "7000"}, (7000, 7001)),
    ({"SANDBOX_PORT": "7000", "SANDBOX_TLS_PORT": "7443"}, (7000, 7443)),
])
def test_the_sandbox_alone_derives_its_tls_port_the_same_way(monkeypatch, env, ports):
    for name in ("SANDBOX_PORT", "SANDBOX_TLS_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = parse_args([])
    assert (args.port, args.tls_port) == ports
    assert parse_args(["--port", "8100"]).tls_port == (7443 if "SANDBOX_TLS_PORT" in env else 8101)
