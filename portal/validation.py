"""The rules every input meets at the door, used alike by the forms, the JSON API and the command line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# C0 control characters other than tab, line feed and carriage return, and lone surrogates: PostgreSQL
# refuses NUL, the others corrupt CSV exports, logs and the CRM, and a surrogate cannot even be encoded.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"[\t\r\n]")

# Syntax only: an address on an internal domain (ops@corp.local under Active Directory) or a single-label
# domain is as valid here as a public one; whether mail reaches it is not the portal's concern.
_LOCAL_PART = re.compile(r"^(?!\.)(?!.*\.\.)[^\s@\"(),:;<>\[\]\\]{1,64}(?<!\.)$")
_DOMAIN_LABEL = re.compile(r"^[^\W_](?:[^\W_]|-){0,62}(?<!-)$")
EMAIL_MAX = 320


def text_problem(value: str, *, multiline: bool = True) -> str | None:
    """Why a text value is refused (a control character or a lone surrogate), or None.

    Tab, carriage return and line feed are allowed unless the field is single-line.
    """
    found = _FORBIDDEN.search(value)
    if found is None and not multiline:
        found = _LINE_BREAKS.search(value)
    if found is None:
        return None
    char = found.group(0)
    what = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"contains {what} (U+{ord(char):04X}) at position {found.start() + 1}: remove it."


def json_text_problems(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, problem) for every key or string in a JSON document that breaks the text rule."""
    if isinstance(data, str):
        problem = text_problem(data)
        if problem:
            yield path or "body", problem
    elif isinstance(data, dict):
        for key, value in data.items():
            here = f"{path}.{key}" if path else str(key)
            key_problem = text_problem(str(key))
            if key_problem:
                yield here, f"its name {key_problem}"
            yield from json_text_problems(value, here)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from json_text_problems(value, f"{path}[{index}]")


def email_problem(value: str) -> str | None:
    """Why a value is not an email address by its syntax (no deliverability or special-use check), or None."""
    email = value.strip() if isinstance(value, str) else ""
    if not email:
        return "Enter an email address."
    if len(email) > EMAIL_MAX:
        return f"An email address has at most {EMAIL_MAX} characters."
    if text_problem(email, multiline=False):
        return "An email address cannot contain control characters."
    local, at, domain = email.rpartition("@")
    if not at or not _LOCAL_PART.match(local) or not domain or len(domain) > 255 \
            or not all(_DOMAIN_LABEL.match(label) for label in domain.removesuffix(".").split(".")):
        return "Enter a valid email address, e.g. ann@example.com."
    return None
