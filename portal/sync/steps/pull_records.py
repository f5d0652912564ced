"""S7: every CRM lead and contact with an email becomes (or updates) a platform lead."""

from __future__ import annotations

from ...connectors.dynamics.soap import fetch_xml
from ..context import Context
from ..mapping import people_columns
from ..people import import_people
from .base import Step, pull_contacts_off


class PullRecords(Step):
    """Pull leads and contacts with an email."""

    name = "pull_records"

    def off_reason(self, integration):
        """Off unless Pull Contacts is selected."""
        return pull_contacts_off(integration)

    def run(self, ctx: Context) -> None:
        """Read every lead, then every contact, and import those with an email."""
        for entity in ("lead", "contact"):
            query = fetch_xml(entity, people_columns(entity), order=[f"{entity}id"])
            import_people(ctx, entity, ctx.gateway.fetch(query))
