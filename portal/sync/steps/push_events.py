"""S6: the selected marketing event types as notes on the leads' CRM records."""

from __future__ import annotations

from ..context import Context
from ..notes import push_events
from .base import Step


class PushEvents(Step):
    """Write marketing events as notes."""

    name = "push_events"
    depends_on = ("push_marketing_leads", "push_distributed_leads")  # notes go on leads those steps link

    def run(self, ctx: Context) -> None:
        """Every unsent event of a selected type (all of a distributed lead's) as a note."""
        push_events(ctx)
