"""Words as pages show them: counts ("1 member", "2 members") and texts kept to a length."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """The count with its noun, singular for one ("1 CRM member", "5 CRM members")."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def at_most(text: str, limit: int) -> str:
    """The text, or its start and "…" in ``limit`` characters when it is longer (what a CRM says about itself)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
