"""An integration's health: connection-test results, the error banner, and auto-Off after auth failures (L2, L3)."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

from flask import current_app
from sqlalchemy import select

from .extensions import db
from .models import CrmIntegration, Notice, Role, User, utcnow

log = logging.getLogger(__name__)

AUTH_CODES = {"auth_failed"}


def record_success(integration: CrmIntegration) -> None:
    """A job succeeded against the CRM: lower the banner and reset the authentication-failure count."""
    integration.auth_failures = 0
    integration.clear_error()


def record_failure(integration: CrmIntegration, code: str, message: str, action: str) -> bool:
    """A job failed: raise the banner; after too many authentication failures switch Off. True if switched Off."""
    switched_off = False
    if code in AUTH_CODES:
        integration.auth_failures += 1
        if integration.enabled and integration.auth_failures >= integration.auth_failure_limit:
            integration.enabled = False
            switched_off = True
            message = (
                f"{message} After {integration.auth_failures} authentication failures in a row the integration "
                "was switched Off."
            )
            action = f"{action} Then run Save and Test CRM Connection and switch the integration On again."
    integration.set_error(code, message, action)
    if switched_off:
        notify_admins(integration, f"{integration.label} was switched Off: {message} What to do: {action}")
    return switched_off


def record_test(integration: CrmIntegration, *, ok: bool, fingerprint: str, message: str,
                lead_source_value: int | None = None, error: dict | None = None) -> None:
    """Keep a connection test's result; it counts for On/Off only if the settings did not change meanwhile."""
    integration.last_test_ok = ok
    integration.last_test_at = utcnow()
    integration.last_test_message = message
    integration.last_test_fingerprint = fingerprint
    if lead_source_value is not None:
        integration.lead_source_value = lead_source_value
    if ok:
        record_success(integration)
    elif error:
        record_failure(integration, error["code"], error["message"], error["action"])


def notify_admins(integration: CrmIntegration, text: str) -> None:
    """An in-portal notice for the organization's administrators, and an email when SMTP is configured."""
    db.session.add(Notice(organization_id=integration.organization_id, message=text))
    host = current_app.config.get("SMTP_HOST")
    if not host:
        return
    admins = db.session.scalars(
        select(User.email).where(User.organization_id == integration.organization_id, User.role == Role.admin)
    ).all()
    if not admins:
        return
    msg = EmailMessage()
    msg["Subject"] = f"{current_app.config['PLATFORM_NAME']}: your CRM integration needs attention"
    msg["From"] = current_app.config["SMTP_FROM"]
    msg["To"] = ", ".join(admins)
    msg.set_content(text)
    try:
        with smtplib.SMTP(host, current_app.config["SMTP_PORT"], timeout=10) as smtp:
            smtp.send_message(msg)
    except OSError:
        # The notice above is kept; a mail server outage must not fail the job that found the problem.
        log.exception("could not email the administrators of organization %s", integration.organization_id)
