"""The registry of sync steps: the nightly run is this list, in this order; each step in a module of its name."""

from __future__ import annotations

from .base import Step
from .contact_lists import ContactLists
from .pull_activities import PullActivities
from .pull_opportunities import PullOpportunities
from .pull_records import PullRecords
from .pull_status import PullStatus
from .push_campaigns import PushCampaigns
from .push_distributed_leads import PushDistributedLeads
from .push_events import PushEvents
from .push_marketing_leads import PushMarketingLeads

NIGHTLY: tuple[Step, ...] = (
    PullRecords(), ContactLists(), PushMarketingLeads(), PushDistributedLeads(), PushEvents(), PullActivities(),
    PullStatus(), PullOpportunities(), PushCampaigns(),
)
REGISTRY: dict[str, Step] = {step.name: step for step in NIGHTLY}
NIGHTLY_STEPS = [step.name for step in NIGHTLY]

__all__ = ["NIGHTLY", "NIGHTLY_STEPS", "REGISTRY", "Step"]
