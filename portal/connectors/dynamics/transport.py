"""HTTP transport to a Dynamics server: one NTLM session, timeouts, TLS, size cap and the URL guard."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests_ntlm import HttpNtlmAuth
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import (
    AuthFailedError,
    BlockedUrlError,
    ClaimsAuthError,
    DynamicsError,
    NotDynamicsError,
    RequestTimeoutError,
    ResponseTooLargeError,
    TlsError,
    UnreachableError,
)
from .urlguard import Endpoint, IPNetwork, check_address, check_url

log = logging.getLogger("portal.connectors.dynamics")

DEFAULT_MAX_RESPONSE_BYTES = 50 * 1024 * 1024
DEFAULT_USER_AGENT = "crm-portal-dynamics-connector/1.0"
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True, kw_only=True)
class ConnectionConfig:
    """Everything needed to reach one customer's Dynamics CRM; the password never shows in repr."""

    org_url: str
    username: str
    password: str = field(repr=False)
    domain: str = ""
    organization: str = ""
    odata_url: str | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # Every exchange ends within total_timeout, however the server drips its answer (a per-read timeout alone
    # never ends a server that sends one byte every few seconds).
    total_timeout: float = 120.0
    # An ExecuteMultiple batch may take long (plug-ins, workflows): its deadline grows with its size.
    batch_base_seconds: float = 60.0
    batch_record_seconds: float = 0.3
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_endpoints: tuple[Endpoint, ...] = ()
    user_agent: str = DEFAULT_USER_AGENT

    def batch_deadline(self, size: int) -> float:
        """Seconds allowed for an ExecuteMultiple batch of `size` requests."""
        return self.batch_base_seconds + self.batch_record_seconds * max(0, size)

    @property
    def ntlm_user(self) -> str:
        """The user name as NTLM wants it: DOMAIN\\user unless the user name already carries a domain."""
        if "\\" in self.username or "@" in self.username or not self.domain:
            return self.username
        return f"{self.domain}\\{self.username}"


@dataclass
class HttpResponse:
    """A fully read HTTP response (the body is capped in size)."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str
    elapsed: float

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower case."""
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    def text(self) -> str:
        """The body decoded as UTF-8 (replacing undecodable bytes)."""
        return self.content.decode("utf-8", errors="replace")


def parse_retry_after(value: str | None, default: float = 5.0) -> float:
    """Seconds to wait from a Retry-After header: seconds (possibly fractional) or hh:mm:ss."""
    if not value:
        return default
    text = value.strip()
    try:
        if ":" in text:
            h, m, s = text.split(":")
            seconds = int(h) * 3600 + int(m) * 60 + float(s)
        else:
            seconds = float(text)
    except ValueError:
        return default
    return max(0.0, min(MAX_RETRY_AFTER, seconds))


def parse_dop_hint(value: str | None) -> int | None:
    """The recommended degree of parallelism of an x-ms-dop-hint header (Dynamics 365 online), or None."""
    text = (value or "").strip()
    return int(text) if text.isdigit() and 0 < int(text) < 10_000 else None


# ---------------------------------------------------------------- secrets in logs

_SECRET_RE = re.compile(
    r"(?i)(authorization|proxy-authorization|www-authenticate|cookie|set-cookie|password"
    # pyspnego logs each NTLM/SPNEGO token it sends or receives ("NTLM step output: TlRM...") at DEBUG.
    r"|step input|step output|tsrequest input|tsrequest output)"
    r"(\s*[:=]\s*)([^\r\n,;&]+)"
)
_NTLM_TOKEN_RE = re.compile(r"(?i)\b(NTLM|Negotiate|Bearer|Basic)\s+[A-Za-z0-9+/=._-]{8,}")
# A bare NTLM message: base64 of "NTLMSSP\0". The AUTHENTICATE one carries a crackable password response.
_BARE_NTLM_RE = re.compile(r"TlRMTVNTUA[A-Za-z0-9+/=]*")


def redact(text: str) -> str:
    """Blank out authorization headers, NTLM tokens, cookies and passwords in a text."""
    text = _SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    text = _NTLM_TOKEN_RE.sub(lambda m: f"{m.group(1)} [redacted]", text)
    return _BARE_NTLM_RE.sub("[redacted]", text)


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message through a redact function (``redact`` by default)."""

    def __init__(self, redact_fn: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.redact_fn = redact_fn or redact

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with secrets removed."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not stop logging
            return True
        cleaned = self.redact_fn(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


log.addFilter(RedactingFilter())
# Logger filters apply only to records made on that very logger, so each of pyspnego's gets its own.
for _name in ("spnego._ntlm", "spnego._negotiate", "spnego._gss", "spnego._sspi", "spnego._credssp"):
    logging.getLogger(_name).addFilter(RedactingFilter())


def _loggable_url(url: str) -> str:
    # The query string can hold e-mail addresses (OData filters); log the path only.
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# ---------------------------------------------------------------- guarded connections


def _peer_ip(sock: socket.socket) -> str:
    return str(sock.getpeername()[0]).split("%", 1)[0]


class _InUse:
    """The HTTP connection each thread is using right now, so that a watchdog can cut it at its deadline."""

    def __init__(self) -> None:
        self._by_thread: dict[int, Any] = {}

    def set(self, conn: Any) -> None:
        """Remember the calling thread's connection."""
        self._by_thread[threading.get_ident()] = conn

    def forget(self) -> None:
        """The calling thread is done with its connection."""
        self._by_thread.pop(threading.get_ident(), None)

    def cut(self, ident: int) -> None:
        """Shut the socket of a thread's connection down: its blocked read returns at once."""
        sock = getattr(self._by_thread.get(ident), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_IN_USE = _InUse()


def _make_pool_classes(allowed: Sequence[IPNetwork],
                       endpoints: Sequence[Endpoint] = ()) -> dict[str, type[HTTPConnectionPool]]:
    """Pool classes whose connections check the address they actually connected to (DNS rebinding)."""

    class _PeerCheckMixin:
        host: str

        def request(self, *args: Any, **kwargs: Any) -> Any:
            _IN_USE.set(self)
            return super().request(*args, **kwargs)  # type: ignore[misc]

        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()  # type: ignore[misc]
            try:
                check_address(_peer_ip(sock), allowed, self.host, port=sock.getpeername()[1],
                              allowed_endpoints=endpoints)
            except BlockedUrlError:
                sock.close()
                raise
            return sock

    class GuardedHTTPConnection(_PeerCheckMixin, HTTPConnection):
        pass

    class GuardedHTTPSConnection(_PeerCheckMixin, HTTPSConnection):
        pass

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose new connections are refused when the peer address is not public or allowed."""

    def __init__(self, allowed_networks: Sequence[IPNetwork] = (), allowed_endpoints: Sequence[Endpoint] = (),
                 **kwargs: Any) -> None:
        self._pool_classes = _make_pool_classes(tuple(allowed_networks), tuple(allowed_endpoints))
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Create the pool manager, then swap in the guarded pool classes."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)


# ---------------------------------------------------------------- the transport


class Gate(Protocol):
    """Who may send to a CRM now: each exchange of a transport with a gate is sent while holding a turn."""

    def hold(self) -> AbstractContextManager[None]:
        """Wait for a turn (or raise a DynamicsError saying why there is none) and keep it for the exchange."""
        ...

    def busy(self, retry_after: float = 0.0) -> None:
        """The CRM asked us to slow down (HTTP 429, for ``retry_after`` seconds): fewer requests at once."""
        ...

    def parallelism(self, hint: int) -> None:
        """The CRM recommends at most ``hint`` requests in its hands at once (x-ms-dop-hint)."""
        ...


def _find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        nxt = current.__cause__ or current.__context__
        if nxt is None and current.args and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        current = nxt
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException) and isinstance(reason, kind):
            return reason
    return None


def map_request_exception(exc: Exception, url: str) -> DynamicsError:
    """Turn a requests/urllib3/socket exception into the matching typed error."""
    host = urlsplit(url).hostname or url
    if isinstance(exc, requests.exceptions.SSLError) or _find_cause(exc, ssl.SSLError):
        return TlsError(f"The TLS connection to {host} failed.", detail=str(exc)[:500])
    if isinstance(exc, requests.exceptions.Timeout) or _find_cause(exc, TimeoutError):
        return RequestTimeoutError(f"{host} did not answer in time.", detail=str(exc)[:500])
    if _find_cause(exc, socket.gaierror) or "NameResolutionError" in repr(exc) or "Name or service" in str(exc):
        return UnreachableError(f"The host name {host} could not be resolved.", detail=str(exc)[:500])
    if _find_cause(exc, ConnectionRefusedError) or "Connection refused" in str(exc):
        return UnreachableError(f"{host} refused the connection.", detail=str(exc)[:500])
    if isinstance(exc, requests.exceptions.ConnectionError | OSError):
        error = UnreachableError(f"The connection to {host} failed.", detail=str(exc)[:500])
        # The server closed a connection we had kept alive (IIS's idle timeout), or dropped it mid-answer.
        error.connection_lost = bool(_find_cause(exc, ConnectionResetError) or _find_cause(exc, BrokenPipeError)
                                     or "Connection aborted" in str(exc) or "RemoteDisconnected" in str(exc))
        return error
    return DynamicsError(f"The request to {host} failed: {type(exc).__name__}.", detail=str(exc)[:500])


class Transport:
    """One requests.Session per credential: NTLM, keep-alive, timeouts, TLS, size cap and URL guard."""

    # When set, every exchange holds a turn of the CRM (the portal's in-flight slots) and reports 429s to it.
    gate: Gate | None = None

    def __init__(self, config: ConnectionConfig, session: requests.Session | None = None) -> None:
        self.config = config
        # A moment (time.monotonic) after which no exchange may run: a connection test's overall budget.
        self.until: float | None = None
        self.requests_sent = 0
        self.handshakes = 0
        self.authenticated = False
        self.session = session or requests.Session()
        # Environment proxies and .netrc would change the peer we connect to and the credentials we send.
        self.session.trust_env = False
        self.session.auth = HttpNtlmAuth(config.ntlm_user, config.password)
        self.session.verify = (config.ca_bundle or True) if config.verify_tls else False
        self.session.headers.update({"User-Agent": config.user_agent, "Connection": "Keep-Alive"})
        adapter = GuardedAdapter(config.allowed_networks, config.allowed_endpoints, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        deadline: float | None = None,
    ) -> HttpResponse:
        """Send one logical request (NTLM legs included) and return the capped, fully read response.

        The whole exchange ends within `deadline` seconds (default: the config's total_timeout), also when the
        server answers one byte at a time: a watchdog then cuts the connection. With a ``gate`` the exchange
        waits for a turn first, and holds it until the answer is read.
        """
        check_url(url, self.config.allowed_networks, self.config.allowed_endpoints)
        if self.gate is None:
            return self._exchange(method, url, headers, data, deadline)
        with self.gate.hold():
            result = self._exchange(method, url, headers, data, deadline)
        if result.status == 429:
            self.throttled(parse_retry_after(result.headers.get("Retry-After")))
        hint = parse_dop_hint(result.headers.get("x-ms-dop-hint"))
        if hint is not None:
            self.gate.parallelism(hint)
        return result

    def throttled(self, retry_after: float) -> None:
        """The CRM refused work for its limits (a 429, or one inside a batch's answer): the gate, if any, hears it."""
        if self.gate is not None:
            self.gate.busy(retry_after)

    def _exchange(self, method: str, url: str, headers: Mapping[str, str] | None, data: bytes | None,
                  deadline: float | None) -> HttpResponse:
        started = time.monotonic()
        budget = self.config.total_timeout if deadline is None else deadline
        if self.until is not None:
            budget = min(budget, self.until - started)
        host = urlsplit(url).hostname or url
        if budget <= 0:
            raise RequestTimeoutError(f"The time allowed for talking to {host} is over.")
        self.requests_sent += 1
        read_timeout = max(self.config.read_timeout, budget) if deadline is not None else self.config.read_timeout
        cut = threading.Event()
        ident = threading.get_ident()

        def on_deadline() -> None:
            cut.set()
            _IN_USE.cut(ident)

        watchdog = threading.Timer(budget, on_deadline)
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                resp = self.session.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    data=data,
                    timeout=(self.config.connect_timeout, min(read_timeout, budget + 1)),
                    allow_redirects=False,
                    stream=True,
                )
            except DynamicsError:
                raise
            except PermissionError as exc:
                # requests-ntlm raises this when the server's 401 carries no NTLM challenge.
                raise AuthFailedError(
                    "The CRM did not complete the Windows (NTLM) sign-in.", detail=str(exc)
                ) from exc
            except (requests.exceptions.RequestException, OSError) as exc:
                raise map_request_exception(exc, url) from exc
            try:
                content = self._read_capped(resp, url)
            finally:
                resp.close()
        except DynamicsError as exc:
            if cut.is_set() and not isinstance(exc, RequestTimeoutError):
                raise RequestTimeoutError(
                    f"{host} did not finish answering within {budget:.0f} s.", detail=exc.message
                ) from exc
            raise
        finally:
            watchdog.cancel()
            _IN_USE.forget()
        if cut.is_set():
            # Cut mid-answer, http.client may take what it had for a whole (empty) answer: it is not one.
            raise RequestTimeoutError(f"{host} did not finish answering within {budget:.0f} s.")
        elapsed = time.monotonic() - started
        if any(r.status_code == 401 for r in resp.history):
            self.handshakes += 1
        log.info("%s %s -> %s in %.3fs", method, _loggable_url(url), resp.status_code, elapsed)
        result = HttpResponse(resp.status_code, resp.headers, content, url, elapsed)
        self._check_auth_and_redirects(result, resp)
        self.authenticated = True
        return result

    def _read_capped(self, resp: requests.Response, url: str) -> bytes:
        cap = self.config.max_response_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise ResponseTooLargeError(
                f"The CRM announced a {int(declared)}-byte response; the limit is {cap} bytes.",
                detail=_loggable_url(url),
            )
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in resp.iter_content(chunk_size=64 * 1024):
                total += len(chunk)
                if total > cap:
                    raise ResponseTooLargeError(
                        f"The CRM response exceeded the limit of {cap} bytes.", detail=_loggable_url(url)
                    )
                chunks.append(chunk)
        except (requests.exceptions.RequestException, OSError) as exc:
            raise map_request_exception(exc, url) from exc
        return b"".join(chunks)

    def _check_auth_and_redirects(self, result: HttpResponse, resp: requests.Response) -> None:
        status = result.status
        if 300 <= status < 400:
            location = result.headers.get("Location", "")
            if "/adfs/" in location.lower():
                raise ClaimsAuthError(detail=location[:300])
            target = urljoin(result.url, location)
            raise NotDynamicsError(
                f"The CRM URL redirects (HTTP {status}) to {_loggable_url(target)}; the portal does not "
                "follow redirects.",
                detail=location[:300],
            )
        if status == 401:
            offered = ", ".join(
                sorted({h.split(" ", 1)[0] for h in _all_headers(resp, "WWW-Authenticate") if h})
            )
            if offered and not re.search(r"(?i)\b(ntlm|negotiate)\b", offered):
                raise AuthFailedError(
                    f"The CRM does not offer Windows (NTLM) sign-in (it offers: {offered}).",
                    action=ClaimsAuthError.default_action,
                    detail=offered,
                )
            raise AuthFailedError(detail=offered or None)

    def warm_up(self) -> None:
        """Authenticate the pooled connection with a cheap GET, so the NTLM legs do not resend a big body."""
        # Any answer after the handshake (even a redirect elsewhere) proves the connection is authenticated.
        with contextlib.suppress(NotDynamicsError):
            self.request("GET", self.config.org_url, headers={"Accept": "text/xml, */*"})


def _all_headers(resp: requests.Response, name: str) -> list[str]:
    raw = getattr(resp, "raw", None)
    headers = getattr(raw, "headers", None)
    if headers is not None and hasattr(headers, "getlist"):
        return [str(v) for v in headers.getlist(name)]
    value = resp.headers.get(name)
    return [part.strip() for part in value.split(",")] if value else []
