"""S9: lead status from the CRM; qualify means accepted and disqualify rejected, everywhere (S12)."""

from __future__ import annotations

from sqlalchemy import select

from ...extensions import db
from ...models import utcnow
from ...platform_models import Acceptance, Lead, LeadOrigin
from ..context import Context, batched
from ..gateway import LOOKUP_CHUNK
from ..mapping import LEAD_STATE, lead_status, option
from ..watermarks import follow
from .base import Step


class PullStatus(Step):
    """Pull lead status."""

    name = "pull_status"
    depends_on = ("pull_records", "push_marketing_leads", "push_distributed_leads")  # the leads they link

    def run(self, ctx: Context) -> None:
        """The state and status of every linked CRM lead; a qualified or disqualified one answers its lead."""
        c = ctx.counts
        guids = ctx.linked_guids("lead")
        records = follow(ctx, self.name, "lead", ["leadid", "statecode", "statuscode"], "leadid", guids)
        for batch in batched(records, LOOKUP_CHUNK):
            changes = []
            for rec in batch:
                c.read += 1
                state = option(rec.attributes.get("statecode"))
                status = option(rec.attributes.get("statuscode"))
                label = rec.formatted_values.get("statuscode") or LEAD_STATE.get(state, "")
                changes.append((guids[rec.id.lower()], state, status, label))
            leads = {ld.id: ld for ld in db.session.scalars(select(Lead).where(Lead.id.in_([x[0] for x in changes])))}
            for lead_id, state, status, label in changes:
                lead = leads.get(lead_id)
                if lead is None or (lead.crm_state_code, lead.crm_status_code) == (state, status):
                    continue
                c.updated += 1
                values = {"crm_state_code": state, "crm_status_code": status, "crm_status": lead_status(state, label)}
                if lead.origin == LeadOrigin.distributed and state in (1, 2):
                    wanted = Acceptance.accepted if state == 1 else Acceptance.rejected
                    if lead.acceptance != wanted:
                        values.update(acceptance=wanted, acceptance_via="crm", acceptance_at=utcnow())
                ctx.assign(lead, values)
            ctx.commit()
