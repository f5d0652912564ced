"""Saying the right thing in a real browser: unsaved edits, On with nothing to do, failed records in plain words,
errors that say where they came from, and the next step (issue 13, items 6-10)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from portal.extensions import db

from .conftest import LiveStack, screenshot
from .test_edit_settings_browser import fill_connection, open_edit, open_listing, row, save_and_test

pytestmark = pytest.mark.browser


def set_up(stack: LiveStack, **fields) -> None:
    """Save settings on the demo integration directly (as if their sections had been saved)."""
    from portal.models import CrmIntegration, Organization

    with stack.app.app_context():
        integ = db.session.get(CrmIntegration, stack.integration_id)
        if fields.pop("supplier", False):
            integ.supplier_id = db.session.query(Organization.id).filter_by(name="Demo Supplier").scalar()
        for key, value in fields.items():
            setattr(integ, key, value)
        db.session.commit()
        db.session.remove()


def test_unsaved_edits_are_marked_kept_and_warned_about(page: Page, stack: LiveStack):
    open_edit(page, stack)
    usage = page.locator("#usage")
    expect(usage.locator("[data-unsaved]")).to_be_hidden()
    usage.get_by_label("Lead Distribution", exact=True).check()
    expect(usage.locator("[data-unsaved]")).to_be_visible()

    # Saving another section refreshes Usage Profile out of band; the unsaved change survives it.
    general = page.locator("#general")
    general.get_by_label("Supplier").select_option(label="Demo Supplier")
    general.get_by_role("button", name="Save General Settings").click()
    expect(page.locator("#general [data-saved=general]")).to_be_visible()
    expect(page.locator("#usage").get_by_label("Lead Distribution", exact=True)).to_be_checked()
    expect(page.locator("#usage [data-unsaved]")).to_be_visible()
    expect(page.locator("#general [data-unsaved]")).to_be_hidden()

    # Leaving asks first; staying keeps the page and the edit.
    dialogs: list[str] = []

    def stay(dialog):
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", stay)
    page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name="CRM Settings").click()
    expect(page.locator("#usage").get_by_label("Lead Distribution", exact=True)).to_be_checked()
    assert dialogs == ["beforeunload"]
    assert re.search(r"/edit$", page.url)

    page.locator("#usage").get_by_role("button", name="Save Usage Profile").click()
    expect(page.locator("#usage [data-saved=usage]")).to_be_visible()
    expect(page.locator("#usage [data-unsaved]")).to_be_hidden()
    assert stack.integration()["lead_distribution"] is True
    page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name="CRM Settings").click()
    expect(page).to_have_url(re.compile(r"/settings/crm$"))
    assert dialogs == ["beforeunload"]


def test_on_is_refused_until_general_settings_and_a_usage_profile_are_saved(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    open_listing(page)
    dynamics = row(page, stack)
    dynamics.get_by_role("switch").click()
    refusal = dynamics.locator("[data-refusal]")
    expect(refusal).to_contain_text("Save General Settings and the Usage Profile first")
    expect(dynamics.get_by_role("switch")).to_have_attribute("aria-checked", "false")
    assert stack.integration()["enabled"] is False
    expect(refusal.locator("[data-missing=general]")).to_have_text("Open General Settings")
    refusal.locator("[data-missing=usage]").click()
    expect(page).to_have_url(re.compile(rf"/settings/crm/{stack.integration_id}/edit#usage$"))

    set_up(stack, supplier=True)
    page.goto("/settings/crm")
    row(page, stack).get_by_role("switch").click()
    refusal = row(page, stack).locator("[data-refusal]")
    expect(refusal).to_contain_text("Save the Usage Profile first")
    expect(refusal).not_to_contain_text("General Settings")

    set_up(stack, marketing_automation=True)
    page.goto("/settings/crm")
    row(page, stack).get_by_role("switch").click()
    expect(row(page, stack).locator("[data-state]")).to_have_text("On")
    assert stack.integration()["enabled"] is True


def test_failed_records_lead_with_a_plain_sentence_and_the_person(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    run_id = stack.failed_run()
    open_listing(page)
    page.goto(f"/settings/crm/{stack.integration_id}/runs/{run_id}")
    failure = page.locator("#failures tbody tr").first
    message = failure.locator("[data-failure-message]")
    expect(message).to_have_text("The CRM user is not allowed to create leads in the CRM.")
    expect(message).not_to_contain_text("SecLib")
    expect(failure.locator("[data-failure-action]")).to_contain_text("prvCreateLead")
    expect(failure.locator("[data-record]")).to_have_text(re.compile(r"^First\d+ Last\d+ <refused.+@example\.net>$"))
    raw = failure.locator("[data-raw]")
    expect(raw.locator("pre")).to_be_hidden()
    raw.locator("summary").click()
    expect(raw.locator("pre")).to_contain_text("SecLib::AccessCheckEx")
    page.set_viewport_size({"width": 1280, "height": 900})
    screenshot(page, "desktop-1280-run-failed-records")


def test_a_run_where_every_record_failed_is_labelled_failed(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    run_id = stack.failed_run()
    open_listing(page)
    page.goto(f"/settings/crm/{stack.integration_id}/runs")
    history = page.locator(f"#run-{run_id}")
    expect(history).to_have_attribute("data-status", "failed")
    expect(history.locator("[data-status]")).to_have_text("failed")
    page.goto(f"/settings/crm/{stack.integration_id}/runs/{run_id}")
    expect(page.locator("#run-body")).to_have_attribute("data-status", "failed")
    # Not "the run stopped": it ran to the end, and every record it tried failed.
    message = page.locator("[data-run-message]")
    expect(message).to_contain_text("Every record this run tried failed")
    expect(message).not_to_contain_text("stopped")


def test_an_error_says_when_it_happened_and_that_a_sync_raised_it(page: Page, stack: LiveStack):
    from portal.models import CrmIntegration

    stack.reset(connected=True, tested=True, enabled=True)
    with stack.app.app_context():
        integ = db.session.get(CrmIntegration, stack.integration_id)
        integ.set_error("auth_failed", "The CRM rejected the user name or password.",
                        "Check the user name, password and Windows domain.")
        db.session.commit()
        db.session.remove()
    open_listing(page)
    dynamics = row(page, stack)
    expect(dynamics.locator("[data-state]")).to_have_text("Error")
    expect(dynamics.locator("td").nth(1)).to_contain_text("Passed")
    expect(dynamics.locator("[data-sync-error]")).to_contain_text("but a sync failed")
    banner = dynamics.locator(".banner")
    expect(banner.locator("[data-error-source]")).to_have_text(
        re.compile(r"^A sync failed on \d{4}-\d\d-\d\d \d\d:\d\d UTC, after the connection test had passed:$"))
    banner.get_by_role("link", name="Open Edit Settings to fix it").click()
    expect(page).to_have_url(re.compile(rf"/settings/crm/{stack.integration_id}/edit$"))


def test_a_passed_test_says_what_comes_next_and_syncing_is_worded_plainly(page: Page, stack: LiveStack):
    set_up(stack, supplier=True, lead_distribution=True)
    open_edit(page, stack)
    fill_connection(page, stack)
    assert save_and_test(page)["outcome"] == "passed"
    following = page.locator("#test-status [data-next-step]")
    expect(following).to_have_text("Next: switch the integration On in CRM Settings.")
    following.get_by_role("link", name="CRM Settings").click()
    expect(page).to_have_url(re.compile(r"/settings/crm$"))

    worker = page.get_by_role("region", name="Background syncing")
    worker.get_by_role("button", name="Check background syncing").click()
    expect(worker.locator("[data-health=ok]")).to_contain_text("Background syncing: working.")

    set_up(stack, supplier_id=None, lead_distribution=False)
    open_edit(page, stack)
    assert save_and_test(page)["outcome"] == "passed"
    expect(page.locator("#test-status [data-next-step]")).to_have_text(
        "Next: save General Settings and the Usage Profile, then switch the integration On in CRM Settings.")
