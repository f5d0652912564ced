"""Sign-in and sign-out, with a lockout after repeated failures."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import func, select

from ..extensions import db
from ..forms import CsrfOnlyForm, LoginForm
from ..models import User, utcnow

bp = Blueprint("auth", __name__)

# Checked against a real hash when the email is unknown, so both paths take the same time.
_DUMMY_HASH = "scrypt:32768:8:1$0000000000000000$" + "0" * 128


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
        email = form.email.data.strip().lower()
        user = db.session.scalar(select(User).where(func.lower(User.email) == email))
        now = utcnow()
        if user and user.locked_until and user.locked_until > now:
            wait = int((user.locked_until - now).total_seconds() // 60) + 1
            form.form_errors.append(
                f"Too many failed sign-ins for this account. Try again in {wait} minute{'s' if wait > 1 else ''} "
                f"(after {user.locked_until:%H:%M} UTC)."
            )
            return render_template("auth/login.html", form=form), 429
        if user and user.check_password(form.password.data):
            user.failed_logins = 0
            user.locked_until = None
            db.session.commit()
            login_user(user)
            return redirect(_safe_next(form.next.data))
        if user is None:
            from werkzeug.security import check_password_hash

            check_password_hash(_DUMMY_HASH, form.password.data)
        else:
            user.failed_logins += 1
            limit = current_app.config["LOGIN_MAX_FAILURES"]
            if user.failed_logins >= limit:
                user.locked_until = now + timedelta(seconds=current_app.config["LOGIN_LOCKOUT_SECONDS"])
                user.failed_logins = 0
            db.session.commit()
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
        logout_user()
        flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
