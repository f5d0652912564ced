"""The connector against a sandbox that behaves like a real server on a bad day (loopback, real NTLM)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import pytest

from portal.connectors.dynamics import ConnectionConfig, OrganizationService, Transport, test_connection
from portal.connectors.dynamics.errors import RequestTimeoutError
from portal.connectors.dynamics.soap import CreateRequest, fetch_xml

testing = pytest.importorskip("sandbox.testing")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[object]:
    """One sandbox for the module."""
    with testing.SandboxServer(seed=False, platform_option=True) as server:
        yield server


@pytest.fixture
def sb(sandbox):  # noqa: ANN001, ANN201
    """The sandbox with its data wiped before and its faults cleared after the test."""
    sandbox.reset(seed=False, platform_option=True)
    yield sandbox
    sandbox.clear_faults()


def _service(sb, **kw) -> OrganizationService:  # noqa: ANN001
    config = ConnectionConfig(org_url=sb.org_url, username=sb.username, password=sb.password, domain=sb.domain,
                              allowed_networks=LOOPBACK, **kw)
    return OrganizationService(Transport(config))


def _leads(prefix: str, n: int) -> list[CreateRequest]:
    return [CreateRequest("lead", {"lastname": f"L{i}", "emailaddress1": f"{prefix}{i}@example.net"})
            for i in range(n)]


def _wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_lowered_batch_limit_is_learned_and_the_batch_resubmitted(sb) -> None:  # noqa: ANN001
    """Item 3: the server names its MaxBatchSize; the records go again in batches of that size."""
    sb.set_faults(max_batch_size=7)
    svc = _service(sb)
    results = svc.execute_multiple(_leads("limit", 20))
    assert [r.ok for r in results] == [True] * 20 and len({r.id for r in results}) == 20
    assert [r.index for r in results] == list(range(20))
    assert svc.server_batch_limit == 7 and svc.batch_limit == 7
    assert any("at most 7" in note for note in svc.notes)
    assert len(sb.records("lead")) == 20
    svc.execute_multiple(_leads("again", 8))  # the limit is kept: no second refusal
    faults = sb.stats()["faults"]
    assert sum(v for k, v in faults.items() if k.startswith("Execute")) == 1, faults


def test_a_batch_past_its_deadline_is_cut_and_later_batches_are_smaller(sb) -> None:  # noqa: ANN001
    """Item 4: a deadline that grows with the batch; after a timeout the batch size is halved."""
    svc = _service(sb, batch_base_seconds=0.5, batch_record_seconds=0.01)
    assert svc.batch_deadline(20) == pytest.approx(0.7)
    svc.who_am_i()
    sb.set_faults(per_record_ms=100)  # 20 records take 2 s on the server
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError) as caught:
        svc.execute_multiple(_leads("slow", 20))
    assert time.monotonic() - started < 1.8
    assert caught.value.outcome_unknown is True
    assert svc.batch_limit == 10 and "batches of 10" in svc.notes[-1]
    # The server finishes the batch all the same: the caller must look up before sending again.
    _wait_for(lambda: len(sb.records("lead")) == 20, 20, "the server to finish the batch")


def test_transient_item_faults_are_sent_again_before_they_fail(sb) -> None:  # noqa: ANN001
    """Item 5: deadlocks inside an ExecuteMultiple answer are retried with backoff."""
    svc = _service(sb)
    svc.item_retry_delay = 0.01
    sb.set_faults(item_fault_ratio=1.0, every_nth=3, item_fault_kind="deadlock")
    results = svc.execute_multiple(_leads("dead", 12))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert sb.stats()["requests"]["Execute:ExecuteMultiple"] >= 2  # the faulted records went again
    emails = sorted(r["emailaddress1"] for r in sb.records("lead"))
    assert emails == sorted(f"dead{i}@example.net" for i in range(12))  # each once


def test_a_stale_kept_alive_connection_is_retried_once_for_reads(sb) -> None:  # noqa: ANN001
    """Item 6: IIS closed the kept-alive connection; an idempotent read goes again on a fresh one."""
    svc = _service(sb)
    svc.who_am_i()
    sb.set_faults(stale_connection_ratio=1.0, every_nth=1)
    for _ in range(3):
        svc.retrieve_multiple(fetch_xml("lead", ["leadid"], page_size=1))
    assert svc.who_am_i().user_id
    assert sb.stats()["faults"]["stale_connection"] >= 4


def test_a_dripping_answer_ends_at_the_exchange_deadline(sb) -> None:  # noqa: ANN001
    """Item 7: one byte every 100 ms would take over a minute; the exchange ends at its deadline."""
    svc = _service(sb, total_timeout=2.0)
    svc.who_am_i()
    sb.set_faults(drip_ms=100)
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError) as caught:
        svc.who_am_i()
    assert time.monotonic() - started < 4
    assert "within 2 s" in caught.value.message


def test_a_hung_batch_ends_within_its_deadline(sb) -> None:  # noqa: ANN001
    """Item 7: a batch that is never answered ends at its own deadline, not at the read timeout."""
    svc = _service(sb, batch_base_seconds=1.0, batch_record_seconds=0.0)
    svc.who_am_i()
    sb.set_faults(hang_ratio=1.0, every_nth=1, hang_writes_only=True)
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        svc.execute_multiple(_leads("hung", 3))
    assert time.monotonic() - started < 3


def test_a_hung_server_ends_the_connection_test_in_time_with_a_clear_message(sb) -> None:  # noqa: ANN001
    """Item 7: the connection test has one deadline for all its steps."""
    config = ConnectionConfig(org_url=sb.org_url, username=sb.username, password=sb.password, domain=sb.domain,
                              allowed_networks=LOOPBACK)
    sb.set_faults(hang_ratio=1.0, every_nth=1)
    started = time.monotonic()
    result = test_connection(config, time_limit=3.0)
    assert time.monotonic() - started < 6
    assert not result.ok and result.error.code == "timeout"
    assert "within the 3 s" in result.error.message and result.steps[-1].name in result.error.message


def test_control_characters_in_stored_values_do_not_break_the_batch(sb) -> None:  # noqa: ANN001
    """Item 8: characters XML 1.0 forbids are replaced when the SOAP body is built."""
    svc = _service(sb)
    bad = CreateRequest("lead", {"lastname": "Sm\x01ith\x0b", "firstname": "Ann\ud800",
                                 "emailaddress1": "ctrl@example.net"})
    results = svc.execute_multiple([bad, *_leads("fine", 2)])
    assert [r.ok for r in results] == [True, True, True]
    (stored,) = sb.records("lead", email="ctrl@example.net")
    assert stored["lastname"] == "Sm ith " and stored["firstname"] == "Ann\ufffd"
    assert svc.retrieve_multiple(fetch_xml("lead", ["leadid"], [("lastname", "eq", "Sm\x01ith\x0b")])).entities


def test_the_connection_test_reads_field_lengths_from_the_metadata(sb) -> None:  # noqa: ANN001
    """Item 9: MaxLength of the text attributes the sync writes, as the CRM's metadata says."""
    config = ConnectionConfig(org_url=sb.org_url, username=sb.username, password=sb.password, domain=sb.domain,
                              allowed_networks=LOOPBACK)
    result = test_connection(config)
    assert result.ok, result.to_dict()
    lead = result.max_lengths["lead"]
    assert (lead["firstname"], lead["lastname"], lead["companyname"], lead["address1_city"],
            lead["address1_postalcode"]) == (50, 50, 100, 80, 20)
    assert "companyname" not in result.max_lengths["contact"] and result.max_lengths["contact"]["firstname"] == 50
    assert result.to_dict()["max_lengths"] == result.max_lengths
    assert any(step.name == "Field lengths" and step.ok for step in result.steps)


def test_the_sandbox_refuses_a_value_longer_than_its_attribute(sb) -> None:  # noqa: ANN001
    """Item 9: as a real server does, with the message of its validation error."""
    svc = _service(sb)
    (result,) = svc.execute_multiple([CreateRequest("lead", {"lastname": "x" * 51, "emailaddress1": "l@example.net"})])
    assert not result.ok
    assert "exceeded the maximum allowed length of '50'" in result.error.message
    assert sb.records("lead") == []
