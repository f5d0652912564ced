"""One blueprint per area of the portal, and the bounds on numbers they read from a request."""

from __future__ import annotations

from flask import request
from werkzeug.routing import IntegerConverter

# Every id column is a 32-bit INTEGER on PostgreSQL: a larger number in a path or query cannot name a row,
# and handed to the database it fails the whole statement.
DB_INT_MAX = 2**31 - 1


class RowIdConverter(IntegerConverter):
    """``<int:...>`` in routes: a whole number a database id can hold, anything larger is a 404."""

    def __init__(self, map, *args, **kwargs) -> None:  # noqa: A002 - Werkzeug's parameter name
        kwargs.setdefault("max", DB_INT_MAX)
        super().__init__(map, *args, **kwargs)


def page_arg(name: str = "page") -> int:
    """A page number from the query string: 1 when absent, not a number, or beyond any real page."""
    value = request.args.get(name, 1, type=int) or 1
    return value if 1 <= value <= 1_000_000 else 1


def id_arg(name: str) -> int | None:
    """A row id from the query string, or None when absent or not one a row can have."""
    value = request.args.get(name, type=int)
    return value if value is not None and 1 <= value <= DB_INT_MAX else None
