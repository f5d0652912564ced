"""The Dynamics connector stands alone: importing it loads no web framework, database layer or job queue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_connector_loads_no_flask_sqlalchemy_or_rq():
    code = ("import json, sys; import portal.connectors.dynamics, portal.connectors.dynamics.batch; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'sqlalchemy', 'rq', "
            "'flask_sqlalchemy', 'flask_wtf', 'redis'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_app_factory_is_still_importable_from_the_package():
    code = "from portal import create_app; import portal; print(create_app is portal.create_app)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
