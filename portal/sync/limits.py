"""A record's text values against the CRM's field lengths: too long fails the record, or is cut when chosen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_PERSON = {
    "firstname": 50, "lastname": 50, "jobtitle": 100, "emailaddress1": 100, "telephone1": 50, "websiteurl": 200,
    "address1_line1": 250, "address1_line2": 250, "address1_city": 80, "address1_stateorprovince": 50,
    "address1_postalcode": 20, "address1_country": 80, "description": 2000,
}
# The lengths of an unmodified CRM, used until a connection test has read the CRM's own.
DEFAULT_MAX_LENGTHS: dict[str, dict[str, int]] = {
    "lead": {**_PERSON, "subject": 300, "companyname": 100, "mobilephone": 20},
    "contact": {**_PERSON, "mobilephone": 50},
}
# How the pages name the CRM attributes the sync writes.
LABELS = {
    "firstname": "first name", "lastname": "last name", "companyname": "company", "jobtitle": "job title",
    "emailaddress1": "email", "telephone1": "phone", "mobilephone": "mobile phone", "websiteurl": "website",
    "address1_line1": "address line 1", "address1_line2": "address line 2", "address1_city": "city",
    "address1_stateorprovince": "state", "address1_postalcode": "postal code", "address1_country": "country",
    "description": "description", "subject": "topic",
}


@dataclass(frozen=True)
class TooLong:
    """A value longer than its CRM attribute accepts."""

    entity: str
    attribute: str
    length: int
    limit: int

    def describe(self) -> str:
        """In words, naming the field, the length and the limit."""
        label = LABELS.get(self.attribute, self.attribute)
        return (f"The {label} ({self.entity} field {self.attribute}) is {self.length} characters long; "
                f"the CRM accepts at most {self.limit}.")


def limits_for(entity: str, known: dict[str, dict[str, int]]) -> dict[str, int]:
    """The CRM's own limits of an entity when read, else those of an unmodified CRM."""
    return known.get(entity) or DEFAULT_MAX_LENGTHS.get(entity, {})


def crm_length(value: str) -> int:
    """A text's length as the CRM counts it: in UTF-16 code units (.NET strings, SQL Server nvarchar).

    A character beyond the Basic Multilingual Plane (an emoji, many CJK extension characters) counts twice.
    """
    return len(value.encode("utf-16-le", "surrogatepass")) // 2


def cut_to(value: str, limit: int) -> str:
    """The longest start of a text that is at most ``limit`` UTF-16 units, never splitting a character."""
    units = 0
    for index, char in enumerate(value):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return value[:index]
    return value


def fit(entity: str, attributes: dict[str, Any], limits: dict[str, int], *, cut: bool) -> tuple[dict, list[TooLong]]:
    """The attributes checked against the limits: (attributes, what is too long).

    With ``cut`` a value too long is cut to the limit (and still reported, for the run's log).
    """
    too_long = [TooLong(entity, name, crm_length(value), limits[name]) for name, value in attributes.items()
                if isinstance(value, str) and name in limits and crm_length(value) > limits[name]]
    if cut and too_long:
        attributes = dict(attributes)
        for item in too_long:
            attributes[item.attribute] = cut_to(attributes[item.attribute], item.limit)
    return attributes, too_long
