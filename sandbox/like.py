"""SQL Server's LIKE, as FetchXML `like` reaches it on a real server: %, _, [set], [a-z], [^set]."""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=512)
def like_regex(pattern: str) -> re.Pattern[str] | None:
    """The compiled regular expression of a LIKE pattern, or None when the pattern can match nothing.

    An unclosed ``[`` makes SQL Server's LIKE match nothing at all, so the pattern ``%[ref:E%`` finds no row.
    Comparison is case-insensitive, as with the default collation (SQL_Latin1_General_CP1_CI_AS).
    """
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return None
            body = pattern[i + 1:end]
            negate = body.startswith("^") and len(body) > 1
            if negate:
                body = body[1:]
            if not body:
                return None  # "[]" holds no character
            parts = []
            j = 0
            while j < len(body):
                if j + 2 < len(body) and body[j + 1] == "-":
                    parts.append(f"{re.escape(body[j])}-{re.escape(body[j + 2])}")
                    j += 3
                else:
                    parts.append(re.escape(body[j]))
                    j += 1
            out.append(f"[{'^' if negate else ''}{''.join(parts)}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    try:
        return re.compile("".join(out), re.IGNORECASE | re.DOTALL)
    except re.error:
        return None  # a reversed range ([z-a]) matches nothing


def sql_server_like(value: object, pattern: object) -> int | None:
    """SQLite function body: 1 when value matches the pattern, 0 when not, NULL when either is NULL."""
    if value is None or pattern is None:
        return None
    regex = like_regex(str(pattern))
    return int(regex is not None and regex.match(str(value)) is not None)


def escape_like(text: str) -> str:
    """A literal as a LIKE pattern that matches exactly it (what the OData functions do on the server)."""
    return "".join(f"[{c}]" if c in "%_[" else c for c in text)
