"""Generated junk thrown at every form and API route, on both databases: never a 5xx, nothing stored on refusal."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from werkzeug.routing import AnyConverter, IntegerConverter

from portal.extensions import db

from ..conftest import PASSWORD, csrf_from

# Every field name the portal's forms read (with the Edit Settings prefixes), and a few they do not.
FORM_FIELDS = [
    "email", "password", "next", "state", "action", "append_web", "failure_id", "name", "partner_id",
    "first_name", "last_name", "company", "job_title", "phone", "mobile_phone", "website", "address_line1",
    "address_line2", "city", "postal_code", "country", "description", "score",
    "general-supplier_id", "general-record_leads_as", "connection-username", "connection-password",
    "connection-org_url", "connection-odata_url", "connection-domain", "connection-organization_name",
    "usage-marketing_automation", "usage-ma_pull_contacts", "usage-ma_score_threshold", "usage-lead_distribution",
    "usage-ld_custom_fields_in_notes", "advanced-event_types", "advanced-create_campaigns",
    "advanced-campaign_data_level", "unexpected",
]
API_KEYS = [
    "email", "first_name", "last_name", "company", "score", "custom_fields", "events", "type", "occurred_at",
    "details", "name", "type_code", "status", "starts_on", "ends_on", "description", "budget", "expected_revenue",
    "expected_response", "promotion_code", "partner", "lead", "objective",
]
HUGE_NUMBERS = st.sampled_from(["0", "-1", "2147483647", "2147483648", "9223372036854775808", "1" * 40, "1e309",
                                "NaN", "0x10", " 7 "])
# Text as a person, a script or an attacker might send it: control characters, NULs, markup, very long.
JUNK_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(max_codepoint=0x7F), max_size=20),
    HUGE_NUMBERS,
    st.sampled_from(["http://[::1/web", "http://127.0.0.1:0/web", "https://crm.example.com:99999/web", "\x00",
                     "a\x00b", "<script>", "'; drop table users; --", "x" * 5000, "ops@corp.local", "on", "test"]),
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                         st.floats(allow_nan=False), JUNK_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(API_KEYS), st.text(max_size=8)),
                                                 inner, max_size=5)), max_leaves=12)
JSON_BODIES = st.one_of(
    st.dictionaries(st.sampled_from(API_KEYS), JSON_VALUES, max_size=8).map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.sampled_from(['{"email": "a\\ud800@x.example"}', '{"name": "\\u0000"}', "[" * 5000, "{", "", "null",
                     '{"email": "' + "a" * 400 + '@x.example"}',
                     '{"lead": {"email": "b@x.example"}, "partner": 1e99}']),
)
# A few examples per route, every route: the runs stay short and reproducible, yet each route sees junk.
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Out-of-range ids first: Hypothesis starts from the first branch, and those are what used to fail.
BAD_IDS = [2**70, 2**31, 2**63, 2**31 - 1, 0]


def row_counts() -> dict[str, int]:
    """Rows per table, in one query; sign-in throttles count attempts, refused or not, so they are left out."""
    tables = [t for t in db.metadata.sorted_tables if t.name != "login_throttles"]
    counts = db.session.execute(select(*[select(func.count()).select_from(t).scalar_subquery() for t in tables]))
    return dict(zip([t.name for t in tables], counts.one(), strict=True))


def fill(rule, integration_id: int, draw) -> str:
    """A path for a rule: ids are this tenant's integration or a generated number, other parts junk."""
    values = {}
    for arg in rule.arguments:
        converter = rule._converters[arg]
        if isinstance(converter, AnyConverter):
            values[arg] = draw(st.sampled_from(sorted(converter.items)))
        elif isinstance(converter, IntegerConverter):
            values[arg] = draw(st.sampled_from([*BAD_IDS[:2], integration_id, *BAD_IDS[2:]])
                               | st.integers(min_value=0, max_value=2**70))
        else:
            printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%")
            values[arg] = draw(st.one_of(st.text(printable, min_size=1, max_size=12),
                                         st.sampled_from(["org_url", "odata_url", "accept", "reject", "x"])))
    path = rule.build(values, append_unknown=False)[1]
    return path


def signed_in(app, factory, email: str) -> object:
    """A client signed in as an existing user."""
    client = app.test_client()
    page = client.get("/login")
    resp = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf_from(page.text)})
    assert resp.status_code == 302
    return client


@pytest.fixture
def tenants(app, factory):
    """A supplier and its partner, each with an administrator signed in and an API token."""
    from portal.tokens import create_token

    supplier_id = factory.org("Junk Supplier", "supplier")
    partner_id = factory.org("Junk Partner", "partner", ("Junk Supplier",))
    factory.user("boss@supplier.example", "Junk Supplier")
    factory.user("admin@partner.example", "Junk Partner")
    integration_id = factory.integration(partner_id)
    with app.app_context():
        tokens = [create_token(org, "junk")[1] for org in (supplier_id, partner_id)]
        db.session.commit()
    return {
        "clients": [signed_in(app, factory, "admin@partner.example"), signed_in(app, factory, "boss@supplier.example")],
        "tokens": tokens, "integration_id": integration_id,
    }


def routes(app, api: bool) -> list:
    """The rules of the forms (every route but static files and sign-out) or of the API."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "auth.logout") or rule.endpoint.startswith("api.") != api:
            continue
        out.append(rule)
    return sorted(out, key=lambda r: r.rule)


def test_every_form_route_survives_junk(app, tenants):
    rules = routes(app, api=False)
    assert len(rules) >= 20
    tokens = [csrf_from(c.get("/settings/api-tokens").text) for c in tenants["clients"]]

    @SETTINGS
    @given(data=st.data())
    def throw(rule, data):
        who = data.draw(st.integers(0, 1), label="who")
        client = tenants["clients"][who]
        path = fill(rule, tenants["integration_id"], data.draw)
        query = data.draw(st.dictionaries(st.sampled_from(["page", "before", "state", "next", "part", "partner"]),
                                          JUNK_TEXT, max_size=3), label="query")
        fields = data.draw(st.dictionaries(st.sampled_from(FORM_FIELDS), JUNK_TEXT, max_size=8), label="form")
        fields["csrf_token"] = tokens[who]
        method = data.draw(st.sampled_from(sorted(rule.methods - {"HEAD", "OPTIONS"})), label="method")
        htmx = data.draw(st.booleans(), label="htmx")
        with app.app_context():
            before = row_counts()
        resp = client.open(path, method=method, query_string=query, data=fields if method == "POST" else None,
                           headers={"HX-Request": "true", "X-CSRFToken": tokens[who]} if htmx else {})
        assert resp.status_code < 500, (method, path, query, fields, resp.status_code)
        if resp.status_code >= 400:
            with app.app_context():
                assert row_counts() == before, (method, path, fields, resp.status_code)

    for rule in rules:
        throw(rule)


def test_every_api_route_survives_junk(app, tenants):
    rules = routes(app, api=True)
    assert len(rules) >= 8
    client = app.test_client()

    @SETTINGS
    @given(data=st.data())
    def throw(rule, data):
        token = data.draw(st.sampled_from(tenants["tokens"]), label="token")
        path = fill(rule, tenants["integration_id"], data.draw)
        method = data.draw(st.sampled_from(sorted(rule.methods - {"HEAD", "OPTIONS"})), label="method")
        body = data.draw(JSON_BODIES, label="body")
        query = data.draw(st.dictionaries(st.sampled_from(["limit", "offset", "partner"]), JUNK_TEXT, max_size=3),
                          label="query")
        with app.app_context():
            before = row_counts()
        resp = client.open(path, method=method, query_string=query, data=body.encode("utf-8", "surrogatepass"),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        assert resp.status_code < 500, (method, path, body[:300], resp.status_code)
        assert resp.is_json, resp.data[:200]
        if resp.status_code >= 400:
            assert re.search(r"\w", resp.json["error"]["message"])
            with app.app_context():
                assert row_counts() == before, (method, path, body[:300], resp.status_code)

    for rule in rules:
        throw(rule)
