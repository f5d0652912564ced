"""Connection-oriented NTLM acceptor (pyspnego) for WSGI under waitress.

NTLM authenticates the TCP connection, not the request. The state is keyed by waitress's channel
object, reached through the bound method ``environ["waitress.client_disconnected"]``; a weak
reference lets it vanish with the connection. Other servers fall back to (REMOTE_ADDR, REMOTE_PORT),
which is unique per live connection but can be reused after a close.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spnego
import spnego.exceptions

NTLM_SIGNATURE = b"NTLMSSP\x00"


@dataclass
class ConnState:
    """Handshake progress and the authenticated principal of one connection."""

    ctx: Any = None
    scheme: str = "NTLM"
    principal: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class AuthOutcome:
    """Either a principal, or the headers of a 401 answer."""

    principal: str | None
    headers: list[tuple[str, str]]
    handshake_done: bool = False
    reason: str = ""


def configure(users_file: Path) -> None:
    """Point pyspnego at the users file and refuse NTLMv1, before any context exists."""
    os.environ["NTLM_USER_FILE"] = str(users_file)
    os.environ["LM_COMPAT_LEVEL"] = "5"


class NtlmAcceptor:
    """Runs NTLM handshakes and remembers authenticated connections."""

    def __init__(self) -> None:
        """Empty connection table."""
        self._by_channel: weakref.WeakKeyDictionary[Any, ConnState] = weakref.WeakKeyDictionary()
        self._by_addr: dict[tuple[str, str], ConnState] = {}
        self._lock = threading.Lock()
        self.rejected_principals: set[str] = set()

    def rejected(self, principal: str) -> bool:
        """Whether the principal's password was declared changed (DOMAIN\\user or user)."""
        low = principal.lower()
        return low in self.rejected_principals or low.split("\\")[-1] in self.rejected_principals

    def _state(self, environ: dict[str, Any]) -> ConnState:
        probe = environ.get("waitress.client_disconnected")
        channel = getattr(probe, "__self__", None)
        with self._lock:
            if channel is not None:
                state = self._by_channel.get(channel)
                if state is None:
                    state = self._by_channel[channel] = ConnState()
                return state
            key = (environ.get("REMOTE_ADDR", ""), environ.get("REMOTE_PORT", ""))
            state = self._by_addr.get(key)
            if state is None:
                state = self._by_addr[key] = ConnState()
            return state

    @staticmethod
    def offer() -> list[tuple[str, str]]:
        """The first 401 offers both schemes, like IIS."""
        return [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]

    def authenticate(self, environ: dict[str, Any]) -> AuthOutcome:
        """Advance the handshake for this request's connection."""
        state = self._state(environ)
        header = environ.get("HTTP_AUTHORIZATION", "")
        with state.lock:
            if not header:
                if state.principal and not self.rejected(state.principal):
                    return AuthOutcome(state.principal, [])
                return AuthOutcome(None, self.offer(), reason="no credentials")
            scheme, _, blob = header.partition(" ")
            scheme = scheme.strip()
            if scheme.lower() not in ("ntlm", "negotiate"):
                return AuthOutcome(None, self.offer(), reason=f"scheme {scheme} not accepted")
            try:
                token = base64.b64decode(blob.strip(), validate=True)
            except (binascii.Error, ValueError):
                return AuthOutcome(None, self.offer(), reason="bad base64")
            raw_ntlm = token.startswith(NTLM_SIGNATURE)
            msg_type = int.from_bytes(token[8:12], "little") if raw_ntlm and len(token) >= 12 else 0
            if msg_type == 1 or (not raw_ntlm and state.ctx is None):
                # A new negotiate message (re)starts the handshake on this connection.
                state.principal = None
                state.scheme = "NTLM" if scheme.lower() == "ntlm" else "Negotiate"
                state.ctx = spnego.server(protocol="ntlm" if raw_ntlm else "negotiate")
                try:
                    challenge = state.ctx.step(token)
                except spnego.exceptions.SpnegoError as exc:
                    state.ctx = None
                    return AuthOutcome(None, self.offer(), reason=f"negotiate rejected: {exc}")
                if challenge is None:
                    state.ctx = None
                    return AuthOutcome(None, self.offer(), reason="no challenge")
                value = f"{state.scheme} {base64.b64encode(challenge).decode()}"
                return AuthOutcome(None, [("WWW-Authenticate", value)], reason="challenge")
            ctx = state.ctx
            state.ctx = None
            if ctx is None:
                return AuthOutcome(None, self.offer(), reason="authenticate without negotiate")
            try:
                ctx.step(token)
            except spnego.exceptions.SpnegoError as exc:
                return AuthOutcome(None, self.offer(), reason=f"logon denied: {exc}")
            if not ctx.complete:
                return AuthOutcome(None, self.offer(), reason="handshake incomplete")
            principal = str(ctx.client_principal or "")
            if self.rejected(principal):
                return AuthOutcome(None, self.offer(), reason="password changed")
            state.principal = principal
            return AuthOutcome(principal, [], handshake_done=True)


def ensure_users_file(path: Path) -> tuple[Path, str | None]:
    """Create a users file with the default account when missing; return (path, created line)."""
    if path.exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    line = "SANDBOX:crmadmin:Sandbox-Pass-1"
    path.write_text(line + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path, line


def read_users(path: Path) -> list[tuple[str, str]]:
    """(DOMAIN, USER) pairs from a users file."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3 and not line.startswith("#"):
            out.append((parts[0], parts[1]))
    return out
