"""Every page of the partner and the supplier in a real browser: the accessibility scan runs over each, and none
scrolls sideways on a 320 px phone."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from .conftest import ADMIN, LiveStack, sign_in
from .test_reach_browser import fits

pytestmark = pytest.mark.browser

SUPPLIER = ("admin@supplier.example", "Cedar-Summit-88")


def visit_every_page(page: Page, pages: list[tuple[str, str]]) -> None:
    """Open each page at 320 px and at the default width; its heading shows and nothing sticks out."""
    for width in (1280, 320):
        page.set_viewport_size({"width": width, "height": 800})
        for path, heading in pages:
            response = page.goto(path)
            assert response is not None and response.status == 200, path
            expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
            fits(page, width)
            page.evaluate("() => window.__axeScan && window.__axeScan()")  # each page's own scan, before leaving


def test_every_page_of_the_partner(page: Page, stack: LiveStack):
    stack.reset(connected=True, tested=True)
    stack.failed_run()
    page.goto("/login")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    page.evaluate("() => window.__axeScan && window.__axeScan()")
    sign_in(page, ADMIN)
    visit_every_page(page, [
        ("/settings/crm", "CRM Settings"), (f"/settings/crm/{stack.integration_id}/edit", "Edit Settings"),
        (f"/settings/crm/{stack.integration_id}/runs", "Sync history"), ("/leads", "Leads"),
        ("/lists", "Contact lists"), ("/lists/new", "Create from CRM list"), ("/settings/api-tokens", "API tokens"),
        ("/outbox", "Outbox"),
    ])


def test_every_page_of_the_supplier(page: Page, stack: LiveStack):
    sign_in(page, SUPPLIER)
    visit_every_page(page, [
        ("/settings/crm", "CRM Settings"), ("/settings/partners", "Partners"), ("/leads/distribute", "Distribute"),
        ("/leads/distributed", "Distributed leads"), ("/lists", "Contact lists"),
        ("/settings/api-tokens", "API tokens"), ("/outbox", "Outbox"),
    ])


def test_the_scan_fails_on_a_serious_violation(browser):
    from .accessibility import AccessibilityScan

    scan = AccessibilityScan()
    context = browser.new_context()
    try:
        scan.install(context)
        page = context.new_page()
        # Answered by the browser itself: nothing goes to the network.
        page.route("http://127.0.0.1:9/bad", lambda route: route.fulfill(
            content_type="text/html",
            body='<!doctype html><html lang="en"><title>Bad</title><main><img src="x.png">'
                 '<p style="color:#bbb;background:#fff">Faint text</p></main></html>'))
        page.goto("http://127.0.0.1:9/bad")
        scan.flush()
    finally:
        context.close()
    found = {v["id"] for finding in scan.findings for v in finding.violations}
    assert {"image-alt", "color-contrast"} <= found, scan.report()
    assert scan.states >= 1
