"""SandboxServer: run `python -m sandbox` in a subprocess for tests and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from .online import CLIENT_ID, CLIENT_SECRET, TENANT_ID

DOMAIN = "SANDBOX"
USERNAME = "crmadmin"
PASSWORD = "Sandbox-Pass-1"
SECOND_USERNAME = "crmuser2"
SECOND_PASSWORD = "Second-Pass-2"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SandboxServer:
    """Context manager around a sandbox subprocess with its own data directory and users file."""

    def __init__(
        self,
        org: str = "demo",
        seed: bool = False,
        platform_option: bool | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        """Configure; nothing starts until start() or __enter__."""
        self.org = org
        self.seed = seed
        self.platform_option = platform_option
        self.port = port or free_port()
        self.tls_port = free_port()
        self.startup_timeout = startup_timeout
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="crm-sandbox-"))
        self.users_file = self.data_dir / "users.txt"
        self.domain = DOMAIN
        self.username = USERNAME
        self.password = PASSWORD
        self.second_username = SECOND_USERNAME
        self.second_password = SECOND_PASSWORD
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    # ------------------------------------------------------------ URLs

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def org_url(self) -> str:
        """The Organization service /web URL."""
        return f"{self.base_url}/{self.org}/XRMServices/2011/Organization.svc/web"

    @property
    def odata_v2_url(self) -> str:
        """OrganizationData.svc root."""
        return f"{self.base_url}/{self.org}/XRMServices/2011/OrganizationData.svc/"

    @property
    def webapi_url(self) -> str:
        """Web API v8.2 root."""
        return f"{self.base_url}/{self.org}/api/data/v8.2/"

    @property
    def environment_url(self) -> str:
        """The online mode's environment URL (https on loopback)."""
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def authority_host(self) -> str:
        """The online mode's stand-in for https://login.microsoftonline.com."""
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> str:
        """The self-signed certificate of the online mode, to trust as a CA bundle."""
        return str(self.data_dir / "tls-cert.pem")

    tenant_id = TENANT_ID
    client_id = CLIENT_ID
    client_secret = CLIENT_SECRET

    @property
    def qualified_username(self) -> str:
        """DOMAIN\\user as NTLM clients want it."""
        return f"{self.domain}\\{self.username}"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> SandboxServer:
        """Start the subprocess and wait until the control API answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.users_file.exists():
            self.users_file.write_text(
                f"{DOMAIN}:{USERNAME}:{PASSWORD}\n{DOMAIN}:{SECOND_USERNAME}:{SECOND_PASSWORD}\n", encoding="utf-8"
            )
        cmd = [
            sys.executable,
            "-m",
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--users-file",
            str(self.users_file),
            "--org",
            self.org,
            "--tls-port",
            str(self.tls_port),
        ]
        if self.seed:
            cmd.append("--seed")
        if self.platform_option is not None:
            cmd.append("--platform-option" if self.platform_option else "--no-platform-option")
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self._log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
            cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                log = (self.data_dir / "server.log").read_text(errors="replace")
                raise RuntimeError(f"sandbox exited with {self.proc.returncode}:\n{log}")
            try:
                self._control("GET", "health")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(delay)
                delay = min(delay * 1.5, 0.2)
        self.stop()
        raise RuntimeError("sandbox did not answer in time")

    def stop(self) -> None:
        """Terminate the subprocess (data directory kept unless it was a temporary one)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self._close_log()

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and remove a temporary data directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SandboxServer:
        """Start."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop and clean up."""
        self.cleanup()

    # ------------------------------------------------------------ control API

    def _control(self, method: str, path: str, payload: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}/_sandbox/{path}"
        if query:
            url += "?" + urlencode(query)
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            err.close()
            raise RuntimeError(f"control API {path}: {err.code} {body}") from None

    def set_faults(self, **kw: Any) -> dict[str, Any]:
        """Merge fault settings (latency_ms, busy_ratio, busy_every_nth, every_nth, seed, …)."""
        return self._control("POST", "faults", kw)

    def clear_faults(self) -> dict[str, Any]:
        """Remove every injected fault."""
        current = self._control("GET", "faults")
        blank = {
            k: (
                []
                if isinstance(v, list)
                else (False if isinstance(v, bool) else (None if v is None or isinstance(v, str) else 0))
            )
            for k, v in current.items()
        }
        blank["seed"] = None
        return self._control("POST", "faults", blank)

    def faults(self) -> dict[str, Any]:
        """Current fault settings."""
        return self._control("GET", "faults")

    def reset(self, seed: bool = False, platform_option: bool | None = None) -> dict[str, Any]:
        """Wipe data, faults and statistics; optionally reseed."""
        return self._control("POST", "reset", {"seed": seed, "platform_option": platform_option})

    def stats(self) -> dict[str, Any]:
        """Request counts, NTLM handshakes, records per entity."""
        return self._control("GET", "stats")

    def records(self, entity: str, **filters: Any) -> list[dict[str, Any]]:
        """Stored records of an entity, filtered by attribute equality (email= means emailaddress1)."""
        return self._control("GET", f"records/{entity}", query=filters or None)["records"]

    def insert_records(self, entity: str, records: list[dict[str, Any]]) -> list[str]:
        """Bulk insert loosely typed JSON records; returns their ids."""
        return self._control("POST", f"records/{entity}", records)["ids"]

    def register_app(self, client_id: str, **kw: Any) -> dict[str, Any]:
        """Add an app registration to the online mode (tenant_id, client_secret, certificate_pem, app_user)."""
        return self._control("POST", "apps", {"client_id": client_id, **kw})

    def set_platform_option(self, present: bool) -> int | None:
        """Add or remove the 'ZiftONE' lead source option; returns its value when present."""
        return self._control("POST", "platform-option", {"present": present})["value"]
