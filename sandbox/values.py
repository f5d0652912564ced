"""Typed values as parsed from requests, the CrmFault error, and conversion to the stored JSON form."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from . import schema as s

# Real ErrorCodes of OrganizationServiceFault: record not found, missing privilege, duplicate record.
E_NOT_FOUND = -2147220969
E_MISSING_PRIVILEGE = -2147220960
E_DUPLICATE = -2147220937
E_INVALID_OPTION = -2147204326
E_NO_ATTRIBUTE = -2147217149
E_INVALID_ARGUMENT = -2147220989
# Chosen for "Server Busy" (0x80044102 region); clients should key on the message/HTTP 500, see README.
E_SERVER_BUSY = -2147180286
# ExecuteMultiple over the batch limit: invalid argument plus ErrorDetails MaxBatchSize.
E_BATCH_SIZE = -2147220989
E_UNKNOWN_MESSAGE = -2147220970


class CrmFault(Exception):
    """An OrganizationServiceFault to send back to the client."""

    def __init__(self, code: int, message: str, details: dict[str, Any] | None = None) -> None:
        """Keep code, message and ErrorDetails."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass
class OptionSetValue:
    """An x:OptionSetValue."""

    value: int


@dataclass
class Money:
    """An x:Money."""

    value: Decimal


@dataclass
class EntityReference:
    """An x:EntityReference."""

    logical_name: str
    id: str
    name: str | None = None


@dataclass
class EntityIn:
    """An x:Entity as received in a request."""

    logical_name: str
    id: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Label:
    """An x:Label (first localized label kept)."""

    text: str
    language: int = 1033


def norm_guid(value: str) -> str:
    """Lower-case GUID text without braces; raise CrmFault when malformed."""
    try:
        return str(uuid.UUID(str(value).strip().strip("{}")))
    except ValueError as exc:
        raise CrmFault(E_INVALID_ARGUMENT, f"Guid should contain 32 digits with 4 dashes: '{value}'") from exc


EMPTY_GUID = "00000000-0000-0000-0000-000000000000"


def now_iso() -> str:
    """Current UTC time in the stored form (second precision like the CRM)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text: str) -> str:
    """Normalize an xs:dateTime / ISO 8601 / date-only text into the stored UTC form."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            dt = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            cleaned = raw.replace("Z", "+00:00")
            # Python 3.11 fromisoformat takes up to 6 fraction digits; WCF sends 7.
            if "." in cleaned:
                head, _, tail = cleaned.partition(".")
                digits = "".join(ch for ch in tail if ch.isdigit())
                zone = tail[len(digits) :]
                cleaned = f"{head}.{digits[:6]}{zone}"
            dt = datetime.fromisoformat(cleaned)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
    except ValueError as exc:
        raise CrmFault(E_INVALID_ARGUMENT, f"Invalid DateTime value '{text}'") from exc
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _type_error(entity: str, attribute: str, value: Any) -> CrmFault:
    kind = type(value).__name__
    return CrmFault(
        E_INVALID_ARGUMENT,
        f"Incorrect type of attribute value {kind} for attribute '{attribute}' of entity '{entity}'",
    )


def to_stored(entity: s.EntityDef, attribute: str, value: Any, custom_options: dict[int, str]) -> Any:
    """Validate a request value against the attribute type and return its JSON form."""
    kind = entity.attributes.get(attribute)
    if kind is None:
        raise CrmFault(E_NO_ATTRIBUTE, f"'{entity.name}' entity doesn't contain attribute with Name = '{attribute}'.")
    if value is None:
        return None
    if kind in (s.STRING, s.MEMO):
        if not isinstance(value, str):
            raise _type_error(entity.name, attribute, value)
        return value
    if kind == s.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(entity.name, attribute, value)
        return value
    if kind in (s.DECIMAL, s.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise _type_error(entity.name, attribute, value)
        return float(value)
    if kind == s.BOOL:
        if not isinstance(value, bool):
            raise _type_error(entity.name, attribute, value)
        return value
    if kind == s.DATETIME:
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise _type_error(entity.name, attribute, value)
    if kind == s.GUID:
        if isinstance(value, uuid.UUID):
            return str(value)
        raise _type_error(entity.name, attribute, value)
    if kind == s.OPTIONSET:
        if not isinstance(value, OptionSetValue):
            raise _type_error(entity.name, attribute, value)
        if attribute not in ("statecode", "statuscode"):
            allowed = {**entity.options.get(attribute, {}), **custom_options}
            if allowed and value.value not in allowed:
                raise CrmFault(
                    E_INVALID_OPTION,
                    f"A validation error occurred. The value {value.value} of '{attribute}' on record of "
                    f"type '{entity.name}' is outside the valid range.",
                )
        return value.value
    if kind == s.MONEY:
        if not isinstance(value, Money):
            raise _type_error(entity.name, attribute, value)
        return float(value.value)
    if kind == s.LOOKUP:
        if not isinstance(value, EntityReference):
            raise _type_error(entity.name, attribute, value)
        return {"Id": norm_guid(value.id), "LogicalName": value.logical_name, "Name": value.name}
    raise _type_error(entity.name, attribute, value)


def json_to_stored(entity: s.EntityDef, attribute: str, value: Any, custom_options: dict[int, str]) -> Any:
    """Convert a loosely typed JSON value (control API bulk insert) into the stored form."""
    kind = entity.attributes.get(attribute)
    if kind is None:
        raise CrmFault(E_NO_ATTRIBUTE, f"'{entity.name}' entity doesn't contain attribute with Name = '{attribute}'.")
    if value is None:
        return None
    if kind == s.DATETIME:
        return parse_datetime(str(value))
    if kind == s.GUID:
        return norm_guid(str(value))
    if kind == s.LOOKUP:
        if isinstance(value, dict):
            target = value.get("LogicalName") or value.get("logicalname") or entity.lookup_targets.get(attribute)
            rid = value.get("Id") or value.get("id")
            return {"Id": norm_guid(str(rid)), "LogicalName": target, "Name": value.get("Name")}
        return {"Id": norm_guid(str(value)), "LogicalName": entity.lookup_targets.get(attribute), "Name": None}
    if kind == s.OPTIONSET:
        number = int(value["Value"] if isinstance(value, dict) else value)
        return to_stored(entity, attribute, OptionSetValue(number), custom_options)
    if kind in (s.MONEY, s.DECIMAL, s.DOUBLE):
        try:
            return float(value["Value"] if isinstance(value, dict) else value)
        except (InvalidOperation, ValueError, TypeError) as exc:
            raise _type_error(entity.name, attribute, value) from exc
    if kind == s.INT:
        return int(value)
    if kind == s.BOOL:
        return bool(value) if not isinstance(value, str) else value.lower() in ("1", "true", "yes")
    return str(value)
