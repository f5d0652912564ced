"""The sandbox's `like` follows SQL Server's LIKE, as FetchXML on a real server does."""

from __future__ import annotations

import pytest

from portal.connectors.dynamics import like_contains, like_literal
from sandbox.like import escape_like, sql_server_like


@pytest.mark.parametrize(("value", "pattern", "matches"), [
    ("abc", "a%", 1), ("abc", "a_c", 1), ("abbc", "a_c", 0),
    ("ABC", "abc", 1),  # the default collation ignores case
    ("b", "[a-c]", 1), ("d", "[a-c]", 0), ("d", "[^a-c]", 1), ("b", "[^a-c]", 0),
    ("x", "[xyz]", 1), ("w", "[xyz]", 0),
    ("note [ref:E12]", "%[ref:E%", 0),  # an unclosed [ matches nothing
    ("note [ref:E12]", "%[[]ref:E%", 1),
    ("50%", "50[%]", 1), ("505", "50[%]", 0), ("a_b", "a[_]b", 1), ("axb", "a[_]b", 0),
    (None, "%", None),
])
def test_sql_server_like(value, pattern, matches):
    assert sql_server_like(value, pattern) == matches


@pytest.mark.parametrize("literal", ["[ref:E12]", "100%", "first_name", "a[b]c%_", "plain"])
def test_escaped_literals_match_only_themselves(literal):
    assert like_literal(literal) == escape_like(literal)
    assert sql_server_like(literal, like_literal(literal)) == 1
    assert sql_server_like(f"x {literal} y", like_contains(literal)) == 1
    assert sql_server_like(literal.replace("_", "x").replace("%", "y") + "!", like_literal(literal)) == 0
