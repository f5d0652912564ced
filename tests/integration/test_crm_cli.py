"""``flask crm test-connection`` against the sandbox CRM over real NTLM on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["URL check", "DNS and TCP", "TLS", "NTLM handshake", "Organization Service", "WhoAmI", "Version",
         "Read access", "Lead source option", "Field lengths", "OData"]


def args(crm, *extra: str, password: str | None = None) -> list[str]:
    """The command's arguments for the sandbox (password on the command line unless None)."""
    out = ["crm", "test-connection", "--org-url", crm.org_url, "--username", crm.username, "--domain", crm.domain]
    if password is not None:
        out += ["--password", password]
    return [*out, *extra]


def traffic(crm) -> tuple:
    """What the sandbox counts of CRM traffic (HTTP requests by endpoint, NTLM 401s, operations)."""
    stats = crm.stats()
    return stats["http"], stats["ntlm_401"], stats["ntlm_handshakes"], stats["requests"]


def test_json_output_passes(runner, crm):
    res = runner.invoke(args=args(crm, "--odata-url", crm.webapi_url, "--json", password=crm.password))
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data) == {"ok", "steps", "user_id", "organization_id", "version", "lead_source_value", "max_lengths",
                         "error"}
    assert data["ok"] is True and data["error"] is None
    assert [s["name"] for s in data["steps"]] == STEPS
    assert all(set(s) == {"name", "ok", "detail"} and s["ok"] is True and s["detail"] for s in data["steps"])
    assert data["user_id"] and data["organization_id"] and data["version"] == "8.2.2.112"
    assert isinstance(data["lead_source_value"], int)
    assert data["steps"][-1]["detail"] == "Web API answered"
    assert crm.password not in res.output


def test_wrong_password_exits_1_with_auth_failed(runner, crm):
    res = runner.invoke(args=args(crm, "--json", password="Wrong-Pass-77"))
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["ok"] is False
    assert data["error"]["code"] == "auth_failed"
    assert data["error"]["message"] and data["error"]["action"]
    assert data["steps"][-1] == {"name": "NTLM handshake", "ok": False, "detail": data["error"]["message"]}
    assert "Wrong-Pass-77" not in res.output


def test_loopback_blocked_without_allowed_networks_and_nothing_sent(app, runner, crm):
    app.config["CRM_ALLOWED_NETWORKS"] = ""
    before = traffic(crm)
    res = runner.invoke(args=args(crm, "--json", password=crm.password))
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["error"]["code"] == "blocked_url" and "loopback" in data["error"]["message"]
    assert [(s["name"], s["ok"]) for s in data["steps"]] == [("URL check", False)]
    assert traffic(crm) == before  # the sandbox saw no request at all


def test_password_from_stdin(runner, crm):
    res = runner.invoke(args=args(crm, "--password-stdin", "--json"), input=crm.password + "\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["ok"] is True
    wrong = runner.invoke(args=args(crm, "--password-stdin", "--json"), input="Wrong-Pass-77\r\n")
    assert wrong.exit_code == 1 and json.loads(wrong.output)["error"]["code"] == "auth_failed"


def test_password_is_required(runner, crm):
    res = runner.invoke(args=args(crm))
    assert res.exit_code == 2 and "--password-stdin" in res.output


def test_human_output(runner, crm):
    res = runner.invoke(args=args(crm, password=crm.password))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split("]", 1)[0] for line in lines[:len(STEPS)]] == ["[ok  "] * len(STEPS)
    assert lines[3].startswith("[ok  ] NTLM handshake: signed in as SANDBOX\\crmadmin")
    assert "The connection works (CRM version 8.2.2.112, user " in lines[-1]
    with_error = runner.invoke(args=args(crm, password="Wrong-Pass-77"))
    assert with_error.exit_code == 1
    assert "[FAIL] NTLM handshake:" in with_error.output
    assert "What to do: Check the user name, password and Windows domain." in with_error.output
    assert with_error.output.rstrip().endswith("[auth_failed]")
    assert not with_error.output.lstrip().startswith("{")


def _flask(crm, tmp_path: Path, allowed: str, *extra: str, stdin: str) -> subprocess.CompletedProcess:
    """The real ``flask --app wsgi`` command in a subprocess, configured through the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "DATABASE_", "PORTAL_", "REDIS_"))}
    env.update({
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}",
        "PORTAL_INSTANCE_PATH": str(tmp_path / "instance"),
        "CRM_ALLOWED_NETWORKS": allowed,
    })
    flask = Path(sys.executable).with_name("flask")
    return subprocess.run(  # noqa: S603 - our own interpreter's flask, fixed arguments
        [str(flask), "--app", "wsgi", *args(crm, "--password-stdin", *extra)],
        input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False,
    )


def test_subprocess_reads_allowed_networks_from_the_environment(crm, tmp_path):
    ok = _flask(crm, tmp_path, "127.0.0.0/8,::1/128", "--json", stdin=crm.password + "\n")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    before = traffic(crm)
    blocked = _flask(crm, tmp_path, "", stdin=crm.password + "\n")
    assert blocked.returncode == 1
    assert "[FAIL] URL check:" in blocked.stdout and "[blocked_url]" in blocked.stdout
    assert traffic(crm) == before
    assert crm.password not in ok.stdout + ok.stderr + blocked.stdout + blocked.stderr


def test_online_test_from_the_command_line(app, runner, crm):
    import json

    app.config["CRM_AUTHORITY_HOST"], app.config["CRM_CA_BUNDLE"] = crm.authority_host, crm.ca_file
    args = ["crm", "test-online", "--environment-url", crm.environment_url, "--tenant-id", crm.tenant_id,
            "--client-id", crm.client_id, "--client-secret-stdin", "--json"]
    ok = runner.invoke(args=args, input=crm.client_secret + "\n")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["version"].startswith("9.2")
    bad = runner.invoke(args=args, input="not-the-secret\n")
    assert bad.exit_code == 1 and json.loads(bad.output)["error"]["code"] == "auth_failed"
    assert "not-the-secret" not in bad.output
