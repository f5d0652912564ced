"""What a step is: a name, a title, whether it is on for an integration (and why not), and ``run``."""

from __future__ import annotations

from ...ledger import STEP_TITLES
from ...models import CrmIntegration
from ..context import Context


class Step:
    """One step of a run. Subclasses set ``name`` (and ``depends_on``) and implement ``run``."""

    name: str = ""
    # Steps whose writes this step's work reads (a Preview cannot know what they would have written).
    depends_on: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """The step's title, as the ledger shows it."""
        return STEP_TITLES[self.name]

    def off_reason(self, integration: CrmIntegration) -> str | None:
        """Why the step does nothing for this integration (its Usage Profile), or None when it is on."""
        return None

    def enabled(self, integration: CrmIntegration) -> bool:
        """True when the step has work to do for this integration."""
        return self.off_reason(integration) is None

    def __call__(self, ctx: Context) -> None:
        """Run the step, or note why it is off."""
        reason = self.off_reason(ctx.integration)
        if reason is not None:
            ctx.counts.note = reason
            return
        self.run(ctx)

    def run(self, ctx: Context) -> None:
        """Do the step's work."""
        raise NotImplementedError


def pull_contacts_off(integration: CrmIntegration) -> str | None:
    """The Pull Contacts rule shared by the steps that read CRM people (S7, S8)."""
    from ...lifecycle import pulls_contacts

    return None if pulls_contacts(integration) else "Off: Pull Contacts is not selected (Usage Profile)."
