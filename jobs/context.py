"""One Flask app per worker process, so jobs run inside an application context."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_app = None


def app():
    """The worker's Flask app, created on first use."""
    global _app
    if _app is None:
        from portal import create_app

        _app = create_app()
    return _app


def with_app(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a job inside an app context, reusing one pushed by the caller (tests, CLI)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flask import has_app_context

        if has_app_context():
            return fn(*args, **kwargs)
        with app().app_context():
            try:
                return fn(*args, **kwargs)
            finally:
                from portal.extensions import db

                db.session.remove()

    return wrapper
