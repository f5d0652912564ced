"""The sync engine: the only package that touches both the portal's data and the CRM connector.

Jobs and the command line call ``execute`` (a nightly or manual run, a push, a retry) and ``push_acceptance``;
every run is recorded in the ledger (``SyncRun`` with its steps and ``SyncFailure`` rows). The steps are in
``steps/``, one module each, listed in order by ``steps.NIGHTLY``.
"""

from __future__ import annotations

from ..ledger import new_run
from .engine import TimeLimitReached, execute, kept_gateway, push_acceptance
from .gateway import CrmGateway
from .locks import integration_lock, lock_name, run_alive
from .steps import NIGHTLY, NIGHTLY_STEPS, REGISTRY

__all__ = ["NIGHTLY", "NIGHTLY_STEPS", "REGISTRY", "CrmGateway", "TimeLimitReached", "execute", "integration_lock",
           "kept_gateway", "lock_name", "new_run", "push_acceptance", "run_alive"]
