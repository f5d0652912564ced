"""Who may see what: administrators only in Settings, and never another organization's data."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import abort
from flask_login import current_user, login_required
from sqlalchemy import select

from .extensions import db, login_manager
from .models import OWN_INTEGRATION, CrmIntegration, User


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """Flask-Login's loader: the session names the user and the session version it was issued under.

    A session from before a sign-out, a password change or disabling names an older version: it is refused.
    """
    row_id, _, version = user_id.partition(":")
    if not (row_id.isdigit() and version.isdigit()) or len(row_id) > 18:
        return None
    user = db.session.get(User, int(row_id))
    if user is None or not user.is_active or str(user.session_version) != version:
        return None
    return user


def admin_required(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Signed-in administrators only; members get the 403 page (P2)."""

    @functools.wraps(fn)
    @login_required
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_admin:
            abort(403)
        return fn(*args, **kwargs)

    return wrapper


# Built once: a statement built per request costs more CPU than running it (SQLAlchemy caches the compiled SQL,
# not the building of the statement nor its cache key).
_OWN_INTEGRATION = select(CrmIntegration).where(*OWN_INTEGRATION)


def own_integration(integration_id: int) -> CrmIntegration:
    """The signed-in user's organization's integration, or 404 — never another tenant's (P3)."""
    found = db.session.scalar(_OWN_INTEGRATION, {"integration_id": integration_id,
                                                 "organization_id": current_user.organization_id})
    if found is None:
        abort(404)
    return found
