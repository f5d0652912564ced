"""An integration's life: On, Off, and automatic Off (settings changed, test failed, repeated authentication
failures), the error banner, connection-test results, and the rule between contacts and Pull Contacts (L2, L3)."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select

from . import notify
from .extensions import db
from .models import CrmIntegration, Notice, Role, User, audit, utcnow

AUTH_CODES = {"auth_failed"}
# Test failures that say the CRM was busy, not that the settings are wrong.
BUSY_CODES = {"server_busy", "crm_in_use"}
PULL_CONTACTS_WITH_CONTACTS = ("Pull Contacts is not available while new leads are recorded as contacts: "
                               "Dynamics offers no way to pull contacts then.")


# -- On and Off

def switch_on(integration: CrmIntegration, user) -> str | None:
    """Switch On, or say why not (L2: only once a test passed on the saved settings); None when On."""
    refusal = integration.switch_on_refusal()
    if refusal:
        return refusal
    if not integration.enabled:
        integration.enabled = True
        integration.auth_failures = 0
        audit(user, integration.organization_id, "switched on", ["enabled"], integration.id)
        db.session.commit()
        from .schedule import schedule_next_night

        schedule_next_night(integration.id)
    return None


def switch_off(integration: CrmIntegration, user) -> None:
    """Switch Off by hand."""
    if integration.enabled:
        integration.enabled = False
        audit(user, integration.organization_id, "switched off", ["enabled"], integration.id)
    db.session.commit()


def connection_saved(integration: CrmIntegration, changed: list[str], *, testing: bool) -> bool:
    """Connection settings saved: changed settings that no test has passed switch an integration Off (L2).

    A save that starts a test keeps it On until the test says otherwise. True when it was switched Off.
    """
    if changed and integration.enabled and not testing and not integration.test_passed_on_saved_settings:
        integration.enabled = False
        changed.append("enabled")
        return True
    return False


def test_finished(integration: CrmIntegration, *, ok: bool, was_on: bool, fingerprint: str, message: str,
                  lead_source_value: int | None = None, error: dict | None = None) -> None:
    """Keep a connection test's result; settings that no longer pass must not stay On (L2).

    A test that ended because the CRM was busy (Server Busy, or every slot held by the integration's own sync)
    says nothing about the settings: the integration stays as it was.
    """
    record_test(integration, ok=ok, fingerprint=fingerprint, message=message, lead_source_value=lead_source_value,
                error=error)
    if was_on and not ok and integration.enabled and (error or {}).get("code") not in BUSY_CODES:
        integration.enabled = False
        integration.error_message = f"{integration.error_message} The integration was switched Off."


# -- the contacts / Pull Contacts rule (S7, S10)

def pulls_contacts(integration: CrmIntegration) -> bool:
    """True when the nightly run pulls CRM people: Pull Contacts on, and new leads not recorded as contacts."""
    return bool(integration.marketing_automation and integration.ma_pull_contacts
                and integration.record_leads_as != "contact")


def apply_contacts_rule(integration: CrmIntegration) -> list[str]:
    """Recording leads as contacts turns Pull Contacts off (it is not possible then); the fields changed."""
    if integration.record_leads_as == "contact" and integration.ma_pull_contacts:
        integration.ma_pull_contacts = False
        return ["ma_pull_contacts"]
    return []


# -- results of work against the CRM

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
    """An in-portal notice for the organization's administrators, and an email to them."""
    db.session.add(Notice(organization_id=integration.organization_id, message=text))
    admins = db.session.scalars(
        select(User.email).where(User.organization_id == integration.organization_id, User.role == Role.admin)
    ).all()
    if admins and current_app.config.get("SMTP_HOST"):
        notify.email(integration.organization_id, list(admins),
                     f"{current_app.config['PLATFORM_NAME']}: your CRM integration needs attention", text)
