"""S5: marketing leads whose score exceeds the threshold go to the CRM."""

from __future__ import annotations

from sqlalchemy import select

from ...platform_models import Lead, LeadOrigin
from ..context import Context
from ..pushing import push_query
from .base import Step


class PushMarketingLeads(Step):
    """Push marketing-automation leads over the threshold."""

    name = "push_marketing_leads"

    def off_reason(self, integration):
        """Off unless Synchronize Marketing Automation Leads is selected."""
        if not (integration.marketing_automation and integration.ma_sync_leads):
            return "Off: Synchronize Marketing Automation Leads is not selected."
        return None

    def run(self, ctx: Context) -> None:
        """Push every marketing lead over the score threshold."""
        integ = ctx.integration
        query = select(Lead).where(Lead.organization_id == ctx.org_id, Lead.origin == LeadOrigin.marketing,
                                   Lead.score > integ.ma_score_threshold)
        push_query(ctx, query, allow_updates=integ.ma_allow_field_updates)
