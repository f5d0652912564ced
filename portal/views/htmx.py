"""htmx in every blueprint: is this an htmx request, a fragment with its flash, polling until done, CSRF on posts."""

from __future__ import annotations

from flask import abort, make_response, render_template, request

from ..forms import CsrfOnlyForm

STOP_POLLING = 286  # htmx stops an `every 1s` trigger on this status


def is_htmx() -> bool:
    """True for an htmx request that wants a fragment (not a boosted page load)."""
    return bool(request.headers.get("HX-Request")) and not request.headers.get("HX-Boosted")


def fragment(template: str, status: int = 200, oob_templates: tuple[str, ...] = (), **context):
    """Render a fragment, any out-of-band companions, and the flash messages out-of-band."""
    body = render_template(template, **context)
    for extra in oob_templates:
        body += render_template(extra, **{**context, "oob": True})
    return answer(body, status)


def answer(body: str, status: int = 200):
    """A fragment already drawn, with the flash messages out-of-band."""
    resp = make_response(body + render_template("_flash.html", oob_flash=True), status)
    resp.headers["Vary"] = "HX-Request"
    return resp


def poll(body: str, done: bool, *, no_store: bool = False):
    """A polled status fragment: 286 once the work is done, so htmx stops asking.

    Not ``fragment()``: an out-of-band flash at every poll would wipe the page's messages.
    """
    resp = make_response(body, STOP_POLLING if done else 200)
    resp.headers["Vary"] = "HX-Request"
    if no_store:
        resp.headers["Cache-Control"] = "no-store"
    return resp


def require_csrf() -> None:
    """A button-only post (the token in the form or the page's ``X-CSRFToken`` header): 400 without a valid one."""
    if not CsrfOnlyForm().validate_on_submit():
        abort(400)
