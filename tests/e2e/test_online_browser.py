"""Dynamics 365 online in a real browser: choose the kind, save, test, switch On, and switch kind back."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import LiveStack, screenshot
from .test_edit_settings_browser import assert_fits_the_window, open_edit, row, save_and_test

pytestmark = pytest.mark.browser

ONLINE_STEPS = ["URL check", "DNS and TCP", "TLS", "Sign-in (Microsoft Entra ID)", "Application user", "Version",
                "Read access", "Lead source option"]
WRONG_SECRET = "Wrong-Client-Secret-5"


def choose_online(page: Page, stack: LiveStack, secret: str) -> None:
    """Pick Dynamics 365 online and fill its fields with the sandbox's values."""
    crm = stack.crm
    section = page.locator("#connection")
    section.get_by_label("Dynamics 365 online").check()
    expect(section.get_by_label("CRM username")).to_be_hidden()
    expect(section.get_by_label("Environment URL")).to_be_visible()
    section.get_by_label("Environment URL").fill(crm.environment_url)
    section.get_by_label("Tenant id").fill(crm.tenant_id)
    section.get_by_label("Application (client) id").fill(crm.client_id)
    section.get_by_label("Client secret").fill(secret)


def test_choose_online_save_test_switch_on_and_back(page: Page, stack: LiveStack):
    stack.reset(connected=True)  # the on-premises values are saved already
    open_edit(page, stack)
    choose_online(page, stack, stack.crm.client_secret)
    watched = save_and_test(page)
    assert watched["outcome"] == "passed", watched
    expect(page.locator("#test-status [data-test=passed]")).to_have_text(
        re.compile(r"^Connected as .+, CRM version 9\.2"))
    steps = page.locator("#test-status .steps li strong")
    assert [s.strip() for s in steps.all_inner_texts()] == ONLINE_STEPS
    for rendering in watched["renderings"]:
        assert rendering == ONLINE_STEPS[: len(rendering)], rendering
    # The secret is write-only: the field is empty again, says one is saved, and the page never holds it.
    connection = page.locator("#connection")
    expect(connection.get_by_label("Client secret")).to_have_value("")
    expect(connection.locator("[data-secret-state]")).to_have_attribute("data-secret-state", "saved")
    assert stack.crm.client_secret not in page.content()
    saved = stack.integration()
    assert saved["connection_kind"] == "online" and saved["last_test_ok"] is True
    screenshot(page, "07-online-save-and-test-passed")

    # On also needs General Settings and a Usage Profile saved (other sections, tested on their own).
    from portal.extensions import db
    from portal.models import CrmIntegration

    with stack.app.app_context():
        integ = db.session.get(CrmIntegration, stack.integration_id)
        integ.supplier_id = integ.organization.suppliers[0].id
        integ.marketing_automation = True
        db.session.commit()
        db.session.remove()
    page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name="CRM Settings").click()
    dynamics = row(page, stack)
    switch = dynamics.get_by_role("switch")
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    expect(dynamics.locator("[data-state]")).to_have_text("On")
    assert stack.integration()["enabled"] is True
    assert_fits_the_window(page)

    # Back to on-premises: its saved values are all there; the online ones stay saved too.
    page.locator("main a", has_text="Edit Settings").click()
    connection = page.locator("#connection")
    expect(connection.get_by_label("Dynamics 365 online")).to_be_checked()
    connection.get_by_label("On-premises (Windows sign-in)").check()
    expect(connection.get_by_label("Environment URL")).to_be_hidden()
    expect(connection.get_by_label("CRM username")).to_have_value(stack.crm.username)
    expect(connection.get_by_label("Organization Web Service URL")).to_have_value(stack.crm.org_url)
    connection.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#flash")).to_contain_text("CRM Connection Settings saved.")
    saved = stack.integration()
    assert saved["connection_kind"] == "onprem" and saved["environment_url"] == stack.crm.environment_url
    assert saved["client_secret_encrypted"] and saved["password_encrypted"]
    # A kind change needs a new passing test: the integration did not stay On on untested settings.
    assert saved["enabled"] is False


def test_wrong_client_secret_says_what_to_do(page: Page, stack: LiveStack):
    stack.reset()
    open_edit(page, stack)
    choose_online(page, stack, WRONG_SECRET)
    assert save_and_test(page)["outcome"] == "failed"
    failed = page.locator("#test-status [data-test=failed]")
    expect(failed).to_have_attribute("data-code", "auth_failed")
    expect(failed).to_contain_text("Microsoft Entra ID refused the client secret.")
    expect(failed).to_contain_text("What to do: Create a new client secret")
    expect(page.locator("#test-status .steps li[data-ok=false] strong")).to_have_text("Sign-in (Microsoft Entra ID)")
    assert WRONG_SECRET not in page.content()
    screenshot(page, "08-online-wrong-secret")
