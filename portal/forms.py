"""Flask-WTF forms: sign-in now; one form per settings category later in this module."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField
from wtforms.validators import DataRequired, Email, Length


class LoginForm(FlaskForm):
    """Email and password."""

    email = EmailField("Email", validators=[DataRequired(), Email(check_deliverability=False), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=500)])
    next = HiddenField()


class ToggleForm(FlaskForm):
    """The On/Off switch: a CSRF-protected form that works with and without htmx."""

    state = HiddenField(validators=[DataRequired()])


class CsrfOnlyForm(FlaskForm):
    """A button-only action that still carries the CSRF token."""
