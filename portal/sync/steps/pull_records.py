"""S7: every CRM lead and contact with an email becomes (or updates) a platform lead.

Nightly, only the records modified since the last read are asked for (``watermarks``); a full read, on demand
or once a week, reads them all and unlinks the platform leads whose CRM record was deleted.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from ...connectors.dynamics.soap import fetch_xml
from ...extensions import db
from ...platform_models import CrmLink
from ..context import Context, chunked
from ..mapping import people_columns
from ..people import import_people
from ..recorder import DB_CHUNK
from ..watermarks import Tracker
from .base import Step, pull_contacts_off


class PullRecords(Step):
    """Pull leads and contacts with an email."""

    name = "pull_records"

    def off_reason(self, integration):
        """Off unless Pull Contacts is selected."""
        return pull_contacts_off(integration)

    def run(self, ctx: Context) -> None:
        """Read the leads, then the contacts (modified since the last read, or all), and import those with an email."""
        full = []
        for entity in ("lead", "contact"):
            mark = f"{self.name}:{entity}"
            since = ctx.watermarks.since(mark)
            conditions = [("modifiedon", "ge", since)] if since is not None else []
            query = fetch_xml(entity, [*people_columns(entity), "modifiedon"], conditions, order=[f"{entity}id"])
            tracker = Tracker(keep_ids=since is None)
            import_people(ctx, entity, tracker.watch(ctx.gateway.fetch(query)))
            if since is None:
                full.append(entity)
                unlink_deleted(ctx, entity, tracker.ids or set())
            ctx.watermarks.advance(mark, tracker.newest, full=since is None)
            ctx.commit()
        ctx.counts.note = ("Read everything (a full read; deleted records noticed)." if len(full) == 2 else
                           "Read the records modified since the last run." if not full else
                           f"Read every {full[0]}; the others modified since the last run.")
        if ctx.counts.deleted:
            ctx.counts.note += f" {ctx.counts.deleted} deleted in the CRM: their leads were unlinked."


def unlink_deleted(ctx: Context, entity: str, seen: set[str]) -> None:
    """After reading every record of an entity: links to records no longer in the CRM are removed (S7)."""
    links = db.session.execute(select(CrmLink.id, CrmLink.crm_id).where(
        CrmLink.integration_id == ctx.integration.id, CrmLink.local_type == "lead", CrmLink.entity == entity,
        CrmLink.crm_id != "")).all()
    gone = [link_id for link_id, crm_id in links if crm_id.lower() not in seen]
    ctx.counts.deleted += len(gone)
    for ids in chunked(gone, DB_CHUNK):
        ctx.execute(delete(CrmLink).where(CrmLink.id.in_(ids)))
