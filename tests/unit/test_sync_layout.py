"""The engine's layout: each step in a module of its name; the pages and the schedule need none of the engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from portal import ledger, sync
from portal.sync.steps import Step

ROOT = Path(__file__).resolve().parents[2]


def test_every_nightly_step_lives_in_the_module_of_its_name_with_the_ledgers_title():
    assert sync.NIGHTLY_STEPS == [step.name for step in sync.NIGHTLY] == list(sync.REGISTRY)
    modules = {p.stem for p in (ROOT / "portal" / "sync" / "steps").glob("*.py")} - {"__init__", "base"}
    assert modules == set(sync.NIGHTLY_STEPS)
    for step in sync.NIGHTLY:
        assert isinstance(step, Step) and type(step).__module__ == f"portal.sync.steps.{step.name}"
        assert step.title == ledger.STEP_TITLES[step.name]


def test_the_history_pages_and_the_schedule_import_no_part_of_the_engine():
    code = ("import json, sys; import portal.ledger, portal.schedule, portal.views.runs, portal.views.settings, "
            "portal.views.integrations, portal.lifecycle; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('portal.sync'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
