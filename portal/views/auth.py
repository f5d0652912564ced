"""Sign-in and sign-out, with a lockout after repeated failures."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from .. import signin
from ..extensions import db
from ..forms import CsrfOnlyForm, LoginForm
from ..models import utcnow

bp = Blueprint("auth", __name__)

def _home() -> str:
    """Where a signed-in user starts: Settings for administrators, the leads for members."""
    return url_for("settings.home") if current_user.is_admin else url_for("leads.index")


def _safe_next(target: str | None) -> str:
    """Only same-site paths are followed after sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return _home()


@bp.route("/")
def index():
    """Home: the settings for administrators, the sign-in page otherwise."""
    if current_user.is_authenticated:
        return redirect(_home())
    return redirect(url_for("auth.login"))


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show and check the sign-in form."""
    form = LoginForm()
    if not form.is_submitted():
        form.next.data = request.args.get("next", "")
    if form.validate_on_submit():
        outcome = signin.attempt(form.email.data, form.password.data, request.remote_addr or "",
                                 limit=current_app.config["LOGIN_MAX_FAILURES"],
                                 lockout_seconds=current_app.config["LOGIN_LOCKOUT_SECONDS"])
        if outcome.locked_until is not None:
            # The same words for every email, known or not: the answer must not tell which have accounts.
            wait = int((outcome.locked_until - utcnow()).total_seconds() // 60) + 1
            form.form_errors.append(
                f"Too many failed sign-ins with this email from your address. Try again in {wait} "
                f"minute{'s' if wait > 1 else ''} (after {outcome.locked_until:%H:%M} UTC)."
            )
            return render_template("auth/login.html", form=form), 429
        if outcome.user is not None:
            login_user(outcome.user)
            return redirect(_safe_next(form.next.data))
        form.form_errors.append("The email or password is not right. Check both and try again.")
        return render_template("auth/login.html", form=form), 401
    status = 422 if form.is_submitted() else 200
    return render_template("auth/login.html", form=form), status


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """Sign out (POST with CSRF, so no link can sign a user out)."""
    form = CsrfOnlyForm()
    if form.validate_on_submit():
        # Ends this session and every copy of its cookie, and the user's other sessions with it.
        current_user.end_sessions()
        db.session.commit()
        logout_user()
        flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
