"""S11: campaigns to the CRM at the chosen data level; later changes follow."""

from __future__ import annotations

from sqlalchemy import delete, select

from ...connectors.dynamics.soap import CreateRequest, SetStateRequest, UpdateRequest
from ...extensions import db
from ...platform_models import Campaign, CrmLink
from ..context import Context
from ..mapping import campaign_attributes, campaign_code, campaign_state
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
        by_id = {cp.id: cp for cp in campaigns}
        for cp in campaigns:
            link = links.get(cp.id)
            if link is not None and cp.updated_at <= link.last_synced_at:
                c.skipped += 1
                continue
            attrs = ctx.build(lambda cp=cp, link=link: campaign_attributes(
                cp, integ.campaign_data_level, ctx.platform, creating=link is None),
                operation="create" if link is None else "update", entity="campaign", local_type="campaign",
                local_id=cp.id)
            if attrs is None:
                continue
            if link is None:
                creates.append(CreateRequest("campaign", attrs))
                create_ids.append(cp.id)
            else:
                updates.append(UpdateRequest("campaign", link.crm_id, attrs))
                update_ids.append(cp.id)
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
        made: dict[int, str] = {}

        def created(cid: int, item) -> None:
            ctx.link("campaign", cid, "campaign", item.id)
            made[cid] = item.id

        ctx.write_then_link(creates, create_ids, local_type="campaign", operation="create", link_as="campaign",
                            on_ok=created)
        ctx.commit()
        gone = set(send_updates(ctx, updates, update_ids, "campaign"))
        if gone:
            # Deleted in the CRM: the link goes, and the next run creates the campaign again.
            ctx.execute(delete(CrmLink).where(CrmLink.integration_id == ctx.integration.id,
                                              CrmLink.local_type == "campaign", CrmLink.local_id.in_(gone)))
            ctx.note(f"{len(gone)} campaign(s) had been deleted in the CRM: they are created again.")
            ctx.commit()
        # The status: SetState for an inactive new campaign and for every campaign that changed.
        states = [(cid, made[cid]) for cid in create_ids if cid in made and campaign_state(by_id[cid])[0] != 0]
        states += [(cid, req.id) for cid, req in zip(update_ids, updates, strict=True) if cid not in gone]
        requests = [SetStateRequest("campaign", crm_id, *campaign_state(by_id[cid])) for cid, crm_id in states]
        for item in ctx.write(requests):
            if not item.ok:
                ctx.rec.fail("status", "campaign", item.error or "Not processed.", local_type="campaign",
                             local_id=states[item.index][0])
        ctx.commit()
