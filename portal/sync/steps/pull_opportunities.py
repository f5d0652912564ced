"""S10: opportunities from our leads (marketing) and those whose contact's email matches (distribution)."""

from __future__ import annotations

from sqlalchemy import select

from ...extensions import db
from ...platform_models import Lead, LeadOrigin, Opportunity, normalize_email
from ..context import Context, batched, chunked
from ..gateway import LOOKUP_CHUNK
from ..mapping import opportunity_values
from ..watermarks import about, follow
from .base import Step

COLUMNS = ["opportunityid", "name", "statecode", "estimatedvalue", "actualvalue", "estimatedclosedate",
           "originatingleadid", "parentcontactid"]


class PullOpportunities(Step):
    """Pull opportunities."""

    name = "pull_opportunities"
    depends_on = ("pull_records", "push_marketing_leads", "push_distributed_leads")  # the leads they link

    def off_reason(self, integration):
        """Off unless one of the opportunity options is selected."""
        if not self._from_leads(integration) and not self._by_contact(integration):
            return "Off: no opportunity option is selected (Usage Profile)."
        return None

    @staticmethod
    def _from_leads(integ) -> bool:
        return bool(integ.marketing_automation and integ.ma_pull_opportunities)

    @staticmethod
    def _by_contact(integ) -> bool:
        return bool(integ.lead_distribution and integ.ld_pull_opportunities)

    def run(self, ctx: Context) -> None:
        """Opportunities originating from our leads, then those of contacts with a distributed lead's email."""
        integ = ctx.integration
        if self._from_leads(integ):
            guids = ctx.linked_guids("lead")
            records = follow(ctx, f"{self.name}:lead", "opportunity", COLUMNS, "originatingleadid", guids,
                             order="opportunityid")
            for batch in batched(records, LOOKUP_CHUNK):
                self._keep(ctx, [(opp, guids.get(about(opp, "originatingleadid"))) for opp in batch],
                           "originating-lead")
        if self._by_contact(integ):
            emails = dict(db.session.execute(select(Lead.email_normalized, Lead.id).where(
                Lead.organization_id == ctx.org_id, Lead.origin == LeadOrigin.distributed)).all())
            for keys in chunked(sorted(emails), LOOKUP_CHUNK):
                contacts = {rec.id.lower(): emails.get(normalize_email(rec.attributes.get("emailaddress1")))
                            for rec in ctx.gateway.fetch_in("contact", ["contactid", "emailaddress1"],
                                                            "emailaddress1", keys)}
                found = []
                for opp in ctx.gateway.fetch_in("opportunity", COLUMNS, "parentcontactid", sorted(contacts),
                                                order="opportunityid"):
                    ref = opp.attributes.get("parentcontactid")
                    found.append((opp, contacts.get(ref.id.lower()) if ref else None))
                self._keep(ctx, found, "contact-email")
        ctx.commit()

    @staticmethod
    def _keep(ctx: Context, found: list, rule: str) -> None:
        """Keep new opportunities and follow changes of known ones."""
        c = ctx.counts
        known = {row.crm_id: row for row in db.session.scalars(select(Opportunity).where(
            Opportunity.organization_id == ctx.org_id, Opportunity.crm_id.in_([opp.id for opp, _ in found])))}
        for opp, lead_id in found:
            c.read += 1
            values = opportunity_values(opp, lead_id, rule)
            row = known.get(opp.id)
            if row is None:
                row = known[opp.id] = Opportunity(organization_id=ctx.org_id, crm_id=opp.id, **values)
                ctx.add(row)
                c.created += 1
            elif any(getattr(row, k) != v for k, v in values.items() if k != "estimated_value"):
                ctx.assign(row, values)
                c.updated += 1
