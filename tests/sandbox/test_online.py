"""The sandbox's online mode on the wire: tokens, bearer checks, $batch semantics, URL length and 429s."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import quote

import pytest
import requests

from sandbox.testing import SandboxServer


@pytest.fixture
def online(sandbox: SandboxServer):
    """A requests session trusting the sandbox certificate, and a token getter; faults cleared afterwards."""
    session = requests.Session()
    session.verify = sandbox.ca_file
    session.trust_env = False

    def token(**form) -> requests.Response:
        data = {"grant_type": "client_credentials", "client_id": sandbox.client_id,
                "client_secret": sandbox.client_secret, "scope": f"{sandbox.environment_url}/.default", **form}
        return session.post(f"{sandbox.authority_host}/{sandbox.tenant_id}/oauth2/v2.0/token", data=data, timeout=10)

    yield session, token
    session.close()
    sandbox.clear_faults()


def _api(sandbox: SandboxServer, path: str) -> str:
    return f"{sandbox.environment_url}/api/data/v9.2/{path}"


def _batch(session, sandbox, token: str, parts: list[str], boundary: str = "batch_x", prefer: str = ""):
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": f"multipart/mixed; boundary={boundary}"}
    if prefer:
        headers["Prefer"] = prefer
    return session.post(_api(sandbox, "$batch"), data=body.encode(), headers=headers, timeout=20)


def _create(lastname: str, source: int = 100000000) -> str:
    body = json.dumps({"lastname": lastname, "leadsourcecode": source})
    return ("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"POST /api/data/v9.2/leads HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{body}")


def test_token_endpoint_answers_like_entra(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    good = token()
    assert good.status_code == 200 and good.json()["token_type"] == "Bearer" and good.json()["expires_in"] > 0
    bad = token(client_secret="wrong")
    assert bad.status_code == 401 and bad.json()["error_codes"] == [7000215]
    wrong_scope = token(scope="https://elsewhere.example/.default")
    assert wrong_scope.json()["error_codes"] == [500011]
    unknown = session.get(f"{sandbox.authority_host}/no-such-tenant/v2.0/.well-known/openid-configuration", timeout=10)
    assert unknown.status_code == 400 and "AADSTS90002" in unknown.json()["error_description"]


def test_bearer_tokens_are_checked_and_expire(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    missing = session.get(_api(sandbox, "WhoAmI"), timeout=10)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    forged = session.get(_api(sandbox, "WhoAmI"), headers={"Authorization": "Bearer forged"}, timeout=10)
    assert forged.status_code == 401
    sandbox.set_faults(token_lifetime=1)
    short = token().json()["access_token"]
    assert session.get(_api(sandbox, "WhoAmI"), headers={"Authorization": f"Bearer {short}"}, timeout=10).ok
    time.sleep(1.1)  # the token's lifetime is what is being tested: nothing to wait on but the clock
    expired = session.get(_api(sandbox, "WhoAmI"), headers={"Authorization": f"Bearer {short}"}, timeout=10)
    assert expired.status_code == 401


def test_change_set_is_all_or_nothing(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    tag = uuid.uuid4().hex[:8]
    inner = "".join(f"--cs\r\nContent-ID: {i}\r\n{_create(f'CS{tag}', source)}\r\n"
                    for i, source in enumerate([100000000, 12345], start=1)) + "--cs--"
    part = f"Content-Type: multipart/mixed; boundary=cs\r\n\r\n{inner}"
    resp = _batch(session, sandbox, token().json()["access_token"], [part, _create(f"After{tag}")],
                  prefer="odata.continue-on-error")
    assert resp.status_code == 200
    assert resp.text.count("HTTP/1.1 400") == 1 and resp.text.count("HTTP/1.1 204") == 1
    assert sandbox.records("lead", lastname=f"CS{tag}") == []  # the good create inside the set was rolled back
    assert len(sandbox.records("lead", lastname=f"After{tag}")) == 1


def test_without_continue_on_error_the_batch_stops_at_the_first_failure(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    tag = uuid.uuid4().hex[:8]
    parts = [_create(f"S{tag}"), _create(f"S{tag}", 12345), _create(f"S{tag}")]
    resp = _batch(session, sandbox, token().json()["access_token"], parts)
    assert resp.text.count("HTTP/1.1 204") == 1 and resp.text.count("HTTP/1.1 400") == 1
    assert len(sandbox.records("lead", lastname=f"S{tag}")) == 1
    resp = _batch(session, sandbox, token().json()["access_token"], parts, prefer="odata.continue-on-error")
    assert resp.text.count("HTTP/1.1 204") == 2
    assert len(sandbox.records("lead", lastname=f"S{tag}")) == 3


def test_batch_limit_url_limit_and_429(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    bearer = token().json()["access_token"]
    too_many = _batch(session, sandbox, bearer, [_create("x")] * 1001)
    assert too_many.status_code == 400 and "1000" in too_many.json()["error"]["message"]
    long = session.get(_api(sandbox, "leads?fetchXml=" + "a" * 33000), headers={"Authorization": f"Bearer {bearer}"},
                       timeout=10)
    assert long.status_code == 414
    sandbox.set_faults(throttle_every_nth=1, throttle_retry_after=7)
    limited = session.get(_api(sandbox, "WhoAmI"), headers={"Authorization": f"Bearer {bearer}"}, timeout=10)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json()["error"]["code"] == "0x80072322"


def _get(url: str) -> str:
    return ("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"GET {url} HTTP/1.1\r\nAccept: application/json\r\n")


def _in_query(url_length: int, sandbox: SandboxServer) -> str:
    """A leads?fetchXml= URL (path only) whose absolute form is exactly url_length characters long."""
    head = "/api/data/v9.2/leads?fetchXml="
    fetch = "<fetch><entity name='lead'><attribute name='leadid'/><filter><condition attribute='lastname' " \
            "operator='in'><value>{}</value></condition></filter></entity></fetch>"
    fixed = len(sandbox.environment_url) + len(head) + len(quote(fetch.format(""), safe=""))
    return head + quote(fetch.format("v" * (url_length - fixed)), safe="")


def test_batch_part_urls_are_limited_to_64_kb(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    bearer = token().json()["access_token"]
    tag = uuid.uuid4().hex[:8]
    # A GET of 40,000 characters is too long on its own but fine inside a $batch.
    direct = session.get(sandbox.environment_url + _in_query(40_000, sandbox),
                         headers={"Authorization": f"Bearer {bearer}"}, timeout=20)
    assert direct.status_code == 414
    at_limit = _batch(session, sandbox, bearer, [_get(_in_query(65_536, sandbox))])
    assert at_limit.status_code == 200 and "HTTP/1.1 200" in at_limit.text
    over = _batch(session, sandbox, bearer, [_create(f"Over{tag}"), _get(_in_query(65_537, sandbox))],
                  prefer="odata.continue-on-error")
    assert over.status_code == 400 and "65,536" in over.json()["error"]["message"]
    assert sandbox.records("lead", lastname=f"Over{tag}") == []  # nothing in a refused batch runs


def _post(session, sandbox, bearer: str, entity_set: str, body: dict) -> requests.Response:  # noqa: ANN001
    return session.post(_api(sandbox, entity_set), json=body, timeout=10,
                        headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"})


def test_bind_names_are_the_navigation_properties_of_the_real_metadata(sandbox, online) -> None:  # noqa: ANN001
    session, token = online
    bearer = token().json()["access_token"]
    lead = _post(session, sandbox, bearer, "leads", {"lastname": "Bind target"})
    lead_id = lead.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    me = session.get(_api(sandbox, "WhoAmI"), headers={"Authorization": f"Bearer {bearer}"}, timeout=10).json()
    lead_url, user_url = f"/leads({lead_id})", f"/systemusers({me['UserId']})"
    good = [("tasks", {"subject": "t", "regardingobjectid_lead_task@odata.bind": lead_url,
                       "ownerid@odata.bind": user_url}),
            ("phonecalls", {"subject": "p", "regardingobjectid_lead_phonecall@odata.bind": lead_url}),
            ("annotations", {"subject": "n", "objectid_lead@odata.bind": lead_url}),
            ("leads", {"lastname": "Owned", "ownerid@odata.bind": user_url})]
    for entity_set, body in good:
        assert _post(session, sandbox, bearer, entity_set, body).status_code == 204, (entity_set, body)
    undeclared = [("tasks", "regardingobjectid_lead", lead_url), ("tasks", "regardingobjectid", lead_url),
                  ("tasks", "regardingobjectid_lead_phonecall", lead_url), ("leads", "ownerid_systemuser", user_url),
                  ("annotations", "objectid_lead_annotation", lead_url), ("annotations", "objectid", lead_url)]
    for entity_set, nav, url in undeclared:
        refused = _post(session, sandbox, bearer, entity_set, {"subject": "x", f"{nav}@odata.bind": url})
        assert refused.status_code == 400, (entity_set, nav)
        error = refused.json()["error"]
        assert error["code"] == "0x80060888" and f"An undeclared property '{nav}' which only has property " \
            "annotations in the payload" in error["message"], (entity_set, nav)
    wrong_target = _post(session, sandbox, bearer, "tasks", {"regardingobjectid_contact_task@odata.bind": lead_url})
    assert wrong_target.status_code == 400
