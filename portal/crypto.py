"""Encryption of CRM secrets at rest with rotating Fernet keys (the first encrypts, all decrypt)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with any configured key."""


def _keys(raw: str) -> MultiFernet:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise RuntimeError("PORTAL_ENCRYPTION_KEYS holds no key")
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:
        raise RuntimeError(
            "PORTAL_ENCRYPTION_KEYS must be comma-separated Fernet keys (32 url-safe base64 bytes each)"
        ) from exc


def fernet() -> MultiFernet:
    """The MultiFernet for the current app, cached on its extensions."""
    cached = current_app.extensions.get("portal_fernet")
    if cached is None:
        cached = _keys(current_app.config["PORTAL_ENCRYPTION_KEYS"])
        current_app.extensions["portal_fernet"] = cached
    return cached


def encrypt(plain: str) -> str:
    """Encrypt a secret with the first key."""
    return fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a secret with any configured key."""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "The stored CRM password cannot be decrypted with the configured keys: enter it again."
        ) from exc


def rotate(token: str) -> str:
    """Re-encrypt a secret under the first (newest) key."""
    return fernet().rotate(token.encode()).decode()
