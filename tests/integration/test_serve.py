"""`make run`'s launcher: serves the portal with its worker, Redis and sandbox, and Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from portal.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_launcher_serves_the_demo_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "CRM_ALLOWED_NETWORKS", "CRM_ALLOWED_ENDPOINTS")}
    sandbox_port = free_port()
    env.update({"PORTAL_INSTANCE_PATH": str(tmp_path), "PORTAL_PORT": str(port), "SANDBOX_PORT": str(sandbox_port)})
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "portal.serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the portal did not answer"
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # the sandbox and the worker (Redis too when redis-server is installed)
        output = (tmp_path / "serve.log").read_text()
        assert "admin@partner.example" in output and f"http://127.0.0.1:{port}/" in output
        # Exactly the sandbox is reachable, not the rest of loopback.
        assert f"CRM_ALLOWED_ENDPOINTS=127.0.0.1:{sandbox_port} " in output
        assert "CRM_ALLOWED_NETWORKS" not in output
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, alive
        assert "Stopped the portal" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_make_run_lets_tenants_reach_the_sandbox_and_no_other_local_port(tmp_path, capsys):
    from portal import create_app
    from portal.connection import guard_problem
    from portal.serve import allow_sandbox

    from ..conftest import base_overrides

    env: dict[str, str] = {}
    allow_sandbox(env, 5555)
    assert "CRM_ALLOWED_ENDPOINTS=127.0.0.1:5555 " in capsys.readouterr().out
    config = base_overrides(f"sqlite:///{tmp_path / 'unused.sqlite3'}", "redis://unused", tmp_path)
    config.update({"CRM_ALLOWED_NETWORKS": "", **env})
    with create_app(config).app_context():
        assert guard_problem("http://127.0.0.1:5555/demo/XRMServices/2011/Organization.svc/web") is None
        for probe in ("http://127.0.0.1:6379/x/web", "http://127.0.0.1:5432/x/web", "http://127.0.0.1/x/web",
                      "http://127.0.0.2:5555/x/web", "http://[::1]:5555/x/web"):
            assert "loopback" in (guard_problem(probe) or ""), probe
