"""Words as pages show them: counts agree in number, and what a CRM says about itself is kept to a length."""

from __future__ import annotations

from jobs.connection import NAME_SHOWN
from portal.wording import at_most, counted


def test_a_count_agrees_with_its_noun():
    assert counted(1, "CRM member") == "1 CRM member"
    assert counted(0, "CRM member") == "0 CRM members"
    assert counted(2, "batch", "batches") == "2 batches"


def test_a_text_within_the_limit_is_kept_as_it_is():
    assert at_most("Pat Doe (SANDBOX\\pat)", 300) == "Pat Doe (SANDBOX\\pat)"
    assert at_most("x" * 300, 300) == "x" * 300


def test_a_longer_text_is_cut_to_the_limit_with_an_ellipsis():
    """A CRM user's name of megabytes (a broken or hostile CRM) would be kept on every test and page."""
    shown = at_most("N" * 2_000_000, NAME_SHOWN)
    assert len(shown) == NAME_SHOWN and shown.endswith("…") and shown.startswith("NNN")
