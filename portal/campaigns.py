"""Campaigns the platform runs for an organization (S11): checked input, created and changed through the API."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import select

from .extensions import db
from .platform_models import Campaign

# Dynamics' campaign type codes (typecode), sent as they are.
TYPE_CODES = {1: "Advertisement", 2: "Direct Marketing", 3: "Event", 4: "Co-branding", 5: "Other"}
STATUSES = ("proposed", "ready_to_launch", "launched", "completed", "canceled", "suspended", "inactive")
TEXT_FIELDS = {"name": 200, "description": 10000, "objective": 10000, "promotion_code": 100}
MONEY_FIELDS = ("budget", "expected_revenue")
FIELDS = ("name", "type_code", "status", "starts_on", "ends_on", "description", "objective", "budget",
          "expected_revenue", "expected_response", "promotion_code")
MONEY_MAX = Decimal("999999999999.99")  # Numeric(14, 2)


class CampaignError(ValueError):
    """Input that cannot become a campaign, with a message saying what to fix."""


def _text(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CampaignError(f"{name} must be text.")
    value = value.strip()
    if len(value) > TEXT_FIELDS[name]:
        raise CampaignError(f"{name} is too long (at most {TEXT_FIELDS[name]} characters).")
    return value


def _when(name: str, value: object) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str) and len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        pass
    raise CampaignError(f"{name} must be a date (2026-11-26) or an ISO 8601 time (2026-11-26T10:00:00Z).")


def _money(name: str, value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CampaignError(f"{name} must be an amount, e.g. 2500.00.")
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError) as exc:
        raise CampaignError(f"{name} must be an amount, e.g. 2500.00.") from exc
    if not amount.is_finite() or not 0 <= amount <= MONEY_MAX:
        raise CampaignError(f"{name} must be from 0 to {MONEY_MAX}.")
    return amount


def _whole(name: str, value: object, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CampaignError(f"{name} must be a whole number from {low} to {high}.")
    return value


def clean(data: dict, *, partial: bool) -> dict:
    """Checked campaign fields from input; on a partial update only the fields given."""
    if not isinstance(data, dict):
        raise CampaignError("A campaign must be a JSON object of fields.")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise CampaignError(f"Unknown field {unknown[0]!r}: use {', '.join(FIELDS)}.")
    out: dict = {}
    for name in FIELDS:
        if name not in data:
            continue
        value = data[name]
        if name in TEXT_FIELDS:
            out[name] = _text(name, value)
        elif name in MONEY_FIELDS:
            out[name] = _money(name, value)
        elif name in ("starts_on", "ends_on"):
            out[name] = _when(name, value)
        elif name == "type_code":
            if value not in TYPE_CODES or isinstance(value, bool):
                choices = ", ".join(f"{k} ({v})" for k, v in TYPE_CODES.items())
                raise CampaignError(f"type_code must be one of {choices}.")
            out[name] = value
        elif name == "status":
            if value not in STATUSES:
                raise CampaignError(f"status must be one of {', '.join(STATUSES)}.")
            out[name] = value
        elif name == "expected_response":
            out[name] = _whole(name, value, 0, 100)
    if "name" in out and not out["name"]:
        raise CampaignError("A campaign needs a name.")
    if not partial and "name" not in out:
        raise CampaignError("A campaign needs a name.")
    return out


def create_campaign(org_id: int, data: dict) -> Campaign:
    """A new campaign of the organization."""
    fields = clean(data, partial=False)
    _check_dates(fields.get("starts_on"), fields.get("ends_on"))
    campaign = Campaign(organization_id=org_id, **fields)
    db.session.add(campaign)
    db.session.commit()
    return campaign


def update_campaign(campaign: Campaign, data: dict) -> Campaign:
    """Change the fields given; the campaign step sends the change to the CRM on its next run (S11)."""
    fields = clean(data, partial=True)
    _check_dates(fields.get("starts_on", campaign.starts_on), fields.get("ends_on", campaign.ends_on))
    for key, value in fields.items():
        setattr(campaign, key, value)
    db.session.commit()
    return campaign


def own_campaign(org_id: int, campaign_id: int) -> Campaign | None:
    """The organization's campaign, or None — never another organization's (P3)."""
    return db.session.scalar(select(Campaign).where(Campaign.id == campaign_id, Campaign.organization_id == org_id))


def _check_dates(starts: datetime | None, ends: datetime | None) -> None:
    if starts and ends and ends < starts:
        raise CampaignError("ends_on must not be before starts_on.")
