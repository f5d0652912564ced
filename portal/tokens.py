"""API tokens: made once and shown once, stored only as a SHA-256 hash, revoked by an administrator."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select

from .extensions import db
from .models import utcnow
from .platform_models import ApiToken

PREFIX = "zpt_"  # tells a leaked token apart in logs and secret scanners
SHOWN = 12  # characters of the token kept to recognise it in the listing (the column's length)
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often: no write on every call


def hash_token(raw: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(raw.encode()).hexdigest()


def create_token(org_id: int, name: str) -> tuple[ApiToken, str]:
    """A new token for the organization; the raw value is returned here and never again."""
    raw = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(organization_id=org_id, name=name.strip()[:100], prefix=raw[:SHOWN], token_hash=hash_token(raw))
    db.session.add(row)
    db.session.commit()
    return row, raw


def authenticate(raw: str) -> ApiToken | None:
    """The live token with this value, its last use stamped; None when unknown or revoked."""
    if not raw or len(raw) > 200:
        return None
    # The lookup is by hash: a guess reveals nothing through timing about any stored token.
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(raw)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
        row.last_used_at = now
        db.session.commit()
    return row


def tokens_of(org_id: int) -> list[ApiToken]:
    """The organization's tokens, live ones first, newest first."""
    return list(db.session.scalars(select(ApiToken).where(ApiToken.organization_id == org_id)
                                   .order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())))


def revoke(row: ApiToken) -> bool:
    """Revoke a token for good; True if it was live."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    db.session.commit()
    return True
