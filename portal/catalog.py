"""Fixed choices of the product: CRM kinds, lead event types, campaign data levels."""

from __future__ import annotations

DYNAMICS = "dynamics"

# One row per CRM the listing shows (L1); Dynamics is the one this product implements.
CRM_KINDS: dict[str, str] = {
    DYNAMICS: "Microsoft Dynamics CRM (on-premises, 2011 and later)",
}

# G4: the eleven lead event types, in the guide's order.
EVENT_TYPES: list[tuple[str, str]] = [
    ("email_open", "Email open"),
    ("email_click", "Email click"),
    ("email_unsubscribe", "Email unsubscribe"),
    ("web_plugin_view", "Web plugin view"),
    ("web_plugin_click", "Web plugin click"),
    ("form_submission", "Form submission"),
    ("telequalification", "Telequalification event"),
    ("sms_delivered", "SMS delivered"),
    ("sms_click", "SMS click"),
    ("supplier_event", "Supplier event"),
    ("link_conversion", "Link conversion"),
]
EVENT_TYPE_KEYS = [key for key, _ in EVENT_TYPES]

# High-signal events on by default; opens and views stay off so the CRM does not fill with noise.
DEFAULT_EVENT_TYPES = [
    "email_click",
    "email_unsubscribe",
    "web_plugin_click",
    "form_submission",
    "telequalification",
    "supplier_event",
    "link_conversion",
]

CAMPAIGN_DATA_LEVELS: list[tuple[str, str]] = [
    ("basic", "Basic: name, type, status and dates"),
    ("standard", "Standard: basic, plus description, objective and budget"),
    ("full", "Full: standard, plus expected response, revenue and promotion code, kept updated"),
]
