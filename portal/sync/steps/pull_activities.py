"""S6 back: tasks and phone calls on our leads, with subject, type, status, priority and due date."""

from __future__ import annotations

from sqlalchemy import select

from ...connectors.dynamics.xml import EntityReference
from ...extensions import db
from ...platform_models import CrmActivity
from ..context import Context, batched
from ..gateway import LOOKUP_CHUNK
from ..mapping import activity_values
from ..watermarks import follow
from .base import Step

COLUMNS = ["activityid", "activitytypecode", "subject", "statecode", "statuscode", "prioritycode", "scheduledend",
           "regardingobjectid"]


class PullActivities(Step):
    """Pull CRM activities on our leads."""

    name = "pull_activities"
    depends_on = ("pull_records", "push_marketing_leads", "push_distributed_leads")  # the leads they link

    def run(self, ctx: Context) -> None:
        """The activities regarding every linked lead, kept or updated."""
        c = ctx.counts
        guids = ctx.linked_guids()
        records = follow(ctx, self.name, "activitypointer", COLUMNS, "regardingobjectid", guids, order="activityid")
        for batch in batched(records, LOOKUP_CHUNK):
            acts = []
            for act in batch:
                c.read += 1
                regarding = act.attributes.get("regardingobjectid")
                lead_id = guids.get(regarding.id.lower()) if isinstance(regarding, EntityReference) else None
                if lead_id is not None:
                    acts.append((act, lead_id))
            known = {row.crm_id: row for row in db.session.scalars(select(CrmActivity).where(
                CrmActivity.organization_id == ctx.org_id, CrmActivity.crm_id.in_([a.id for a, _ in acts])))}
            for act, lead_id in acts:
                values = activity_values(act)
                row = known.get(act.id)
                if row is None:
                    ctx.add(CrmActivity(organization_id=ctx.org_id, lead_id=lead_id, crm_id=act.id, **values))
                    c.created += 1
                elif any(getattr(row, k) != v for k, v in values.items()):
                    ctx.assign(row, values)
                    c.updated += 1
            ctx.commit()
