"""Password rules for portal accounts."""

from __future__ import annotations

COMMON = {"password", "passw0rd", "123456789", "1234567890", "qwertyuiop", "letmein", "welcome", "iloveyou",
          "administrator", "changeme"}


def weakness(password: str, email: str = "") -> str | None:
    """Why a password is too weak, or None when it is acceptable."""
    if len(password) < 10:
        return "The password must have at least 10 characters."
    lowered = password.lower()
    if lowered in COMMON or any(lowered.startswith(c) and len(lowered) - len(c) < 3 for c in COMMON):
        return "The password is too common: choose another."
    classes = sum([
        any(c.islower() for c in password), any(c.isupper() for c in password),
        any(c.isdigit() for c in password), any(not c.isalnum() for c in password),
    ])
    if classes < 3:
        return "The password must mix at least three of: lower case, upper case, digits, symbols."
    local = email.split("@", 1)[0].lower()
    if len(local) >= 4 and local in lowered:
        return "The password must not contain the email's name."
    return None
