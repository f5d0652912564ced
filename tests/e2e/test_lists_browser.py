"""Contact lists in a real browser: Create from CRM list, the first import arriving in place, members searched,
and the page on a phone (issue 13, item 11)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import LiveStack, screenshot, sign_in
from .test_guidance_browser import set_up
from .test_reach_browser import WATCH_ANNOUNCER, fits

pytestmark = pytest.mark.browser

SPRINGFIELD = "Springfield leads from the web (dynamic)"


def test_create_a_contact_list_from_a_crm_list_and_find_a_member(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    set_up(stack, supplier=True, marketing_automation=True, ma_pull_contacts=True, lead_source_value=100000000)

    def open_lists() -> None:
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Contact lists").click()

    sign_in(page)
    open_lists()
    expect(page.get_by_role("heading", name="Contact lists", level=1)).to_be_visible()
    page.get_by_role("button", name="Create from CRM list").click()
    expect(page).to_have_url(re.compile(r"/lists/new$"))
    crm_list = page.get_by_label("CRM marketing list")
    options = crm_list.locator("option").all_inner_texts()
    assert any(o.startswith(SPRINGFIELD + " (dynamic, leads, ") for o in options), options
    assert not any("Key accounts" in o for o in options)

    page.get_by_role("button", name="Create contact list").click()  # nothing chosen: said next to the field
    expect(page.locator('[data-error-for="crm_list_id"]')).to_have_text("Choose one of your CRM's marketing lists.")
    crm_list = page.get_by_label("CRM marketing list")
    crm_list.select_option(label=next(o for o in options if o.startswith(SPRINGFIELD)))
    page.get_by_label("Contact list name").fill("Springfield web leads")
    expect(page.get_by_label("Keep list in sync with CRM Leads")).to_be_checked()
    page.get_by_role("button", name="Create contact list").click()

    expect(page).to_have_url(re.compile(r"/lists/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Springfield web leads")
    expect(page.locator("#flash")).to_contain_text("its members are being imported")
    # The first import arrives in place (the page polls until it is done).
    expect(page.locator("[data-member]")).to_have_count(5, timeout=30_000)
    expect(page.locator("[data-facts]")).to_contain_text("kept in sync with CRM Leads, nightly")
    expect(page.locator("[data-facts]")).to_contain_text("dynamic list")
    first_email = page.locator("[data-member] td").nth(1).inner_text()
    page.get_by_role("searchbox", name="Search members by name or email").fill(first_email.split("@")[0])
    page.get_by_role("button", name="Search").click()
    expect(page.locator("[data-member]")).to_have_count(1)
    expect(page.locator("[data-member]")).to_contain_text(first_email)
    screenshot(page, "desktop-1280-contact-list-members")

    open_lists()
    listing = page.locator("table.contact-lists tbody tr")
    expect(listing).to_have_count(1)
    expect(listing.locator("[data-member-type]")).to_have_text("leads")
    expect(listing.locator("[data-type]")).to_have_text("dynamic")
    expect(listing.locator("[data-count]")).to_have_text("5")
    expect(listing.locator("time")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))
    screenshot(page, "desktop-1280-contact-lists")

    page.set_viewport_size({"width": 375, "height": 740})
    page.reload()
    fits(page, 375)
    screenshot(page, "phone-375-contact-lists")
    listing.locator("a").first.click()
    expect(page.locator("[data-member]")).to_have_count(5)
    fits(page, 375)
    screenshot(page, "phone-375-contact-list-members")


def test_a_list_of_contacts_is_worded_for_contacts_and_its_import_is_announced(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    set_up(stack, supplier=True, marketing_automation=True, ma_pull_contacts=True, lead_source_value=100000000)
    sign_in(page)
    page.goto("/lists/new")
    crm_list = page.get_by_label("CRM marketing list")
    options = crm_list.locator("option").all_inner_texts()
    newsletter = next(o for o in options if o.startswith("Newsletter contacts (static)"))
    assert newsletter.endswith(", 6 members)"), newsletter
    crm_list.select_option(label=newsletter)
    # The switch names the kind of records the chosen list holds.
    keep = page.get_by_role("switch", name="Keep list in sync with CRM Contacts")
    expect(keep).to_be_visible()
    expect(page.get_by_text("CRM Leads")).to_have_count(0)
    page.get_by_label("Contact list name").fill("Newsletter readers")
    keep.uncheck()
    page.get_by_role("button", name="Create contact list").click()
    expect(page).to_have_url(re.compile(r"/lists/\d+$"))
    page.evaluate(WATCH_ANNOUNCER)
    expect(page.locator("[data-member]")).to_have_count(5, timeout=30_000)
    facts = page.locator("[data-facts]")
    expect(facts).to_contain_text("5 members · contacts · static list")
    # One of the six has no email address: said in the singular.
    expect(facts).to_contain_text("1 CRM member without an email address was left out.")
    expect(page.locator("main")).not_to_contain_text("CRM Leads")
    # The finished import is said once, by the one live region.
    expect(page.locator("#announcer")).to_contain_text("“Newsletter readers” imported: 5 members.")
    announced = page.evaluate("() => window.__announced")
    assert sum("imported" in text for text in announced) == 1, announced
    screenshot(page, "desktop-1280-contact-list-of-contacts")
