"""The Dynamics 365 online connector against the sandbox's online mode (TLS, Entra token endpoint, Web API v9.2)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from portal.connectors.dynamics import webapi
from portal.connectors.dynamics.auth import (
    ApplicationUserError,
    CertificateError,
    ClientIdError,
    ClientSecretError,
    MemoryTokenCache,
    OnlineConfig,
    TenantNotFoundError,
    TokenProvider,
)
from portal.connectors.dynamics.errors import BlockedUrlError
from portal.connectors.dynamics.factory import open_service, run_connection_test
from portal.connectors.dynamics.soap import (
    CreateRequest,
    SetStateRequest,
    UpdateRequest,
    fetch_in,
    fetch_xml,
    set_fetch_paging,
)
from portal.connectors.dynamics.transport import MAX_RETRY_AFTER, parse_dop_hint, parse_retry_after
from portal.connectors.dynamics.webapi import (
    BatchPart,
    QueryTooLongError,
    Throttle,
    ThrottledError,
    parse_batch,
    parse_record,
    record_body,
)
from portal.connectors.dynamics.xml import EntityReference, Money, OptionSetValue, parse_xml
from sandbox.testing import SandboxServer

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """One seeded sandbox with its online mode, for the module."""
    with SandboxServer(seed=True, platform_option=True) as server:
        yield server


@pytest.fixture
def sb(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    """The sandbox, with injected faults removed and the demo app restored afterwards."""
    yield sandbox
    sandbox.clear_faults()
    sandbox.register_app(sandbox.client_id, tenant_id=sandbox.tenant_id, client_secret=sandbox.client_secret)


def config(sb: SandboxServer, **kw) -> OnlineConfig:
    """An online config for the sandbox (each test gets its own token cache key)."""
    values = {"environment_url": sb.environment_url, "tenant_id": sb.tenant_id, "client_id": sb.client_id,
              "client_secret": sb.client_secret, "authority_host": sb.authority_host, "ca_bundle": sb.ca_file,
              "allowed_networks": LOOPBACK, "cache_key": uuid.uuid4().hex}
    values.update(kw)
    return OnlineConfig(**values)


def _cert_pem() -> tuple[str, str]:
    """A private key with its self-signed certificate (PEM), and the certificate alone."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portal test app")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem + cert_pem, cert_pem


# ---------------------------------------------------------------- connection test


def test_connection_test_passes_with_the_same_layered_steps(sb) -> None:  # noqa: ANN001
    result = run_connection_test(config(sb))
    assert result.ok, result.to_dict()
    assert [s.name for s in result.steps] == [
        "URL check", "DNS and TCP", "TLS", "Sign-in (Microsoft Entra ID)", "Application user", "Version",
        "Read access", "Lead source option"]
    assert result.version.startswith("9.2") and result.user_id and result.lead_source_value == 100000000


@pytest.mark.parametrize(("change", "error", "words"), [
    ({"tenant_id": "00000000-1111-4222-8333-444444444444"}, TenantNotFoundError, "tenant"),
    ({"client_id": "00000000-1111-4222-8333-555555555555"}, ClientIdError, "client"),
    ({"client_secret": "not-the-secret"}, ClientSecretError, "secret"),
])
def test_sign_in_failures_name_the_culprit(sb, change, error, words) -> None:  # noqa: ANN001
    result = run_connection_test(config(sb, **change))
    assert not result.ok
    assert result.steps[-1].name == "Sign-in (Microsoft Entra ID)"
    assert type(result.error) is error and result.error.code == "auth_failed"
    assert words in result.error.message.lower() and "App registrations" in result.error.action
    assert "not-the-secret" not in repr(result.to_dict())


def test_missing_application_user_is_named_with_what_to_do(sb) -> None:  # noqa: ANN001
    sb.register_app(sb.client_id, tenant_id=sb.tenant_id, client_secret=sb.client_secret, app_user=False)
    result = run_connection_test(config(sb))
    assert not result.ok and result.steps[-1].name == "Application user"
    assert isinstance(result.error, ApplicationUserError)
    assert "Application users" in result.error.action and "security role" in result.error.action


def test_certificate_credential_signs_in(sb) -> None:  # noqa: ANN001
    both, public = _cert_pem()
    client = str(uuid.uuid4())
    sb.register_app(client, tenant_id=sb.tenant_id, certificate_pem=public)
    result = run_connection_test(config(sb, client_id=client, client_secret="", certificate_pem=both))
    assert result.ok, result.to_dict()
    other, _ = _cert_pem()  # a certificate Entra does not know for this app
    refused = run_connection_test(config(sb, client_id=client, client_secret="", certificate_pem=other))
    assert isinstance(refused.error, CertificateError)


def test_url_guard_applies_to_the_token_endpoint(sb) -> None:  # noqa: ANN001
    result = run_connection_test(config(sb, authority_host="https://169.254.169.254"))
    assert not result.ok and result.steps[-1].name == "Sign-in (Microsoft Entra ID)"
    assert isinstance(result.error, BlockedUrlError)
    with pytest.raises(BlockedUrlError):
        TokenProvider(config(sb, allowed_networks=())).token()


# ---------------------------------------------------------------- tokens


def test_tokens_are_cached_and_renewed_before_expiry(sb) -> None:  # noqa: ANN001
    cfg = config(sb)
    service, transport = open_service(cfg)
    with transport:
        before = sb.stats()["tokens_issued"]
        for _ in range(3):
            service.who_am_i()
        assert sb.stats()["tokens_issued"] == before + 1  # one token for the three calls
        # Tokens that expire within minutes are renewed before use: every call now gets a new one.
        sb.set_faults(token_lifetime=60)
        transport.provider.invalidate()
        service.who_am_i()
        service.who_am_i()
        assert sb.stats()["tokens_issued"] == before + 3
        assert sb.stats()["bearer_401"] == 0


def test_workers_share_one_token_and_a_changed_secret_never_gets_the_old_one(sb) -> None:  # noqa: ANN001
    shared = MemoryTokenCache()
    cfg = config(sb, token_cache=shared)
    before = sb.stats()["tokens_issued"]
    # Eight workers at once, each with its own MSAL application: one asks Entra, the others take its token.
    workers = [TokenProvider(cfg) for _ in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            tokens = set(pool.map(lambda p: p.token(), workers))
        assert len(tokens) == 1
        assert sb.stats()["tokens_issued"] == before + 1
        # The administrator replaces the secret: the new one gets its own token at once.
        sb.register_app(sb.client_id, tenant_id=sb.tenant_id, client_secret="Rotated-Secret-2")
        rotated = dataclasses.replace(cfg, client_secret="Rotated-Secret-2")
        assert rotated.fingerprint() != cfg.fingerprint()
        refused = sb.stats()["bearer_401"]
        service, transport = open_service(rotated)
        with transport:
            assert service.who_am_i().user_id
            assert transport.provider.token() not in tokens
        assert sb.stats()["bearer_401"] == refused  # no stale token was tried
        assert sb.stats()["tokens_issued"] == before + 2
    finally:
        for provider in workers:
            provider.close()


def test_the_process_cache_drops_the_least_recently_used_and_what_expires() -> None:
    cache = MemoryTokenCache(size=2)
    later = time.time() + 3600
    cache.put("a", "token-a", later)
    cache.put("b", "token-b", later)
    assert cache.get("a") == ("token-a", later)  # "a" is now the most recently used
    cache.put("c", "token-c", later)
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("soon", "token-soon", time.time() + 60)  # expires within the refresh margin: not kept
    assert cache.get("soon") is None
    cache.drop("a", "another-token")
    assert cache.get("a")
    cache.drop("a", "token-a")
    assert cache.get("a") is None


def test_a_refused_token_is_replaced_and_the_request_goes_again(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        service.who_am_i()
        # The registration changes: the service forgets every token it gave, the client does not know yet.
        sb.register_app(sb.client_id, tenant_id=sb.tenant_id, client_secret=sb.client_secret)
        before = sb.stats()
        assert service.who_am_i().user_id
        after = sb.stats()
        assert after["bearer_401"] == before["bearer_401"] + 1
        assert after["tokens_issued"] == before["tokens_issued"] + 1


# ---------------------------------------------------------------- reads and writes


def test_paging_reads_lookups_and_formatted_values(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        ids = [e.id for e in service.iter_fetch(fetch_xml("lead", ["leadid", "statecode"], order=["leadid"]),
                                                page_size=7)]
        assert len(ids) == len(set(ids)) > 7 and service.pages >= 2
        lead_id = service.create("lead", {"lastname": "Note target", "emailaddress1": f"n{uuid.uuid4().hex}@x.example"})
        note_id = service.create("annotation", {"subject": "hello", "objectid": EntityReference(lead_id, "lead"),
                                                "objecttypecode": "lead"})
        note = next(service.iter_fetch(fetch_xml("annotation", ["annotationid", "objectid", "createdon"],
                                                 [("annotationid", "eq", note_id)])))
        assert note.attributes["objectid"] == EntityReference(lead_id, "lead", "Note target")
        assert isinstance(note.attributes["createdon"], dt.datetime)
        lead = service.retrieve("lead", lead_id, ["statecode"])
        assert lead.attributes["statecode"] == 0 and lead.formatted_values["statecode"] == "Open"


def _needle(service, count: int, padding: int) -> tuple[str, list[str]]:  # noqa: ANN001
    """A new lead, and count addresses of no lead (padded to make long queries) followed by its address."""
    email = f"needle{uuid.uuid4().hex}@x.example"
    new_id = service.create("lead", {"lastname": "Needle", "emailaddress1": email})
    return new_id, [f"nobody{i}-{'x' * padding}@x.example" for i in range(count)] + [email]


def test_long_queries_go_in_a_batch_body(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        # About 40,000 characters: too long for a URL on its own, not for one inside a $batch.
        new_id, emails = _needle(service, 500, 30)
        before = sb.stats()["requests"].get("webapi9:$batch", 0)
        found = [e.id for e in service.iter_fetch(fetch_xml("lead", ["leadid"], [("emailaddress1", "in", emails)]))]
        assert found == [new_id]
        assert sb.stats()["requests"]["webapi9:$batch"] == before + 1


def test_long_in_lookups_are_split_by_url_length(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        # 1,000 of these make a URL of about 95,000 characters: over the 65,536 allowed even inside a $batch.
        new_id, emails = _needle(service, 2500, 40)
        queries = list(fetch_in("lead", ["leadid"], "emailaddress1", emails, fits=service.fetch_fits))
        assert 3 <= len(queries) <= 6  # split by length, not one query per value
        for query in queries:
            cookie = f"<cookie page='1'><leadid last='{{{uuid.uuid4()}}}' first='{{{uuid.uuid4()}}}'/></cookie>"
            paged = set_fetch_paging(query, 2, 5000, cookie)
            assert len(f"{service.base}leads?fetchXml={quote(paged, safe='')}") <= 65_536
        values = [v.text for q in queries for v in parse_xml(q).iter("value")]
        assert values == emails  # every value asked for once, in order
        pages = service.pages
        assert [e.id for q in queries for e in service.iter_fetch(q)] == [new_id]
        assert service.pages == pages + len(queries)


def test_a_query_too_long_even_for_a_batch_is_not_sent(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        emails = [f"nobody{i}-{'x' * 40}@x.example" for i in range(1000)]
        before = sb.stats()["requests"].get("webapi9:$batch", 0)
        with pytest.raises(QueryTooLongError) as caught:
            service.retrieve_multiple(fetch_xml("lead", ["leadid"], [("emailaddress1", "in", emails)]))
        assert "65,536" in caught.value.message
        assert sb.stats()["requests"].get("webapi9:$batch", 0) == before


def test_activities_and_owners_bind_through_their_real_navigation_properties(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        me = service.who_am_i()
        lead_id = service.create("lead", {"lastname": "Regarding"})
        task_id = service.create("task", {"subject": "Call back", "regardingobjectid": EntityReference(lead_id, "lead"),
                                          "ownerid": EntityReference(me.user_id, "systemuser")})
        [result] = service.execute_multiple([CreateRequest("phonecall", {
            "subject": "Called", "regardingobjectid": EntityReference(lead_id, "lead")})])
        assert result.ok, result.error
        task = service.retrieve("task", task_id, ["regardingobjectid", "ownerid"])
        assert task.attributes["regardingobjectid"].id == lead_id
        assert task.attributes["ownerid"].id == me.user_id


def test_batch_outside_change_sets_keeps_going_after_a_bad_record(sb) -> None:  # noqa: ANN001
    service, transport = open_service(config(sb))
    with transport:
        lead_id = service.create("lead", {"lastname": "Existing"})
        requests = [CreateRequest("lead", {"lastname": f"B{i}", "leadsourcecode": OptionSetValue(100000000)})
                    for i in range(4)]
        requests.insert(2, CreateRequest("lead", {"lastname": "Bad", "leadsourcecode": OptionSetValue(12345)}))
        requests += [UpdateRequest("lead", lead_id, {"firstname": "Pat"}), SetStateRequest("lead", lead_id, 2, 6),
                     UpdateRequest("lead", str(uuid.uuid4()), {"firstname": "Ghost"})]
        results = service.execute_multiple(requests)
        assert [r.ok for r in results] == [True, True, False, True, True, True, True, False]
        assert results[2].error.error_code == -2147204326  # the option value is out of range
        assert results[7].error.code == "not_found"  # If-Match: * never creates a record on update
        assert results[5].id == lead_id and all(r.id for r in results if r.ok)
        stored = {r["leadid"]: r for r in sb.records("lead", lastname="B1")}
        assert results[1].id in stored
        assert sb.records("lead", lastname="Existing")[0]["statecode"] == 2


def test_lead_source_option_is_read_and_added(sb) -> None:  # noqa: ANN001
    sb.set_platform_option(False)
    try:
        service, transport = open_service(config(sb))
        with transport:
            assert service.find_option("ZiftONE") is None
            value = service.ensure_option("ZiftONE")
            assert value >= 100000000 and service.find_option("zIFTone") == value
            assert service.ensure_option("ZiftONE") == value
    finally:
        sb.set_platform_option(True)


# ---------------------------------------------------------------- service protection limits


def test_429_on_whole_requests_waits_and_loses_nothing(sb) -> None:  # noqa: ANN001
    sb.set_faults(throttle_ratio=0.2, seed=7, throttle_retry_after=1)
    service, transport = open_service(config(sb, max_parallel=4))
    tag = uuid.uuid4().hex[:8]
    with transport:
        started = time.monotonic()
        results = []
        for chunk in range(6):
            results += service.execute_multiple([CreateRequest("lead", {"lastname": f"T{tag}", "firstname": str(i)})
                                                 for i in range(chunk * 10, chunk * 10 + 10)])
            service.who_am_i()
        assert all(r.ok for r in results)
        assert service.throttle.events >= 1 and time.monotonic() - started >= service.throttle.events * 0.9
        assert service.throttle.limit < 4 or service.throttle.events == 0
    assert sb.stats()["faults"]["throttle"] == service.throttle.events
    stored = sb.records("lead", lastname=f"T{tag}")
    assert sorted(int(r["firstname"]) for r in stored) == list(range(60))  # every record once


def test_429_on_operations_inside_a_batch_sends_only_those_again(sb) -> None:  # noqa: ANN001
    sb.set_faults(throttle_scope="operation", throttle_every_nth=3, throttle_retry_after=0)
    service, transport = open_service(config(sb))
    tag = uuid.uuid4().hex[:8]
    with transport:
        results = service.execute_multiple([CreateRequest("lead", {"lastname": f"O{tag}", "firstname": str(i)})
                                            for i in range(30)])
    assert all(r.ok for r in results) and len({r.id for r in results}) == 30
    assert sorted(int(r["firstname"]) for r in sb.records("lead", lastname=f"O{tag}")) == list(range(30))
    assert sb.stats()["faults"]["throttle"] >= 10


def test_limits_that_never_end_come_back_as_throttled_not_as_failed_records(sb, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(webapi, "MAX_THROTTLE_WAITS", 2)
    sb.set_faults(throttle_every_nth=1, throttle_retry_after=0, throttle_code=-2147015898)
    service, transport = open_service(config(sb))
    with transport, pytest.raises(ThrottledError) as caught:
        service.execute_multiple([CreateRequest("lead", {"lastname": "never"})])
    assert caught.value.retryable and caught.value.error_code == -2147015898
    assert sb.records("lead", lastname="never") == []


def test_concurrency_limit_lowers_parallelism(sb) -> None:  # noqa: ANN001
    from concurrent.futures import ThreadPoolExecutor

    sb.set_faults(max_concurrent_requests=1, throttle_retry_after=0, latency_ms=50)
    service, transport = open_service(config(sb, max_parallel=4))
    with transport, ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: service.who_am_i().user_id, range(12)))
    assert len(set(ids)) == 1
    assert service.throttle.events >= 1 and service.throttle.limit < 4


class Listening:
    """A gate that lets every exchange go and writes down what the CRM said of its load."""

    def __init__(self) -> None:
        self.busy_for: list[float] = []
        self.hints: list[int] = []

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def busy(self, retry_after: float = 0.0) -> None:
        self.busy_for.append(retry_after)

    def parallelism(self, hint: int) -> None:
        self.hints.append(hint)


def test_the_gate_hears_each_429_with_its_retry_after_and_the_recommended_parallelism(sb) -> None:  # noqa: ANN001
    """What the portal builds every worker's limit from: 429s on requests and inside a $batch, and x-ms-dop-hint."""
    sb.set_faults(throttle_every_nth=2, throttle_retry_after=1, dop_hint=3)
    service, transport = open_service(config(sb, max_parallel=8))
    gate = Listening()
    transport.gate = gate
    tag = uuid.uuid4().hex[:8]
    with transport:
        service.who_am_i()
        service.who_am_i()  # refused once, for a second, then answered
        assert gate.busy_for == [1.0]
        assert gate.hints and set(gate.hints) == {3}
        assert service.throttle.max_limit == 3 and service.throttle.limit <= 3  # this process keeps to it too
        sb.set_faults(throttle_every_nth=3, throttle_retry_after=0, throttle_scope="operation", dop_hint=16)
        results = service.execute_multiple([CreateRequest("lead", {"lastname": f"G{tag}", "firstname": str(i)})
                                            for i in range(9)])
    assert all(r.ok for r in results)
    # Nine operations, every third refused: two rounds of the batch met 429s (3 of 9, then 1 of 3), each told once.
    assert gate.busy_for == [1.0, 0.0, 0.0]
    assert gate.hints[-1] == 16 and service.throttle.max_limit == 8  # never above the configured parallelism
    assert sorted(int(r["firstname"]) for r in sb.records("lead", lastname=f"G{tag}")) == list(range(9))


# ---------------------------------------------------------------- pure parts


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3 and parse_retry_after("00:01:05") == 65
    assert parse_retry_after(None, 5) == 5 and parse_retry_after("soon", 2) == 2
    assert parse_retry_after("99999") == MAX_RETRY_AFTER


def test_dop_hint_forms() -> None:
    assert parse_dop_hint("4") == 4 and parse_dop_hint(" 12 ") == 12
    assert [parse_dop_hint(v) for v in (None, "", "0", "-2", "four", "1.5", "99999")] == [None] * 7


def test_throttle_keeps_to_the_recommended_parallelism() -> None:
    throttle = Throttle(8)
    throttle.recommend(3)
    assert throttle.limit == 3 and throttle.max_limit == 3
    throttle.recommend(50)
    assert throttle.max_limit == 8 and throttle.limit == 3  # back up by successes, as after a 429
    for _ in range(20):
        throttle.acquire()
        throttle.release()
    assert throttle.limit == 4


def test_throttle_halves_and_recovers() -> None:
    throttle = Throttle(8)
    throttle.throttled(0.05, throttle.generation)
    assert throttle.limit == 4
    started = time.monotonic()
    throttle.acquire()
    assert time.monotonic() - started >= 0.04
    throttle.release()
    for _ in range(20):
        throttle.acquire()
        throttle.release()
    assert throttle.limit == 5


def test_throttle_halves_once_for_the_429s_of_one_burst() -> None:
    """Every request in flight refused together lowers the limit once; a request sent under the lowered limit and
    refused halves it again."""
    throttle = Throttle(8)
    sent = [throttle.acquire() for _ in range(8)]  # eight requests in flight under the limit of 8
    for generation in sent:
        throttle.release(ok=False)
        throttle.throttled(2.0, generation)
    assert throttle.limit == 4  # once for the burst, not 8 → 4 → 2 → 1
    assert throttle.events == 8 and throttle.waited == 16.0
    throttle.not_before = 0.0  # the wait asked for is over
    again = [throttle.acquire() for _ in range(4)]  # sent under the limit of 4
    throttle.release(ok=False)
    throttle.throttled(0.0, again[0])
    assert throttle.limit == 2  # the lowered limit was still too high
    for generation in again[1:]:  # refused with it, under the same limit: no further halving
        throttle.release(ok=False)
        throttle.throttled(0.0, generation)
    assert throttle.limit == 2 and throttle.events == 12


def test_a_limit_lowered_by_the_recommended_parallelism_is_not_halved_by_the_429s_sent_above_it() -> None:
    """Requests sent under 8 and refused, after the service recommended 4: the recommendation already lowered the
    limit for them, so their 429s leave it at 4; one sent under 4 and refused halves it."""
    throttle = Throttle(8)
    sent = [throttle.acquire() for _ in range(8)]
    throttle.recommend(4)
    assert throttle.limit == 4
    for generation in sent:
        throttle.release(ok=False)
        throttle.throttled(0.0, generation)
    assert throttle.limit == 4
    below = throttle.acquire()
    throttle.release(ok=False)
    throttle.throttled(0.0, below)
    assert throttle.limit == 2


def test_record_body_binds_lookups_and_converts_values() -> None:
    lead = str(uuid.uuid4())
    body = record_body("annotation", {"subject": "s", "objectid": EntityReference(lead.upper(), "lead"),
                                      "objecttypecode": "lead"})
    assert body == {"subject": "s", "objectid_lead@odata.bind": f"/leads({lead})"}
    user, team = str(uuid.uuid4()), str(uuid.uuid4())
    assert record_body("task", {"regardingobjectid": EntityReference(lead, "lead"),
                                "ownerid": EntityReference(user, "systemuser")}) == {
        "regardingobjectid_lead_task@odata.bind": f"/leads({lead})", "ownerid@odata.bind": f"/systemusers({user})"}
    assert record_body("phonecall", {"regardingobjectid": EntityReference(lead, "lead")}) == {
        "regardingobjectid_lead_phonecall@odata.bind": f"/leads({lead})"}
    assert record_body("lead", {"ownerid": EntityReference(team, "team")}) == {"ownerid@odata.bind": f"/teams({team})"}
    assert record_body("opportunity", {"customerid": EntityReference(lead, "account")}) == {
        "customerid_account@odata.bind": f"/accounts({lead})"}
    body = record_body("campaign", {"typecode": OptionSetValue(3), "budgetedcost": Money(__import__("decimal")
                                    .Decimal("12.50")), "proposedstart": dt.date(2026, 1, 2)})
    assert body == {"typecode": 3, "budgetedcost": 12.5, "proposedstart": "2026-01-02T00:00:00Z"}


def test_fetch_in_puts_every_value_in_one_query_as_large_as_fits() -> None:
    values = [f"v{i}-" + "x" * (i % 7) * 10 for i in range(300)] + ["y" * 5000] + ["z1", "z2"]
    asked: list[int] = []

    def fits(query: str) -> bool:
        asked.append(len(query))
        return len(query) <= 4000

    queries = list(fetch_in("lead", ["leadid"], "emailaddress1", values, fits=fits, max_values=50,
                            conditions=[("statecode", "eq", 0)], order=["leadid"]))
    chunks = [[v.text for v in parse_xml(q).iter("value")] for q in queries]
    assert [v for chunk in chunks for v in chunk] == values
    assert all(len(q) <= 4000 or chunk == ["y" * 5000] for q, chunk in zip(queries, chunks, strict=True))
    assert max(len(c) for c in chunks) <= 50 and ["y" * 5000] in chunks  # alone, to be refused by the service
    assert all('attribute="statecode"' in q and 'order attribute="leadid"' in q for q in queries)
    assert len(asked) < 3 * len(queries)  # a few tries a query, not a search over every size
    assert len(list(fetch_in("lead", ["leadid"], "emailaddress1", values, max_values=1000))) == 1


def test_batch_body_is_the_documented_format_outside_change_sets() -> None:
    lead = str(uuid.uuid4())
    body = webapi.batch_body("batch_t", "/api/data/v9.2/", [
        ("POST", "leads", {"lastname": "A"}), ("PATCH", f"leads({lead})", {"firstname": "B"}),
        ("GET", "leads?fetchXml=%3Cfetch%2F%3E", None)]).decode()
    parts = body.split("--batch_t")
    assert parts[0] == "" and parts[-1] == "--\r\n" and len(parts) == 5
    heads = [p.split("\r\n\r\n", 1)[0].strip("\r\n") for p in parts[1:4]]
    # Content-ID belongs to change sets (for $n references); outside one, a part has these two headers only.
    assert heads == ["Content-Type: application/http\r\nContent-Transfer-Encoding: binary"] * 3
    assert "Content-ID" not in body
    assert "\r\n\r\nPOST /api/data/v9.2/leads HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n" \
           '{"lastname":"A"}' in parts[1]
    assert f"PATCH /api/data/v9.2/leads({lead}) HTTP/1.1\r\nIf-Match: *\r\n" in parts[2]
    assert 'Accept: application/json\r\nPrefer: odata.include-annotations="*"' in parts[3]


def test_parse_batch_flattens_change_sets() -> None:
    body = (b"--b1\r\nContent-Type: multipart/mixed; boundary=c1\r\n\r\n"
            b"--c1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n"
            b"OData-EntityId: https://x/api/data/v9.2/leads(11111111-1111-1111-1111-111111111111)\r\n\r\n\r\n"
            b"--c1--\r\n\r\n--b1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: application/json\r\n\r\n{\"error\":{\"code\":\"0x80040217\",\"message\":\"gone\"}}\r\n"
            b"--b1--\r\n")
    parts = parse_batch("multipart/mixed; boundary=b1", body)
    assert [p.status for p in parts] == [204, 400]
    assert parts[0].headers["odata-entityid"].endswith("1111)")
    assert parts[1].json()["error"]["message"] == "gone"
    assert isinstance(parts[1], BatchPart)


def test_parse_record_types_values() -> None:
    rid = str(uuid.uuid4())
    rec = parse_record("activitypointer", {
        "activityid": rid, "_regardingobjectid_value": rid.upper(),
        "_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "lead",
        "scheduledend": "2026-03-04T05:06:07Z", "prioritycode": 2,
        "prioritycode@OData.Community.Display.V1.FormattedValue": "High"})
    assert rec.id == rid and rec.attributes["regardingobjectid"] == EntityReference(rid, "lead", None)
    assert rec.attributes["scheduledend"] == dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    assert rec.formatted_values["prioritycode"] == "High"


def test_config_repr_hides_secrets() -> None:
    cfg = OnlineConfig(environment_url="https://org.crm4.dynamics.com", tenant_id="t", client_id="c",
                       client_secret="s3cr3t-value", certificate_pem="-----BEGIN PRIVATE KEY-----abc")
    assert "s3cr3t-value" not in repr(cfg) and "PRIVATE" not in repr(cfg)
    assert cfg.scope == "https://org.crm4.dynamics.com/.default"
    assert dataclasses.replace(cfg, client_secret="other").fingerprint() != cfg.fingerprint()


def test_secrets_and_tokens_never_reach_the_logs(caplog) -> None:
    import logging

    from portal.connectors.dynamics.auth import redact_oauth

    caplog.set_level(logging.DEBUG)
    logging.getLogger("msal.application").debug("POST body: client_id=c&client_secret=s3cr3t-value&scope=x")
    logging.getLogger("portal.connectors.dynamics").info('answer {"access_token": "eyJ0eXAi.abc", "expires_in": 1}')
    assert "s3cr3t-value" not in caplog.text and "eyJ0eXAi" not in caplog.text
    assert caplog.text.count("[redacted]") == 2
    assert redact_oauth("client_assertion=aaa.bbb.ccc") == "client_assertion=[redacted]"


def test_a_hostile_answer_is_a_typed_error() -> None:
    """Deeply nested JSON, a batch answer that is not multipart, a part without a status line: typed errors."""
    from portal.connectors.dynamics.errors import NotDynamicsError
    from portal.connectors.dynamics.transport import HttpResponse

    deep = HttpResponse(200, {"Content-Type": "application/json"}, b"[" * 100000 + b"]" * 100000, "x", 0.0)
    assert webapi._json_or_none(deep) is None
    assert BatchPart(200, {}, deep.content).json() is None
    error = webapi.error_from_json(500, webapi._json_or_none(deep), "<script>alert(1)</script>")
    assert error.code == "server_error"
    with pytest.raises(NotDynamicsError):
        parse_batch("text/html", b"<html>hello</html>")
    with pytest.raises(NotDynamicsError):
        parse_batch("multipart/mixed; boundary=b", b"--b\r\nContent-Type: application/http\r\n\r\nhello\r\n--b--")
