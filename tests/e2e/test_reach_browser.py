"""Reach and keyboard in a real browser: phones, focus after htmx updates, announcements, focus rings,
pages without JavaScript and static files (issue 13, items 1-5 and 12)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import Page, expect

from .conftest import ADMIN, LiveStack, screenshot, sign_in
from .test_edit_settings_browser import DYNAMICS, fill_connection, open_edit, open_listing, row, save_and_test

pytestmark = pytest.mark.browser

# Records every text the one live region is given, and whether it is still the node the page started with.
WATCH_ANNOUNCER = """() => {
  const region = document.getElementById("announcer");
  region.__original = true;
  window.__announced = [];
  new MutationObserver(() => {
    const text = region.textContent.trim();
    if (text) window.__announced.push(text);
  }).observe(region, {childList: true, characterData: true, subtree: true});
}"""

# The live regions of the page whose text contains a sentence (a message read out twice shows up in two).
LIVE_REGIONS_SAYING = """(text) => [...document.querySelectorAll("[aria-live], [role=status], [role=alert]")]
  .filter((el) => el.textContent.includes(text)).length"""

FOCUSED = """() => {
  const el = document.activeElement;
  return {tag: el.tagName.toLowerCase(), id: el.id, role: el.getAttribute("role"), connected: el.isConnected,
          text: el.textContent.replace(/\\s+/g, " ").trim(), inStatus: !!el.closest("#test-status")};
}"""

# WCAG relative luminance contrast of an element's outline against the page behind it.
RING_CONTRAST = """() => {
  const lum = (rgb) => {
    const [r, g, b] = rgb.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const el = document.activeElement, style = getComputedStyle(el);
  let around = el.parentElement, behind = "rgb(255, 255, 255)";
  for (; around; around = around.parentElement) {
    const bg = getComputedStyle(around).backgroundColor;
    if (bg !== "transparent" && !/rgba\\(.*, 0\\)$/.test(bg)) { behind = bg; break; }
  }
  const ring = lum(style.outlineColor), page = lum(behind);
  return {ratio: (Math.max(ring, page) + 0.05) / (Math.min(ring, page) + 0.05),
          width: parseFloat(style.outlineWidth), style: style.outlineStyle, text: el.textContent.trim()};
}"""


# What sticks out of the window: elements wider than it, or boxes whose content overflows them visibly.
STICKING_OUT = """(width) => [...document.querySelectorAll("body *")].filter((el) => {
  const style = getComputedStyle(el);
  if (el.scrollWidth > el.clientWidth + 1 && style.overflowX === "visible") return true;
  return el.getBoundingClientRect().right > width + 0.5 && !el.closest(".overflow-auto");
}).slice(0, 8).map((el) => `${el.tagName.toLowerCase()}.${el.className} ${el.getBoundingClientRect().right}`)"""


def fits(page: Page, width: int) -> None:
    """Nothing scrolls sideways at this width."""
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= width, f"{page.url} is {overflow} px wide in a {width} px window: " + str(
        page.evaluate(STICKING_OUT, width))


def inside(page: Page, locator, width: int) -> None:
    """The element is on screen horizontally."""
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (locator, box)


@pytest.mark.parametrize("width", [320, 375])
def test_nothing_scrolls_sideways_on_a_phone(page: Page, stack: LiveStack, width: int):
    stack.reset(connected=True, tested=True)
    run_id = stack.failed_run()
    page.set_viewport_size({"width": width, "height": 740})
    open_listing(page)
    fits(page, width)
    inside(page, page.get_by_role("button", name="Sign out"), width)
    dynamics = row(page, stack)
    name = dynamics.get_by_role("rowheader")
    # The run where every record failed raised the row's banner, with links of its own to the same pages.
    expect(dynamics.locator(".banner")).to_contain_text("could not write any of its")
    inside(page, dynamics.locator(".banner"), width)
    for action in (dynamics.locator("a.edit-link"), dynamics.locator("a.history-link"),
                   dynamics.get_by_role("switch")):
        inside(page, action, width)
        # A row's actions stack under its name.
        assert action.bounding_box()["y"] >= name.bounding_box()["y"] + name.bounding_box()["height"] - 1
    screenshot(page, f"phone-{width}-listing")

    page.goto(f"/settings/crm/{stack.integration_id}/edit")
    fits(page, width)
    screenshot(page, f"phone-{width}-edit-settings")
    page.goto(f"/settings/crm/{stack.integration_id}/runs")
    fits(page, width)
    page.goto(f"/settings/crm/{stack.integration_id}/runs/{run_id}")
    expect(page.locator("#failures tbody tr").first).to_be_visible()
    fits(page, width)
    screenshot(page, f"phone-{width}-run-failed-records")


def test_focus_goes_to_what_changed_after_each_update(page: Page, stack: LiveStack):
    open_edit(page, stack)
    general = page.locator("#general")
    general.get_by_label("Supplier").select_option(label="Demo Supplier")
    general.get_by_role("button", name="Save General Settings").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#general [data-saved=general]")).to_be_visible()
    expect(page.locator("#general [data-saved=general]")).to_be_focused()

    usage = page.locator("#usage")
    usage.get_by_label("Marketing Automation", exact=True).check()
    usage.get_by_label("Minimum lead score threshold").fill("150")
    usage.get_by_role("button", name="Save Usage Profile").focus()
    page.keyboard.press("Enter")
    expect(page.locator('#usage [data-error-for="usage-ma_score_threshold"]')).to_be_visible()
    expect(page.locator("#usage").get_by_label("Minimum lead score threshold")).to_be_focused()

    # With the lead source option missing, the next Tab after the result reaches "Add the option".
    stack.crm.reset(seed=True, platform_option=False)
    fill_connection(page, stack)
    assert save_and_test(page)["outcome"] == "failed"
    expect(page.locator("#test-status h3")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#test-status").get_by_role("button", name=re.compile("Add the .* option"))).to_be_focused()

    page.goto("/settings/crm")
    switch = row(page, stack).get_by_role("switch")
    switch.focus()
    page.keyboard.press("Enter")  # refused: the test did not pass; the row is swapped with the refusal
    expect(row(page, stack).locator("[data-refusal]")).to_be_visible()
    # Focus is restored once htmx has settled the swapped row, a moment after the refusal shows.
    expect(row(page, stack).get_by_role("switch")).to_be_focused()
    focused = page.evaluate(FOCUSED)
    assert focused["role"] == "switch" and focused["connected"], focused


def test_one_live_region_says_each_message_once(page: Page, stack: LiveStack):
    open_edit(page, stack)
    page.evaluate(WATCH_ANNOUNCER)
    general = page.locator("#general")
    general.get_by_label("Supplier").select_option(label="Demo Supplier")
    general.get_by_role("button", name="Save General Settings").click()
    expect(page.locator("#announcer")).to_have_text("General Settings saved.")
    assert page.evaluate("(t) => (" + LIVE_REGIONS_SAYING + ")(t)", "General Settings saved.") == 1

    fill_connection(page, stack)
    assert save_and_test(page)["outcome"] == "passed"
    expect(page.locator("#announcer")).to_contain_text("Connected as")
    passed = page.locator("#test-status [data-test=passed]").inner_text().strip()
    assert page.evaluate("(t) => (" + LIVE_REGIONS_SAYING + ")(t)", passed) == 1
    assert page.evaluate("() => document.getElementById('announcer').__original === true"), "the region was replaced"
    announced = page.evaluate("() => window.__announced")
    assert announced.count("General Settings saved.") == 1, announced
    assert sum(passed in text for text in announced) == 1, announced

    stack.reset()  # untested again, so On is refused
    page.goto("/settings/crm")
    page.evaluate(WATCH_ANNOUNCER)
    row(page, stack).get_by_role("switch").click()
    expect(row(page, stack).locator("[data-refusal]")).to_be_visible()
    expect(page.locator("#announcer")).to_contain_text("was not switched On")
    assert page.evaluate("(t) => (" + LIVE_REGIONS_SAYING + ")(t)", "switched On") == 1
    text = page.locator("#announcer").inner_text()
    assert text.count("switched On") == 1, text


def test_focus_rings_contrast_and_names(page: Page, stack: LiveStack):
    open_listing(page)
    dynamics = row(page, stack)
    dynamics.locator("a", has_text="Edit Settings").focus()
    page.keyboard.press("Tab")
    ring = page.evaluate(RING_CONTRAST)
    assert ring["text"] == "Sync history"
    assert ring["style"] != "none" and ring["width"] >= 2 and ring["ratio"] >= 3, ring
    page.keyboard.press("Tab")
    ring = page.evaluate(RING_CONTRAST)
    assert ring["style"] != "none" and ring["width"] >= 2 and ring["ratio"] >= 3, ring

    switch = dynamics.get_by_role("switch")
    # The name says what it switches; the state is aria-checked alone (no "On"/"Off" in the name).
    expect(switch).to_have_accessible_name(re.compile(rf"^Sync with {DYNAMICS} \(on-premises, 2011 and later\)$"))
    expect(switch).to_have_attribute("aria-checked", "false")
    expect(page.locator("table[role=grid]")).to_have_count(0)
    hint = page.evaluate("""() => {
      const hint = document.querySelector(".switch .hint"), button = hint.closest("button");
      return [getComputedStyle(hint).color, getComputedStyle(hint).opacity, getComputedStyle(button).backgroundColor];
    }""")
    assert hint[1] == "1", hint


def test_without_javascript_a_running_test_refreshes_until_done(new_context, stack: LiveStack):
    stack.reset(connected=True)
    stack.crm.set_faults(latency_ms=150)
    page = new_context(java_script_enabled=False).new_page()
    open_edit(page, stack)
    page.get_by_role("button", name="Save and Test CRM Connection").click()
    expect(page.locator("[data-refreshing]")).to_contain_text("Refresh to see the result")
    expect(page.locator("#test-status [data-test=passed]")).to_be_visible(timeout=30_000)
    expect(page.locator("[data-refreshing]")).to_have_count(0)


def test_static_files_are_hashed_cached_and_compressed(page: Page, stack: LiveStack):
    statics: list = []
    page.on("response", lambda r: statics.append(r) if "/static/" in r.url else None)
    page.goto("/login")
    assert len(statics) >= 4
    for resp in statics:
        assert re.search(r"\.[0-9a-f]{12}\.(css|js)$", resp.url), resp.url
        headers = resp.all_headers()
        assert "immutable" in headers.get("cache-control", "") and "max-age=31536000" in headers["cache-control"]
        assert headers.get("content-encoding") == "gzip", resp.url

    # A second page reuses them without asking the server again (no revalidation).
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    received: dict[str, dict] = {}
    cached: set[str] = set()
    cdp.on("Network.responseReceived", lambda e: received.update({e["requestId"]: e["response"]})
           if "/static/" in e["response"]["url"] else None)
    cdp.on("Network.requestServedFromCache", lambda e: cached.add(e["requestId"]))
    sign_in(page, ADMIN)
    expect(page.get_by_role("heading", name="CRM Settings", exact=True)).to_be_visible()
    page.goto("/settings/crm")
    expect(page.get_by_role("heading", name="CRM Settings", exact=True)).to_be_visible()
    assert received, "no static file was used"
    asked = [r["url"] for rid, r in received.items()
             if rid not in cached and not r.get("fromDiskCache") and not r.get("fromPrefetchCache")]
    assert asked == [], f"{len(asked)} static requests reached the server: {asked}"


def test_without_javascript_a_running_run_refreshes_until_done(new_context, stack: LiveStack):
    from portal import sync
    from portal.extensions import db
    from portal.models import CrmIntegration, utcnow
    from portal.platform_models import RunStatus, SyncRun

    with stack.app.app_context():
        run_id = sync.new_run(db.session.get(CrmIntegration, stack.integration_id), "manual", trigger="test").id
        db.session.remove()
    page = new_context(java_script_enabled=False).new_page()
    open_listing(page)
    page.goto(f"/settings/crm/{stack.integration_id}/runs/{run_id}")
    expect(page.locator("[data-refreshing]")).to_contain_text("Refresh to see the result")
    expect(page.locator("#run-body")).to_have_attribute("data-status", "queued")
    with stack.app.app_context():
        run = db.session.get(SyncRun, run_id)
        run.status, run.started_at, run.finished_at = RunStatus.finished, utcnow(), utcnow()
        db.session.commit()
        db.session.remove()
    # Nobody clicks anything: the page refreshes itself and stops once the run is done.
    expect(page.locator("#run-body")).to_have_attribute("data-status", "finished", timeout=10_000)
    expect(page.locator("[data-refreshing]")).to_have_count(0)


# Counts every focus change into an element, and remembers the test heading's node, to see whether polls move focus.
WATCH_FOCUS = """() => {
  window.__focusins = [];
  document.addEventListener("focusin", (event) => {
    const el = event.target;
    window.__focusins.push({tag: el.tagName.toLowerCase(), inStatus: !!el.closest("#test-status")});
  });
}"""


# A run's status once it is over.
DONE = re.compile("^(finished|partial|failed)$")


def validation_posts(page: Page, field: str) -> list[str]:
    """Records the body of every inline validation request of a field (the Append /web button's too)."""
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.post_data or "") if f"/validate/{field}" in r.url else None)
    return posts


def append_web_button(page: Page):
    """The Append /web button once htmx has settled the feedback it came in (only then does pressing it post)."""
    # htmx wires new content when it settles, a moment after it shows: Enter on the button before that does nothing.
    return page.locator("#org_url-feedback:not(.htmx-settling)").get_by_role("button", name="Append /web")


def test_focus_stays_on_the_run_buttons_and_goes_to_the_appended_url(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    open_listing(page)
    page.goto(f"/settings/crm/{stack.integration_id}/runs")
    for name, said in (("Preview", "Preview #"), ("Sync now", "Run #"), ("Resync everything", "every CRM record")):
        button = page.get_by_role("button", name=name, exact=True)
        button.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#flash")).to_contain_text(said)
        expect(page.locator("#runs tbody tr").first).to_have_attribute("data-status", DONE, timeout=30_000)
        # The button is disabled while its request runs, which drops focus; it survives, so focus comes back to it.
        expect(button).to_be_focused()
        focused = page.evaluate(FOCUSED)
        assert focused["tag"] == "button" and focused["text"] == name, focused

    page.goto(f"/settings/crm/{stack.integration_id}/edit")
    org_url = page.locator("#connection").get_by_label("Organization Web Service URL")
    org_url.fill(stack.crm.org_url.removesuffix("/web"))
    org_url.press("Tab")  # change: validated
    append = append_web_button(page)
    append.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#org_url-feedback [data-ok]")).to_contain_text("Appended /web")
    # The button is gone with the problem it solved: focus goes to the field with its new value.
    expect(org_url).to_be_focused()
    expect(org_url).to_have_value(stack.crm.org_url)


def test_the_org_url_is_validated_once_per_value(page: Page, stack: LiveStack):
    open_edit(page, stack)
    posts = validation_posts(page, "org_url")
    org_url = page.locator("#connection").get_by_label("Organization Web Service URL")
    org_url.press_sequentially(stack.crm.org_url.removesuffix("/web"))
    append = append_web_button(page)
    expect(append).to_be_visible()  # answered after the typing paused
    page.keyboard.press("Tab")  # leaving the field (a change) with the value already answered asks nothing more
    expect(append).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#org_url-feedback [data-ok]")).to_contain_text("Appended /web")
    expect(org_url).to_be_focused()
    typed = [p for p in posts if "append_web" not in p]
    assert len(typed) == 1, posts
    assert len(posts) == 2, posts


def test_the_url_checks_send_their_own_field_and_never_the_typed_password(page: Page, stack: LiveStack):
    """A URL's inline check (and Append /web) posts the URL alone: the password typed above it in the same form stays
    in the browser until Save, whatever the check's endpoint does with what it is sent."""
    open_edit(page, stack)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.post_data or "") if "/validate/" in r.url else None)
    connection = page.locator("#connection")
    connection.get_by_label("CRM password").fill("Typed-Secret-42")
    org_url = connection.get_by_label("Organization Web Service URL")
    org_url.fill(stack.crm.org_url.removesuffix("/web"))
    org_url.press("Tab")
    append = append_web_button(page)
    append.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#org_url-feedback [data-ok]")).to_contain_text("Appended /web")
    odata = connection.get_by_label("OData Service URL")
    odata.fill("http://127.0.0.1:1/XRMServices/2011/OrganizationData.svc/")
    odata.press("Tab")
    expect(page.locator("#odata_url-feedback [data-ok], #odata_url-feedback [data-problem]")).to_have_count(1)
    assert len(posts) >= 3, posts
    assert not [p for p in posts if "Typed-Secret-42" in p], posts
    assert [sorted(k for k in parse_qs(p)) for p in posts] == [
        ["connection-org_url"], ["append_web", "connection-org_url"], ["connection-odata_url"]], posts


# Every request to validate the Organization Web Service URL (the field's and the Append /web button's), with the
# field's value when it went and how it ended (answered, aborted or failed), and each value the field asked about.
WATCH_ORG_URL_CHECKS = """() => {
  window.__checks = [];
  window.__asked = [];
  const checks = new WeakMap();
  document.addEventListener("htmx:confirm", (event) => {
    if (event.detail.elt.id === "connection-org_url") window.__asked.push(event.detail.elt.value);
  });
  document.addEventListener("htmx:beforeSend", (event) => {
    if (!event.detail.requestConfig.path.includes("/validate/org_url")) return;
    const check = {by: event.detail.elt.id || "append", value: document.getElementById("connection-org_url").value,
                   end: null};
    checks.set(event.detail.xhr, check);
    window.__checks.push(check);
  });
  for (const [name, end] of [["htmx:afterOnLoad", "answered"], ["htmx:sendAbort", "aborted"],
                             ["htmx:sendError", "failed"]]) {
    document.addEventListener(name, (event) => {
      const check = checks.get(event.detail.xhr);
      if (check) check.end = end;
    });
  }
}"""

ALL_CHECKS_ENDED = "(n) => window.__checks.length >= n && window.__checks.every((c) => c.end)"


def test_a_late_answer_for_an_earlier_org_url_is_not_shown(page: Page, stack: LiveStack):
    held: list = []

    def hold_the_first(route):
        """The first check waits until the test lets it go, as on a slow server; the others go straight on."""
        if held:
            route.continue_()
        else:
            held.append(route)

    open_edit(page, stack)
    page.evaluate(WATCH_ORG_URL_CHECKS)
    page.route("**/validate/org_url", hold_the_first)
    org_url = page.locator("#connection").get_by_label("Organization Web Service URL")
    wrong, right = stack.crm.org_url.removesuffix("/web"), stack.crm.org_url
    org_url.press_sequentially(wrong)
    page.wait_for_function("() => window.__checks.length === 1")  # the typing paused: the wrong value is asked
    org_url.press_sequentially("/web")
    # The typing paused again: the right value is asked while the wrong one's answer is still on its way.
    page.wait_for_function("(right) => window.__asked.includes(right)", arg=right)
    for route in held:
        route.continue_()
    page.wait_for_function(ALL_CHECKS_ENDED, arg=1)
    feedback = page.locator("#org_url-feedback")
    expect(feedback.locator("[data-problem]")).to_have_count(0)
    expect(feedback.get_by_role("button", name="Append /web")).to_have_count(0)
    expect(feedback.locator("[data-ok]")).to_contain_text("The URL looks right.")
    checks = page.evaluate("() => window.__checks")
    assert checks[-1] == {"by": "connection-org_url", "value": right, "end": "answered"}, checks
    assert [c["end"] for c in checks[:-1]] == ["aborted"], checks


def test_a_check_cut_short_by_append_web_is_asked_again(page: Page, stack: LiveStack):
    open_edit(page, stack)
    page.evaluate(WATCH_ORG_URL_CHECKS)
    org_url = page.locator("#connection").get_by_label("Organization Web Service URL")
    wrong = stack.crm.org_url.removesuffix("/web")
    org_url.press_sequentially(wrong)
    append = append_web_button(page)
    expect(append).to_be_visible()
    held: list = []

    def slow_then_lost(route):
        """The field's next check waits, as on a slow server; the Append /web press never gets its answer."""
        if "append_web" in (route.request.post_data or ""):
            route.abort()
        elif held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/validate/org_url", slow_then_lost)
    still_wrong = wrong + "/"
    org_url.press_sequentially("/")
    page.wait_for_function("() => window.__checks.length === 2")  # the typing paused: the new value is asked
    page.keyboard.press("Tab")
    expect(append).to_be_focused()
    page.keyboard.press("Enter")  # cuts the field's check short, then finds no answer itself
    page.wait_for_function(ALL_CHECKS_ENDED, arg=3)
    checks = page.evaluate("() => window.__checks")
    assert [(c["by"], c["value"], c["end"]) for c in checks] == [
        ("connection-org_url", wrong, "answered"), ("connection-org_url", still_wrong, "aborted"),
        ("append", still_wrong, "failed")], checks

    # Back in the field, a key typed and taken back: the value whose check was cut short is asked again.
    org_url.press("End")
    org_url.press("x")
    org_url.press("Backspace")
    asked_again = "(value) => window.__checks.slice(3).some((c) => c.value === value && c.end === 'answered')"
    page.wait_for_function(asked_again, arg=still_wrong)
    expect(org_url).to_have_value(still_wrong)
    expect(page.locator("#org_url-feedback [data-problem]")).to_contain_text("must end with /web")


def test_typing_while_append_web_is_on_its_way_keeps_what_was_typed(page: Page, stack: LiveStack):
    """Append /web's answer arriving after the user typed on (before the field's own check goes) replaces neither the
    field nor its feedback: the typed value stays, and its own check answers for it."""
    open_edit(page, stack)
    org_url = page.locator("#connection").get_by_label("Organization Web Service URL")
    wrong = stack.crm.org_url.removesuffix("/web")
    org_url.press_sequentially(wrong)
    append = append_web_button(page)
    expect(append).to_be_visible()
    page.evaluate(WATCH_ORG_URL_CHECKS)
    held: list = []

    def hold_append(route):
        """Append /web waits, as on a slow server, until the test lets it go; the field's checks go straight on."""
        if "append_web" in (route.request.post_data or ""):
            held.append(route)
        else:
            route.continue_()

    page.route("**/validate/org_url", hold_append)
    append.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.__checks.length === 1")  # Append /web is on its way
    org_url.focus()
    org_url.press("End")
    org_url.press("x")
    held[0].continue_()  # answered at once, before the field's check (after a 500 ms pause) goes
    page.wait_for_function(ALL_CHECKS_ENDED, arg=2)
    expect(org_url).to_have_value(wrong + "x")
    expect(page.locator("#org_url-feedback [data-problem]")).to_contain_text("must end with /web")
    expect(page.locator("#org_url-feedback")).not_to_contain_text("Appended")
    checks = page.evaluate("() => window.__checks")
    assert checks[-1] == {"by": "connection-org_url", "value": wrong + "x", "end": "answered"}, checks


def test_a_check_answered_with_an_error_is_asked_again(page: Page, stack: LiveStack):
    failed: list = []

    def fail_the_first(route):
        """The first check meets a server error, whose answer is not shown; the others go straight on."""
        if failed:
            route.continue_()
        else:
            failed.append(route.request.url)
            route.fulfill(status=500, body="Internal Server Error")

    open_edit(page, stack)
    page.evaluate(WATCH_ORG_URL_CHECKS)
    page.route("**/validate/org_url", fail_the_first)
    org_url = page.locator("#connection").get_by_label("Organization Web Service URL")
    wrong = stack.crm.org_url.removesuffix("/web")
    org_url.press_sequentially(wrong)
    page.wait_for_function(ALL_CHECKS_ENDED, arg=1)
    assert failed, "the first check did not meet the error"
    expect(page.locator("#org_url-feedback [data-problem]")).to_have_count(0)  # the error's answer is not shown
    # A key typed and taken back: the value whose check met the error is asked again, and its answer shown.
    org_url.press("End")
    org_url.press("x")
    org_url.press("Backspace")
    asked_again = "(value) => window.__checks.slice(1).some((c) => c.value === value && c.end === 'answered')"
    page.wait_for_function(asked_again, arg=wrong)
    expect(page.locator("#org_url-feedback [data-problem]")).to_contain_text("must end with /web")


def test_connection_test_polls_leave_focus_alone(page: Page, stack: LiveStack):
    stack.reset(connected=True)
    stack.crm.set_faults(latency_ms=150)  # a slow CRM: several polls while the steps come in
    open_edit(page, stack)
    page.evaluate(WATCH_FOCUS)
    page.get_by_role("button", name="Save and Test CRM Connection").focus()
    page.evaluate("() => { window.__focusins = []; }")
    watched = save_and_test_by_keyboard(page)
    assert len([r for r in watched["renderings"] if r]) >= 3, watched["renderings"]
    heading = page.locator("#test-status h3")
    expect(heading).to_be_focused()
    focusins = page.evaluate("() => window.__focusins")
    # Once, when the test starts (the button that started it is replaced); never again while polling.
    assert [f for f in focusins if f["inStatus"]] == [{"tag": "h3", "inStatus": True}], focusins
    kept = page.evaluate("() => document.getElementById('test-status').__original === true")
    assert kept, "#test-status was replaced while the test ran"


def save_and_test_by_keyboard(page: Page) -> dict:
    """Press Enter on the focused Save and Test button and wait for the outcome; returns what the page watched."""
    from .test_edit_settings_browser import WATCH_TEST_STATUS

    page.evaluate(WATCH_TEST_STATUS)
    page.keyboard.press("Enter")
    status = page.locator("#test-status")
    expect(status.locator("[data-test=running], [data-test=passed]").first).to_be_visible()
    page.evaluate("() => { document.getElementById('test-status').__original = true; }")
    expect(status.locator("[data-test=passed], [data-test=failed]")).to_be_visible(timeout=20_000)
    page.wait_for_function("() => window.__testWatch && window.__testWatch.doneAt !== null")
    return page.evaluate("() => window.__testWatch")


def test_a_finished_run_is_announced_once(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    open_listing(page)
    page.goto(f"/settings/crm/{stack.integration_id}/runs")
    page.evaluate(WATCH_ANNOUNCER)
    page.get_by_role("button", name="Sync now", exact=True).click()
    expect(page.locator("#announcer")).to_contain_text("queued.")
    run_id = page.locator("#runs tbody tr").first.get_attribute("data-run")
    expect(page.locator(f"#run-{run_id}")).to_have_attribute("data-status", DONE, timeout=30_000)
    expect(page.locator("#announcer")).to_contain_text(f"#{run_id} finished")
    announced = page.evaluate("() => window.__announced")
    assert sum(f"#{run_id} finished" in text for text in announced) == 1, announced
    # Said by the one live region only, not by the row too.
    assert page.evaluate("(t) => (" + LIVE_REGIONS_SAYING + ")(t)", f"#{run_id} finished") == 1
    # Reloading a page with finished runs says nothing of them.
    page.reload()
    page.evaluate(WATCH_ANNOUNCER)
    expect(page.locator(f"#run-{run_id}")).to_be_visible()
    assert page.evaluate("() => window.__announced") == []


def test_a_swapped_banner_is_not_announced_again(page: Page, stack: LiveStack):
    from .test_guidance_browser import set_up

    stack.reset(connected=True)  # not tested: On is refused
    set_up(stack, error_code="auth_failed", error_message="The CRM refused the user name or password.",
           error_action="Type the password again under CRM Connection Settings.")
    open_listing(page)
    dynamics = row(page, stack)
    expect(dynamics.locator(".banner")).to_contain_text("refused the user name")
    page.evaluate(WATCH_ANNOUNCER)
    dynamics.get_by_role("switch").click()
    expect(dynamics.locator("[data-refusal]")).to_be_visible()
    expect(page.locator("#announcer")).to_contain_text("was not switched On")
    expect(dynamics.locator(".banner")).to_contain_text("refused the user name")
    # The banner came back with the swapped row: it is not said again, only the switch's answer is.
    assert page.evaluate("(t) => (" + LIVE_REGIONS_SAYING + ")(t)", "refused the user name") == 0
    expect(dynamics.locator("[role=alert]")).to_have_count(0)
    announced = page.evaluate("() => window.__announced")
    assert len(announced) == 1 and "refused the user name" not in announced[0], announced


# What a keyboard user lands on: every focused element is on screen, inside the window's width, and shows a ring.
FOCUS_SEEN = """() => {
  const el = document.activeElement, box = el.getBoundingClientRect(), style = getComputedStyle(el);
  const name = (el.getAttribute("aria-label") || el.textContent || el.id || "").trim().slice(0, 40);
  return {tag: el.tagName.toLowerCase(), name,
          left: box.left, right: box.right, width: box.width, height: box.height,
          ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2
                || style.boxShadow !== "none"};
}"""


def tab_through(page: Page, width: int, limit: int = 120) -> list[dict]:
    """Tab from the top of the page to its end (or back to the start); every stop must be seen at this width."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    stops: list[dict] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        stop = page.evaluate(FOCUS_SEEN)
        if stop["tag"] == "body" or (stops and stop == stops[0]):
            break
        stops.append(stop)
        assert stop["width"] > 0 and stop["height"] > 0, f"focus on something not shown: {stop}"
        assert stop["left"] >= -0.5 and stop["right"] <= width + 0.5, f"focus off screen at {width} px: {stop}"
        assert stop["ring"], f"no visible focus ring: {stop}"
    return stops


def test_keyboard_through_the_whole_setup_at_320_px(page: Page, stack: LiveStack):
    page.set_viewport_size({"width": 320, "height": 640})
    open_listing(page)
    listing = tab_through(page, 320)
    assert any(s["name"] == "Edit Settings" for s in listing), listing

    page.goto(f"/settings/crm/{stack.integration_id}/edit")
    edit = tab_through(page, 320, limit=200)
    names = [s["name"] for s in edit]
    for wanted in ("Save General Settings", "Save Usage Profile", "Save and Test CRM Connection"):
        assert wanted in names, names
    fill_connection(page, stack)
    page.get_by_role("button", name="Save and Test CRM Connection").focus()
    save_and_test_by_keyboard(page)
    expect(page.locator("#test-status h3")).to_be_focused()
    page.keyboard.press("Tab")
    next_stop = page.evaluate(FOCUS_SEEN)
    assert next_stop["right"] <= 320.5 and next_stop["ring"], next_stop
    fits(page, 320)

    page.goto(f"/settings/crm/{stack.integration_id}/runs")
    tab_through(page, 320)
    page.get_by_role("button", name="Sync now", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sync now", exact=True)).to_be_focused()
    fits(page, 320)
    page.goto("/lists")
    tab_through(page, 320)
    page.goto("/lists/new")
    tab_through(page, 320)
