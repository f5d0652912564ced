"""Counts in words: "1 member", "2 members"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """The count with its noun, singular for one ("1 CRM member", "5 CRM members")."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
