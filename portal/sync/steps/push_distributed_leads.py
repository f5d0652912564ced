"""S1 catch-up: distributed leads not yet in the CRM (a push that failed or was missed)."""

from __future__ import annotations

from sqlalchemy import select

from ...platform_models import Lead, LeadOrigin
from ..context import Context
from ..pushing import push_query
from .base import Step


class PushDistributedLeads(Step):
    """Push distributed leads, with their custom fields as a note."""

    name = "push_distributed_leads"

    def off_reason(self, integration):
        """Off unless Synchronize Supplier Leads is selected."""
        if not (integration.lead_distribution and integration.ld_sync_supplier_leads):
            return "Off: Synchronize Supplier Leads is not selected."
        return None

    def run(self, ctx: Context) -> None:
        """Push every distributed lead (those linked already are skipped)."""
        query = select(Lead).where(Lead.organization_id == ctx.org_id, Lead.origin == LeadOrigin.distributed)
        push_query(ctx, query, allow_updates=ctx.integration.ld_allow_field_updates, custom_notes=True)
