"""The CRM integration portal: ``create_app()`` builds the Flask application.

The factory is loaded on first use, so that importing a part that needs no web app (the Dynamics connector)
does not load Flask, SQLAlchemy or RQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    """``portal.create_app``, imported when first asked for."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'portal' has no attribute {name!r}")
