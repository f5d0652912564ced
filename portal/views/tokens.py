"""Settings > API tokens: list, create (the token is shown once) and revoke; administrators only."""

from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import select

from .. import tokens
from ..access import admin_required
from ..extensions import db
from ..forms import CsrfOnlyForm, TokenForm
from ..platform_models import ApiToken
from .htmx import fragment, is_htmx, require_csrf

bp = Blueprint("tokens", __name__, url_prefix="/settings/api-tokens")


def _page(form: TokenForm | None = None, new_token: str | None = None, status: int = 200):
    """The page, or just its fragment for htmx; never cached, since it may hold a new token."""
    context = {"form": form or TokenForm(formdata=None), "rows": tokens.tokens_of(current_user.organization_id),
               "csrf_form": CsrfOnlyForm(), "new_token": new_token}
    if is_htmx():
        resp = fragment("tokens/_tokens.html", status=status, **context)
    else:
        resp = make_response(render_template("tokens/index.html", **context), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("")
@admin_required
def index():
    """The organization's tokens: name, prefix, created, last used, revoked."""
    return _page()


@bp.post("")
@admin_required
def create():
    """Make a token and show it this once (not redirected: the token must not travel in a cookie)."""
    form = TokenForm()
    if not form.validate_on_submit():
        return _page(form, status=422)
    row, raw = tokens.create_token(current_user.organization_id, form.name.data)
    flash(f"Token “{row.name}” created. Copy it now: it is not shown again.", "success")
    return _page(new_token=raw, status=201)


@bp.post("/<int:token_id>/revoke")
@admin_required
def revoke(token_id: int):
    """Revoke one of the organization's tokens; calls with it fail from now on."""
    row = db.session.scalar(select(ApiToken).where(ApiToken.id == token_id,
                                                   ApiToken.organization_id == current_user.organization_id))
    if row is None:
        abort(404)
    require_csrf()
    if tokens.revoke(row):
        flash(f"Token “{row.name}” is revoked.", "success")
    if is_htmx():
        return _page()
    return redirect(url_for("tokens.index"))
