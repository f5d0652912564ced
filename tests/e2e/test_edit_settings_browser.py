"""Edit Settings in a real browser: the issue's flow against the live portal, worker and sandbox CRM."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import ADMIN, MEMBER, LiveStack, screenshot, sign_in

pytestmark = pytest.mark.browser

DYNAMICS = "Microsoft Dynamics CRM"
STEPS = ["URL check", "DNS and TCP", "TLS", "NTLM handshake", "Organization Service", "WhoAmI", "Version",
         "Read access", "Lead source option", "Field lengths", "OData"]
WRONG_PASSWORD = "Wrong-Pass-9"

# Records, in the page, every rendering of the connection test (its step names) and when the test was
# started and when its outcome appeared, so the figure does not depend on how often Playwright polls.
WATCH_TEST_STATUS = """() => {
  const watch = window.__testWatch = {clickedAt: null, doneAt: null, outcome: null, renderings: []};
  document.addEventListener("click", (event) => {
    if (event.target.closest("button[name=action][value=test]")) watch.clickedAt = performance.now();
  }, true);
  new MutationObserver(() => {
    const status = document.getElementById("test-status");
    if (!status || watch.clickedAt === null) return;
    const steps = [...status.querySelectorAll(".steps li strong")].map((s) => s.textContent.trim());
    const last = watch.renderings[watch.renderings.length - 1];
    if (!last || last.join("|") !== steps.join("|")) watch.renderings.push(steps);
    const outcome = status.querySelector("[data-test=passed], [data-test=failed], [data-test=stuck]");
    if (outcome && watch.doneAt === null) {
      watch.doneAt = performance.now();
      watch.outcome = outcome.dataset.test;
    }
  }).observe(document.getElementById("main"), {subtree: true, childList: true});
}"""


def open_listing(page: Page) -> None:
    """Sign in as the demo administrator, who lands on CRM Settings."""
    sign_in(page, ADMIN)
    expect(page).to_have_url(re.compile(r"/settings/crm$"))
    expect(page.get_by_role("heading", name="CRM Settings", exact=True)).to_be_visible()


def open_edit(page: Page, stack: LiveStack) -> None:
    """Sign in and open Edit Settings of the demo partner's Dynamics CRM from the listing."""
    open_listing(page)
    page.locator("main a", has_text="Edit Settings").click()
    expect(page).to_have_url(re.compile(rf"/settings/crm/{stack.integration_id}/edit$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Edit Settings")


def row(page: Page, stack: LiveStack):
    """The listing's row group (the row and its banner) of the Dynamics CRM."""
    return page.locator(f"#crm-{stack.integration_id}")


def fill_connection(page: Page, stack: LiveStack, password: str | None = None) -> None:
    """Fill CRM Connection Settings with the sandbox's values (and the given or the right password)."""
    crm = stack.crm
    section = page.locator("#connection")
    section.get_by_label("CRM username").fill(crm.username)
    section.get_by_label("CRM password").fill(password or crm.password)
    section.get_by_label("Organization Web Service URL").fill(crm.org_url)
    section.get_by_label("OData Service URL").fill(crm.webapi_url)
    section.get_by_label("Domain (NTLM)").fill(crm.domain)


def save_and_test(page: Page, timeout: float = 15_000) -> dict:
    """Click Save and Test CRM Connection and wait for the outcome; returns what the page watched."""
    page.evaluate(WATCH_TEST_STATUS)
    page.get_by_role("button", name="Save and Test CRM Connection").click()
    outcome = page.locator("#test-status").locator("[data-test=passed], [data-test=failed], [data-test=stuck]")
    expect(outcome).to_be_visible(timeout=timeout)
    page.wait_for_function("() => window.__testWatch && window.__testWatch.doneAt !== null")
    return page.evaluate("() => window.__testWatch")


def assert_fits_the_window(page: Page) -> None:
    """Nothing sticks out sideways (a page wider than the window scrolls horizontally)."""
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), "the page overflows"


def mark_page(page: Page) -> None:
    """Leave a mark in the window that a full page load would wipe out."""
    page.evaluate("() => { window.__samePage = true; }")


def assert_same_page(page: Page) -> None:
    """The mark is still there: the change came by htmx, without a page load."""
    assert page.evaluate("() => window.__samePage === true"), "the page was reloaded"


def test_general_settings_save_in_place(page: Page, stack: LiveStack):
    open_listing(page)
    dynamics = row(page, stack)
    expect(dynamics.get_by_role("rowheader")).to_contain_text(DYNAMICS)
    expect(dynamics.locator("[data-state]")).to_have_text("Off")
    expect(dynamics.get_by_role("switch")).to_have_attribute("aria-checked", "false")
    assert_fits_the_window(page)
    screenshot(page, "01-crm-settings-listing")

    dynamics.locator("a", has_text="Edit Settings").click()
    expect(page).to_have_url(re.compile(rf"/settings/crm/{stack.integration_id}/edit$"))
    general = page.locator("#general")
    supplier = general.get_by_label("Supplier")
    # The demo partner has exactly one supplier: a fresh integration has it preselected.
    expect(supplier.locator("option:checked")).to_have_text("Demo Supplier")
    supplier.select_option(label="Demo Supplier")
    general.get_by_label("Leads", exact=True).check()
    mark_page(page)
    general.get_by_role("button", name="Save General Settings").click()

    expect(page.locator("#general [data-saved=general]")).to_have_text("Saved.")
    expect(page.locator("#flash")).to_contain_text("General Settings saved.")
    assert_same_page(page)
    expect(page.locator("#general").get_by_label("Supplier").locator("option:checked")).to_have_text("Demo Supplier")
    saved = stack.integration()
    assert saved["supplier_id"] and saved["record_leads_as"] == "lead"
    screenshot(page, "02-edit-settings-general-saved")


def test_save_and_test_shows_each_step_then_connected_as(page: Page, stack: LiveStack):
    open_edit(page, stack)
    fill_connection(page, stack)
    mark_page(page)
    watched = save_and_test(page)

    seconds = (watched["doneAt"] - watched["clickedAt"]) / 1000
    waited, ran = stack.last_job_seconds()
    print(f"\nE2E-TIMING save-and-test: {seconds:.2f} s (click to 'Connected as' in the page; the job waited "
          f"{waited:.2f} s in the queue and ran {ran:.2f} s; {len(watched['renderings'])} renderings, "
          "the page polls every 0.5 s)")
    assert watched["outcome"] == "passed"
    passed = page.locator("#test-status [data-test=passed]")
    expect(passed).to_have_text(re.compile(r"^Connected as .+, CRM version \d+\.\d+"))
    steps = page.locator("#test-status .steps li")
    expect(steps).to_have_count(len(STEPS))
    assert [s.strip() for s in steps.locator("strong").all_inner_texts()] == STEPS
    for step in steps.all():
        expect(step).to_have_attribute("data-ok", "true")
    # Every rendering while it ran was a prefix of the final list: steps only ever get added, in order.
    for rendering in watched["renderings"]:
        assert rendering == STEPS[: len(rendering)], rendering
    assert_same_page(page)
    expect(page.locator("#flash")).to_contain_text("CRM Connection Settings saved.")
    saved = stack.integration()
    assert saved["username"] == stack.crm.username and saved["last_test_ok"] is True
    screenshot(page, "03-save-and-test-passed")


def test_steps_appear_one_by_one_while_the_test_runs(page: Page, stack: LiveStack):
    stack.reset(connected=True)
    stack.crm.set_faults(latency_ms=250)  # a slow CRM: several polls happen while the steps come in
    open_edit(page, stack)
    watched = save_and_test(page, timeout=30_000)
    assert watched["outcome"] == "passed"
    partial = [r for r in watched["renderings"] if 0 < len(r) < len(STEPS)]
    assert len(partial) >= 2, watched["renderings"]
    for rendering in watched["renderings"]:
        assert rendering == STEPS[: len(rendering)], rendering
    lengths = [len(r) for r in watched["renderings"]]
    assert lengths == sorted(lengths)


def test_wrong_password_fails_with_what_to_do_in_place(page: Page, stack: LiveStack):
    stack.reset(connected=True)
    open_edit(page, stack)
    connection = page.locator("#connection")
    expect(connection.locator("[data-password-state]")).to_have_attribute("data-password-state", "saved")
    connection.get_by_label("CRM password").fill(WRONG_PASSWORD)
    watched = save_and_test(page)

    assert watched["outcome"] == "failed"
    failed = page.locator("#test-status [data-test=failed]")
    expect(failed).to_have_attribute("data-code", "auth_failed")
    expect(failed).to_contain_text("The CRM rejected the user name or password.")
    expect(failed).to_contain_text("What to do: Check the user name, password and Windows domain.")
    expect(page.locator("#test-status .steps li[data-ok=false]")).to_have_count(1)
    # The password never comes back to the page; the field is empty and says one is saved.
    expect(connection.get_by_label("CRM password")).to_have_value("")
    assert WRONG_PASSWORD not in page.content()
    screenshot(page, "04-save-and-test-failed")


def test_right_password_passes_then_switch_on(page: Page, stack: LiveStack):
    from .test_guidance_browser import set_up

    stack.reset(connected=True, password=WRONG_PASSWORD)
    set_up(stack, supplier=True, marketing_automation=True)
    open_edit(page, stack)
    page.locator("#connection").get_by_label("CRM password").fill(stack.crm.password)
    assert save_and_test(page)["outcome"] == "passed"

    page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name="CRM Settings").click()
    dynamics = row(page, stack)
    expect(dynamics).to_contain_text("Passed")
    switch = dynamics.get_by_role("switch")
    expect(switch).to_have_attribute("aria-checked", "false")
    mark_page(page)
    switch.click()

    expect(dynamics.locator("[data-state]")).to_have_text("On")
    expect(dynamics.get_by_role("switch")).to_have_attribute("aria-checked", "true")
    expect(page.locator("#flash")).to_contain_text("is On.")
    assert_same_page(page)
    assert stack.integration()["enabled"] is True
    assert_fits_the_window(page)
    screenshot(page, "05-listing-switched-on")


def test_authentication_failure_raises_the_listing_banner(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True, enabled=True)
    stack.crm.set_faults(password_changed_user=stack.crm.username)  # the stack fixture clears it afterwards
    open_listing(page)
    expect(row(page, stack).locator("[data-state]")).to_have_text("On")
    expect(row(page, stack).locator(".banner")).to_have_count(0)

    page.locator("main a", has_text="Edit Settings").click()
    # The page must have arrived before the watcher is installed in it.
    expect(page).to_have_url(re.compile(rf"/settings/crm/{stack.integration_id}/edit$"))
    assert save_and_test(page)["outcome"] == "failed"
    expect(page.locator("#test-status [data-test=failed]")).to_have_attribute("data-code", "auth_failed")

    page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name="CRM Settings").click()
    dynamics = row(page, stack)
    banner = dynamics.locator(".banner")
    expect(banner).to_have_attribute("data-code", "auth_failed")
    expect(banner).to_contain_text("The CRM rejected the user name or password.")
    expect(banner).to_contain_text("What to do: Check the user name, password and Windows domain.")
    expect(dynamics.locator("[data-state]")).to_have_text("Error")
    # Settings that no longer pass do not stay On.
    expect(dynamics.get_by_role("switch")).to_have_attribute("aria-checked", "false")
    assert stack.integration()["enabled"] is False
    assert_fits_the_window(page)
    screenshot(page, "06-listing-error-banner")


def test_usage_profile_reveals_options_and_keeps_typed_values_on_error(page: Page, stack: LiveStack):
    open_edit(page, stack)
    usage = page.locator("#usage")
    marketing = usage.get_by_label("Marketing Automation", exact=True)
    ma_options = usage.get_by_role("group", name="Advanced Marketing Automation Options")
    expect(ma_options).to_be_hidden()
    marketing.check()
    expect(ma_options).to_be_visible()
    marketing.uncheck()
    expect(ma_options).to_be_hidden()
    marketing.check()

    ma_options.get_by_label("Minimum lead score threshold").fill("150")
    ma_options.get_by_label("Synchronize Marketing Automation Leads").uncheck()
    usage.get_by_label("Lead Distribution", exact=True).check()
    ld_options = usage.get_by_role("group", name="Advanced Lead Distribution Options")
    ld_options.get_by_label("Send custom fields into the Notes").check()
    mark_page(page)
    usage.get_by_role("button", name="Save Usage Profile").click()

    error = page.locator('#usage [data-error-for="usage-ma_score_threshold"]')
    expect(error).to_have_text("Enter a whole number from 0 to 100.")
    usage = page.locator("#usage")  # swapped in from the 422 answer
    threshold = usage.get_by_label("Minimum lead score threshold")
    expect(threshold).to_have_attribute("aria-invalid", "true")
    expect(threshold).to_have_accessible_description(re.compile("Enter a whole number from 0 to 100"))
    field_box, error_box = threshold.bounding_box(), error.bounding_box()
    assert 0 <= error_box["y"] - (field_box["y"] + field_box["height"]) < 80, "the error is not next to the field"
    expect(threshold).to_have_value("150")
    expect(usage.get_by_label("Marketing Automation", exact=True)).to_be_checked()
    expect(usage.get_by_role("group", name="Advanced Marketing Automation Options")).to_be_visible()
    expect(usage.get_by_label("Synchronize Marketing Automation Leads")).not_to_be_checked()
    expect(usage.get_by_label("Lead Distribution", exact=True)).to_be_checked()
    expect(usage.get_by_label("Send custom fields into the Notes")).to_be_checked()
    assert_same_page(page)
    assert stack.integration()["marketing_automation"] is False  # nothing was saved
    screenshot(page, "07-usage-profile-422")

    threshold.fill("70")
    usage.get_by_role("button", name="Save Usage Profile").click()
    expect(page.locator("#usage [data-saved=usage]")).to_be_visible()
    saved = stack.integration()
    assert saved["marketing_automation"] and saved["ma_score_threshold"] == 70 and saved["ld_custom_fields_in_notes"]

    general = page.locator("#general")
    general.get_by_label("Supplier").select_option(label="Demo Supplier")
    general.get_by_label("Contacts", exact=True).check()
    general.get_by_role("button", name="Save General Settings").click()
    expect(page.locator("#general [data-saved=general]")).to_be_visible()
    usage = page.locator("#usage")  # refreshed out of band
    not_offered = usage.locator("[data-not-offered=ma_pull_contacts]")
    expect(not_offered).to_be_visible()
    expect(not_offered).to_contain_text("Pull Contacts is not offered: new leads are recorded in the CRM as contacts")
    expect(usage.get_by_label("Pull Contacts")).to_have_count(0)
    assert_same_page(page)
    screenshot(page, "08-usage-profile-contacts")


def test_keyboard_only_connection_settings(page: Page, stack: LiveStack):
    open_edit(page, stack)
    crm = stack.crm

    # Every field of every section is reachable by its label, inside its own group.
    controls = page.evaluate("""() => [...document.querySelectorAll(
        "main form input:not([type=hidden]), main form select, main form textarea")].map((el) => ({
          id: el.id,
          labels: el.labels ? el.labels.length : 0,
          text: el.labels && el.labels[0] ? el.labels[0].textContent.replace(/\\s+/g, " ").trim() : "",
          scope: el.closest("fieldset[id], section[id]").id,
        }))""")
    assert len(controls) > 30
    for control in controls:
        assert control["labels"] == 1, control
        found = page.locator(f"#{control['scope']}").get_by_label(control["text"], exact=True)
        expect(found).to_have_count(1)
        expect(found).to_have_id(control["id"])

    focused = "() => document.activeElement.id || document.activeElement.textContent.trim()"
    page.get_by_label("CRM username").focus()
    typed = [crm.username, crm.password, crm.org_url, crm.webapi_url, crm.domain, ""]
    order = [page.evaluate(focused)]
    for text in typed:
        if text:
            page.keyboard.type(text)
        page.keyboard.press("Tab")
        order.append(page.evaluate(focused))
    page.keyboard.press("Tab")
    order.append(page.evaluate(focused))
    assert order == ["connection-username", "connection-password", "connection-org_url", "connection-odata_url",
                     "connection-domain", "connection-organization_name", "Save", "Save and Test CRM Connection"]

    for _ in range(3):
        page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused) == "connection-domain"
    mark_page(page)
    page.keyboard.press("Enter")  # submits the section with its first button: Save (no test)
    expect(page.locator("#connection [data-saved=connection]")).to_have_text("Saved.")
    expect(page.locator("#flash")).to_contain_text("CRM Connection Settings saved.")
    assert_same_page(page)
    saved = stack.integration()
    assert (saved["username"], saved["org_url"], saved["odata_url"], saved["domain"]) == (
        crm.username, crm.org_url, crm.webapi_url, crm.domain)
    assert saved["password_encrypted"] and saved["last_test_at"] is None
    expect(page.locator("#test-status [data-test]")).to_have_count(0)


def test_without_javascript_a_section_saves_with_post_redirect_get(new_context, stack: LiveStack):
    page = new_context(java_script_enabled=False).new_page()
    open_edit(page, stack)
    usage = page.locator("#usage")
    usage.get_by_label("Lead Distribution", exact=True).check()
    # Without JavaScript the advanced options still open with their profile (CSS only).
    expect(usage.get_by_role("group", name="Advanced Lead Distribution Options")).to_be_visible()
    usage.get_by_label("Marketing Automation", exact=True).check()
    usage.get_by_label("Minimum lead score threshold").fill("65")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        usage.get_by_role("button", name="Save Usage Profile").click()
    assert posted.value.status == 302
    expect(page).to_have_url(re.compile(rf"/settings/crm/{stack.integration_id}/edit#usage$"))
    expect(page.locator("#flash")).to_contain_text("Usage Profile saved.")
    expect(page.locator("#usage").get_by_label("Minimum lead score threshold")).to_have_value("65")
    saved = stack.integration()
    assert saved["lead_distribution"] and saved["marketing_automation"] and saved["ma_score_threshold"] == 65
    screenshot(page, "09-no-javascript-saved")

    page.locator("#usage").get_by_label("Minimum lead score threshold").fill("500")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.locator("#usage").get_by_role("button", name="Save Usage Profile").click()
    assert posted.value.status == 422
    expect(page.locator('#usage [data-error-for="usage-ma_score_threshold"]')).to_be_visible()
    expect(page.locator("#usage").get_by_label("Minimum lead score threshold")).to_have_value("500")
    assert stack.integration()["ma_score_threshold"] == 65


def test_member_gets_the_administrative_permission_page(page: Page, stack: LiveStack):
    sign_in(page, MEMBER)
    response = page.goto("/settings/crm")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Administrative permission required")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text("Administrative permission is required")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings")).to_have_count(0)
    response = page.goto(f"/settings/crm/{stack.integration_id}/edit")
    assert response is not None and response.status == 403
    screenshot(page, "10-member-permission-required")


def test_saving_a_section_without_changes_says_nothing_was_saved(page: Page, stack: LiveStack):
    open_edit(page, stack)
    general = page.locator("#general")
    general.get_by_label("Supplier").select_option(label="Demo Supplier")
    general.get_by_role("button", name="Save General Settings").click()
    expect(page.locator("#general [data-saved=general]")).to_have_text("Saved.")
    page.locator("#general").get_by_role("button", name="Save General Settings").click()
    expect(page.locator("#flash")).to_contain_text("General Settings: nothing changed.")
    expect(page.locator("#general [data-saved=general]")).to_have_text("Nothing to save: no changes.")
    expect(page.locator("#general [data-saved=general]")).to_be_focused()
