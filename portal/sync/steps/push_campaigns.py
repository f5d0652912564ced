"""S11: campaigns to the CRM at the chosen data level; later changes follow."""

from __future__ import annotations

from sqlalchemy import select

from ...connectors.dynamics.soap import CreateRequest, UpdateRequest
from ...extensions import db
from ...platform_models import Campaign
from ..context import Context
from ..mapping import campaign_attributes, campaign_code
from ..pushing import send_updates
from .base import Step


class PushCampaigns(Step):
    """Push campaigns."""

    name = "push_campaigns"

    def off_reason(self, integration):
        """Off unless Create Campaigns in CRM is selected."""
        return None if integration.create_campaigns else "Off: Create Campaigns in CRM is not selected."

    def run(self, ctx: Context) -> None:
        """Create campaigns not in the CRM yet (or find those a dead run made), update those changed since."""
        c = ctx.counts
        integ = ctx.integration
        campaigns = db.session.scalars(select(Campaign).where(Campaign.organization_id == ctx.org_id)
                                       .order_by(Campaign.id)).all()
        links = ctx.links("campaign", [cp.id for cp in campaigns])
        creates, create_ids, updates, update_ids = [], [], [], []
        for cp in campaigns:
            attrs = campaign_attributes(cp, integ.campaign_data_level, ctx.platform)
            link = links.get(cp.id)
            if link is None:
                creates.append(CreateRequest("campaign", attrs))
                create_ids.append(cp.id)
            elif cp.updated_at > link.last_synced_at:
                updates.append(UpdateRequest("campaign", link.crm_id, attrs))
                update_ids.append(cp.id)
            else:
                c.skipped += 1
        if creates:
            # A campaign's code names it in the CRM: one made by a run that died is found, not made twice.
            codes = {campaign_code(ctx.platform, cid): cid for cid in create_ids}
            for rec in ctx.gateway.fetch_in("campaign", ["campaignid", "codename"], "codename", list(codes)):
                cid = codes.get(rec.attributes.get("codename"))
                if cid is not None and cid in create_ids:
                    ctx.link("campaign", cid, "campaign", rec.id)
                    idx = create_ids.index(cid)
                    create_ids.pop(idx)
                    creates.pop(idx)
                    c.skipped += 1
            ctx.commit()
        ctx.write_then_link(creates, create_ids, local_type="campaign", operation="create", link_as="campaign")
        ctx.commit()
        send_updates(ctx, updates, update_ids, "campaign")
