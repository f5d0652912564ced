"""Control API and persistence: records survive a restart, reset wipes, the platform option toggles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests
from requests_ntlm import HttpNtlmAuth

from sandbox.testing import SandboxServer, free_port

from .soapclient import Soap, new_email, s


def test_data_survives_restart_and_reset_wipes() -> None:
    with SandboxServer(platform_option=False) as server:
        email = new_email("persist")
        soap = Soap(server.org_url, server.qualified_username, server.password)
        try:
            rid = soap.create("lead", {"lastname": s("Durable"), "emailaddress1": s(email)})
            user_id = soap.who_am_i()["UserId"]
        finally:
            soap.close()
        assert server.set_platform_option(True) == 100_000_000
        server.restart()
        assert [r["leadid"] for r in server.records("lead", email=email)] == [rid]
        soap = Soap(server.org_url, server.qualified_username, server.password)
        try:
            assert soap.who_am_i()["UserId"] == user_id
            assert soap.retrieve("lead", rid)["lastname"] == "Durable"
        finally:
            soap.close()
        assert server.set_platform_option(True) == 100_000_000
        assert server.set_platform_option(False) is None
        server.reset(seed=True)
        assert server.records("lead", email=email) == []
        counts = server.stats()["records"]
        assert counts["lead"] == 36 and counts["list"] == 4
        # Seeding twice changes nothing.
        server.restart()
        assert server.stats()["records"]["lead"] == 36


def test_records_and_bulk_insert(sandbox: SandboxServer) -> None:
    email = new_email("bulk")
    ids = sandbox.insert_records("lead", [{"lastname": "Bulk", "emailaddress1": email, "leadsourcecode": 4}])
    rows = sandbox.records("lead", email=email)
    assert [r["leadid"] for r in rows] == ids
    assert rows[0]["statecode"] == 0 and rows[0]["statuscode"] == 1


def test_cli_creates_users_file_and_prints_urls(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SANDBOX_PORT": str(port), "SANDBOX_DATA_DIR": str(tmp_path / "data")}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        lines = [proc.stdout.readline().decode() for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert "SANDBOX\\crmadmin / Sandbox-Pass-1" in lines[0]
    assert f"http://127.0.0.1:{port}/demo/XRMServices/2011/Organization.svc/web" in lines[1]
    assert (tmp_path / "data" / "users.txt").read_text().strip() == "SANDBOX:crmadmin:Sandbox-Pass-1"


def test_odata_v2_single_record_and_errors(sandbox: SandboxServer) -> None:
    email = new_email("v2")
    rid = sandbox.insert_records("lead", [{"firstname": "Vee", "lastname": "Two", "emailaddress1": email}])[0]
    with requests.Session() as session:
        session.auth = HttpNtlmAuth(sandbox.qualified_username, sandbox.password)
        url = sandbox.odata_v2_url + f"LeadSet(guid'{rid}')?$select=FirstName,EMailAddress1,CreatedOn,StateCode"
        d = session.get(url, headers={"Accept": "application/json"}, timeout=10).json()["d"]
        assert d["FirstName"] == "Vee" and d["EMailAddress1"] == email
        assert d["StateCode"]["Value"] == 0
        assert d["CreatedOn"].startswith("/Date(")
        found = session.get(
            sandbox.odata_v2_url + "LeadSet",
            params={"$filter": f"EMailAddress1 eq '{email}'", "$select": "LeadId"},
            timeout=10,
        )
        assert [r["LeadId"] for r in found.json()["d"]["results"]] == [rid]
        missing = session.get(sandbox.odata_v2_url + "NoSuchSet", timeout=10)
        assert missing.status_code == 404
        assert missing.json()["error"]["message"]["value"]
