"""A loopback TCP proxy in front of the sandbox that holds every request carrying a marker: a CRM hung mid-write."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class HoldingProxy:
    """Forwards bytes both ways; once a request carries ``marker``, that connection gets nothing more, ever."""

    def __init__(self, target_url: str, marker: bytes = b"ExecuteMultiple"):
        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port)
        self.marker = marker
        self.held = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """The same URL, through this proxy."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def close(self) -> None:
        """Stop listening and drop every connection (held requests end with a closed connection)."""
        self._stop.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        tail, holding = b"", False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                if watch and not holding and self.marker in tail + data:
                    holding = True
                    self.held += 1
                tail = (tail + data)[-len(self.marker):]
                if not holding:
                    dst.sendall(data)
        except OSError:
            return
