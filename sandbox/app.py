"""The sandbox WSGI application: routing, NTLM, fault injection, statistics and the control API."""

from __future__ import annotations

import contextlib
import json
import random
import select
import socket
import threading
import time
import weakref
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import schema as s
from .crm import Crm, FaultSettings, User
from .ntlm import NtlmAcceptor
from .odata import ODataError, ODataService, query_args, v2_error, webapi_error
from .organization import Organization
from .query import Query
from .soap import envelope, esc, fault_envelope
from .store import Store
from .values import E_BAD_AUTH_TICKET, E_SERVER_BUSY, CrmFault

ACTION_PREFIX = "http://schemas.microsoft.com/xrm/2011/Contracts/Services/IOrganizationService/"
NOT_FOUND_HTML = (
    b"<!DOCTYPE html><html><head><title>404 - File or directory not found.</title></head>"
    b"<body><h2>404 - File or directory not found.</h2>"
    b"<p>The resource you are looking for might have been removed.</p></body></html>"
)
UNAUTHORIZED_HTML = (
    b"<!DOCTYPE html><html><head><title>401 - Unauthorized</title></head><body><h2>401 - Unauthorized: "
    b"Access is denied due to invalid credentials.</h2></body></html>"
)
WSDL = """<?xml version="1.0" encoding="utf-8"?>
<wsdl:definitions name="OrganizationService" targetNamespace="http://schemas.microsoft.com/xrm/2011/Contracts/Services"
 xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:wsp="http://schemas.xmlsoap.org/ws/2004/09/policy"
 xmlns:ms-xrm="http://schemas.microsoft.com/xrm/2011/Contracts/Services">
 <wsp:Policy wsu:Id="CustomBinding_IOrganizationService_policy"
   xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">
  <wsp:ExactlyOne><wsp:All>
   <ms-xrm:AuthenticationPolicy><ms-xrm:Authentication>ActiveDirectory</ms-xrm:Authentication></ms-xrm:AuthenticationPolicy>
  </wsp:All></wsp:ExactlyOne>
 </wsp:Policy>
 <wsdl:service name="OrganizationService"><wsdl:port name="CustomBinding_IOrganizationService"
   binding="ms-xrm:CustomBinding_IOrganizationService"/></wsdl:service>
</wsdl:definitions>
"""

Response = tuple[str, list[tuple[str, str]], bytes]


class Injector:
    """Decides deterministically (every_nth) or pseudo-randomly (ratio, seed) which requests misbehave."""

    def __init__(self) -> None:
        """No faults."""
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.rng = random.Random()

    def reset(self, seed: int | None) -> None:
        """Restart counters and the random sequence."""
        with self.lock:
            self.counters.clear()
            self.rng = random.Random(seed)

    def hit(self, name: str, ratio: float, every_nth: int) -> bool:
        """Whether this request gets the named fault."""
        if not ratio and not every_nth:
            return False
        with self.lock:
            self.counters[name] += 1
            if every_nth:
                return self.counters[name] % every_nth == 0
            return self.rng.random() < ratio


class SandboxApp:
    """Routes /{org}/XRMServices/…, /{org}/api/data/v8.2/… and /_sandbox/…."""

    def __init__(
        self, data_dir: Path, org: str, users_file: Path, platform_option: bool | None = None, seed: bool = False
    ) -> None:
        """Open the store, create the organization, apply start-up options."""
        self.data_dir = data_dir
        self.org = org
        self.users_file = users_file
        self.store = Store(data_dir / "sandbox.sqlite3")
        self.crm = Crm(self.store, org)
        self.organization = Organization(self.crm)
        self.odata = ODataService(self.crm)
        self.ntlm = NtlmAcceptor()
        self.injector = Injector()
        self.stats: Counter[str] = Counter()
        self.stats_lock = threading.Lock()
        # Authenticated answers given on each open connection (waitress channel), to tell a kept-alive one.
        self.served: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.organization.injector = self.injector
        from .online import Identity

        self.identity = Identity()
        self.identity.reset()
        self._add_app_users()
        if seed:
            from .seed import seed as run_seed

            run_seed(self.crm, users_file)
        if platform_option is not None:
            self.crm.set_platform_option(platform_option)

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """WSGI entry point."""
        status, headers, body = self.dispatch(environ)
        if status != "DROP" and self._drips(environ):
            self._drip(environ, status, headers, body)
            status = "DROP"
        if status == "DROP":
            self._drop(environ)
            start_response("500 Internal Server Error", [("Content-Length", "0"), ("Connection", "close")])
            return [b""]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        channel = _channel(environ)
        if channel is not None and environ.get("sandbox.user"):
            self.served[channel] = self.served.get(channel, 0) + 1
        return [body]

    @staticmethod
    def _drop(environ: dict[str, Any]) -> None:
        """Close the client's socket without an answer (waitress channel reached via its bound method)."""
        sock = getattr(_channel(environ), "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _drips(self, environ: dict[str, Any]) -> bool:
        return bool(self.crm.faults.drip_ms and environ.get("sandbox.user"))

    def _drip(self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Send the whole answer one byte at a time, straight to the socket, until done or the client leaves."""
        sock = getattr(_channel(environ), "socket", None)
        if sock is None:
            return
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        data = (head + f"Content-Length: {len(body)}\r\nServer: Microsoft-IIS/8.5\r\n\r\n").encode() + body
        pause = self.crm.faults.drip_ms / 1000
        self.count("fault:drip")
        for i in range(len(data)):
            try:
                sock.sendall(data[i:i + 1])
            except OSError:
                return
            if _client_gone(sock, pause):
                return

    def _hang(self, environ: dict[str, Any]) -> None:
        """Hold the request without an answer until the client gives up (or hang_seconds pass)."""
        self.count("fault:hang")
        sock = getattr(_channel(environ), "socket", None)
        limit = self.crm.faults.hang_seconds or 600.0
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if sock is None:
                time.sleep(min(0.1, deadline - time.monotonic()))
            elif _client_gone(sock, min(0.1, max(0.0, deadline - time.monotonic()))):
                return

    def count(self, key: str) -> None:
        """Increment a statistics counter."""
        with self.stats_lock:
            self.stats[key] += 1

    def dispatch(self, environ: dict[str, Any]) -> Response:
        """Pick the handler for a path."""
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith("/_sandbox/"):
            return self.control(method, path[len("/_sandbox/") :], environ)
        parts = path.split("/", 2)
        if len(parts) < 3 or parts[1].lower() != self.org.lower():
            return _html(404, NOT_FOUND_HTML)
        rest = parts[2]
        low = rest.lower()
        if low in ("xrmservices/2011/organization.svc/web", "xrmservices/2011/organization.svc"):
            kind = "soap" if low.endswith("/web") else "wsdl"
        elif low.startswith("xrmservices/2011/organizationdata.svc"):
            kind = "odata2"
        elif low.startswith("api/data/v8.2"):
            kind = "webapi"
        else:
            return _html(404, NOT_FOUND_HTML)
        self.count(f"http:{kind}")
        faults = self.crm.faults
        if faults.claims_mode:
            self.count("claims_redirect")
            host = environ.get("HTTP_HOST", "localhost")
            location = f"http://{host}/adfs/ls/?wa=wsignin1.0&wtrealm=http%3a%2f%2f{host}%2f&wctx=rm%3d1"
            return "302 Found", [("Location", location), ("Content-Type", "text/html")], b""
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        auth = self.ntlm.authenticate(environ)
        if auth.principal is None:
            self.count("ntlm:401")
            if auth.reason.startswith(("logon denied", "password changed")):
                self.count("ntlm:failed")
            return "401 Unauthorized", [("Content-Type", "text/html"), *auth.headers], UNAUTHORIZED_HTML
        if auth.handshake_done:
            self.count("ntlm:handshakes")
        user = self.crm.user_for(auth.principal)
        environ["sandbox.user"] = user.id
        channel = _channel(environ)
        if (channel is not None and self.served.get(channel)
                and self.injector.hit("stale", faults.stale_connection_ratio, faults.stale_connection_every_nth)):
            # IIS closed this kept-alive connection just as the client sent its next request on it.
            self.count("fault:stale_connection")
            return "DROP", [], b""
        if faults.bad_auth_ticket:
            self.count("fault:bad_auth_ticket")
            fault = CrmFault(E_BAD_AUTH_TICKET, "The ticket specified for authentication is invalid.")
            return "500 Internal Server Error", [("Content-Type", "text/xml; charset=utf-8")], fault_envelope(fault)
        if self.injector.hit("drop", faults.drop_ratio, faults.drop_every_nth):
            self.count("fault:drop")
            return "DROP", [], b""
        if self.injector.hit("http500", faults.http500_ratio, faults.http500_every_nth):
            self.count("fault:http500")
            return _html(500, b"<html><body><h1>500 - Internal server error.</h1></body></html>")
        busy = self.injector.hit("busy", faults.busy_ratio, faults.busy_every_nth)
        if busy:
            self.count("fault:busy")
        if kind == "soap":
            environ["sandbox.body"] = _read_body(environ)  # read once: what it asks decides some faults
        hang = False
        if not (faults.hang_writes_only and not _is_write(environ)) and not (
                faults.hang_limit and self.stats.get("fault:hang", 0) >= faults.hang_limit):
            hang = self.injector.hit("hang", faults.hang_ratio, faults.hang_every_nth)
        if kind == "soap":
            answer = self.soap(method, environ, user, busy)
            if hang:
                # The work is done, but the answer is held until the client gives up: it never arrives.
                self._hang(environ)
                return "DROP", [], b""
            return answer
        if hang:
            self._hang(environ)
            return "DROP", [], b""
        if kind == "wsdl":
            if method != "GET":
                return _html(405, b"Method not allowed")
            return "200 OK", [("Content-Type", "text/xml; charset=utf-8")], WSDL.encode()
        if busy:
            err = ODataError(503, "Server Busy", E_SERVER_BUSY)
            body = v2_error(err) if kind == "odata2" else webapi_error(err)
            return "503 Service Unavailable", [("Content-Type", "application/json; charset=utf-8")], body
        return self.rest(kind, method, rest, environ, user)

    # ------------------------------------------------------------ SOAP

    def soap(self, method: str, environ: dict[str, Any], user: User, busy: bool) -> Response:
        """POST to Organization.svc/web."""
        if method != "POST":
            return _html(405, b"<html><body>Method not allowed.</body></html>")
        ctype = environ.get("CONTENT_TYPE", "")
        if not ctype.lower().startswith("text/xml"):
            # WCF's basicHttpBinding answers 415 to SOAP 1.2 (application/soap+xml) and other types.
            msg = (
                f"Cannot process the message because the content type '{ctype}' was not the expected "
                "type 'text/xml; charset=utf-8'."
            )
            return "415 Unsupported Media Type", [("Content-Type", "text/plain")], msg.encode()
        action = environ.get("HTTP_SOAPACTION", "").strip().strip('"')
        body = environ["sandbox.body"] if "sandbox.body" in environ else _read_body(environ)
        op = ""
        try:
            if not action:
                raise CrmFault(-2147220989, "The SOAPAction header is required.")
            if not action.startswith(ACTION_PREFIX):
                raise CrmFault(-2147220989, f"The SOAP action '{action}' is not recognized.")
            op = action[len(ACTION_PREFIX) :]
            if busy:
                raise CrmFault(E_SERVER_BUSY, "Server Busy")
            label, answer = self.organization.handle(op, body, user)
            self.count(f"op:{label}")
            faults = self.crm.faults
            if label in WRITES and self.injector.hit("lose_answer", faults.lose_answer_ratio,
                                                     faults.lose_answer_every_nth):
                # Written, but the answer never reaches the client (a connection dropped after the write).
                self.count("fault:lose_answer")
                return "DROP", [], b""
            return "200 OK", [("Content-Type", "text/xml; charset=utf-8")], envelope(answer)
        except CrmFault as fault:
            self.count(f"fault:{op or 'unknown'}:{fault.code}")
            return "500 Internal Server Error", [("Content-Type", "text/xml; charset=utf-8")], fault_envelope(fault)

    # ------------------------------------------------------------ OData

    def rest(self, kind: str, method: str, rest: str, environ: dict[str, Any], user: User) -> Response:
        """GET on OData v2 or the Web API."""
        host = environ.get("HTTP_HOST", "localhost")
        scheme = environ.get("wsgi.url_scheme", "http")
        args = query_args(environ.get("QUERY_STRING", ""))
        ctype = "application/json; charset=utf-8"
        if kind == "odata2":
            prefix = rest[: len("XRMServices/2011/OrganizationData.svc")]
            sub = unquote(rest[len(prefix) :])
            base = f"{scheme}://{host}/{self.org}/{prefix}"
            try:
                if method != "GET":
                    raise ODataError(405, "The sandbox serves OData v2 reads only.")
                self.count("op:odata2:" + (sub.strip("/").split("(")[0] or "service"))
                status, body = self.odata.v2(sub, args, base, user)
                return _status(status), [("Content-Type", ctype)], json.dumps(body).encode()
            except ODataError as err:
                return _status(err.status), [("Content-Type", ctype)], v2_error(err)
            except CrmFault as fault:
                return _status(400), [("Content-Type", ctype)], v2_error(ODataError(400, fault.message, fault.code))
        prefix = rest[: len("api/data/v8.2")]
        sub = unquote(rest[len(prefix) :]).lstrip("/")
        base = f"{scheme}://{host}/{self.org}/{prefix}"
        headers = {"prefer": environ.get("HTTP_PREFER", "")}
        try:
            if method != "GET":
                raise ODataError(405, "The sandbox serves Web API reads only.")
            self.count("op:webapi:" + (sub.split("(")[0] or "service"))
            status, body, extra = self.odata.webapi(sub, args, headers, base, user)
            out = [("Content-Type", "application/json; odata.metadata=minimal"), ("OData-Version", "4.0"), *extra]
            return _status(status), out, json.dumps(body).encode()
        except ODataError as err:
            return _status(err.status), [("Content-Type", ctype), ("OData-Version", "4.0")], webapi_error(err)
        except CrmFault as fault:
            err = ODataError(400, fault.message, fault.code)
            return _status(400), [("Content-Type", ctype)], webapi_error(err)

    # ------------------------------------------------------------ control API

    def control(self, method: str, path: str, environ: dict[str, Any]) -> Response:
        """JSON control API for tests and demos; loopback clients only."""
        remote = environ.get("REMOTE_ADDR", "")
        if remote not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            return _json(403, {"error": "the control API answers loopback clients only"})
        try:
            payload = json.loads(_read_body(environ) or b"{}") if method == "POST" else {}
        except json.JSONDecodeError:
            return _json(400, {"error": "body must be JSON"})
        args = query_args(environ.get("QUERY_STRING", ""))
        try:
            return self._control(method, path.strip("/"), payload, args)
        except CrmFault as fault:
            return _json(400, {"error": fault.message, "code": fault.code})
        except (TypeError, ValueError, KeyError) as exc:
            return _json(400, {"error": str(exc)})

    def _control(self, method: str, path: str, payload: Any, args: dict[str, str]) -> Response:
        if path == "health":
            return _json(200, {"ok": True, "org": self.org})
        if path == "faults":
            if method == "POST":
                return _json(200, self.set_faults(payload))
            return _json(200, asdict(self.crm.faults))
        if path == "reset" and method == "POST":
            self.store.wipe()
            self.crm.ensure_org()
            self.set_faults({}, replace=True)
            self.identity.reset()
            self._add_app_users()
            with self.stats_lock:
                self.stats.clear()
            with self.crm.em_lock:
                self.crm.em_peak = self.crm.batch_peak = 0
            if payload.get("seed"):
                from .seed import seed as run_seed

                run_seed(self.crm, self.users_file)
            if payload.get("platform_option") is not None:
                self.crm.set_platform_option(bool(payload["platform_option"]))
            return _json(200, {"ok": True, "records": self.store.counts()})
        if path == "stats":
            with self.stats_lock:
                counts = dict(self.stats)
            return _json(
                200,
                {
                    "requests": {k[3:]: v for k, v in counts.items() if k.startswith("op:")},
                    "http": {k[5:]: v for k, v in counts.items() if k.startswith("http:")},
                    "faults": {k[6:]: v for k, v in counts.items() if k.startswith("fault:")},
                    "ntlm_handshakes": counts.get("ntlm:handshakes", 0),
                    "ntlm_401": counts.get("ntlm:401", 0),
                    "ntlm_failed": counts.get("ntlm:failed", 0),
                    "claims_redirects": counts.get("claims_redirect", 0),
                    "tokens_issued": counts.get("token:issued", 0),
                    "bearer_401": sum(v for k, v in counts.items() if k.startswith("bearer:401")),
                    "writes": {k[6:]: v for k, v in counts.items() if k.startswith("write:")},
                    "executemultiple_peak": self.crm.em_peak,
                    "batch_peak": self.crm.batch_peak,
                    "records": self.store.counts(),
                },
            )
        if path == "apps" and method == "POST":
            app = self.identity.register(payload)
            self._add_app_users()
            return _json(200, {"tenant_id": app.tenant_id, "client_id": app.client_id, "app_user": app.app_user})
        if path == "apps":
            with self.identity.lock:
                apps = [{"tenant_id": a.tenant_id, "client_id": a.client_id, "app_user": a.app_user}
                        for a in self.identity.apps.values()]
            return _json(200, {"apps": apps})
        if path == "platform-option" and method == "POST":
            value = self.crm.set_platform_option(bool(payload.get("present", True)))
            return _json(200, {"present": value is not None, "value": value})
        if path == "platform-option":
            options = self.crm.custom_options("lead", "leadsourcecode")
            value = next((v for v, lbl in options.items() if lbl.lower() == s.PLATFORM_OPTION_LABEL.lower()), None)
            return _json(200, {"present": value is not None, "value": value})
        if path.startswith("records/"):
            entity = path[len("records/") :]
            ent = self.crm.entity_def(entity)
            if method == "POST":
                rows = payload if isinstance(payload, list) else payload.get("records", [])
                ids = self.crm.bulk_insert(entity, rows)
                return _json(200, {"inserted": len(ids), "ids": ids})
            query = Query(entity=entity, count=int(args.pop("limit", "5000")))
            from .query import Condition, Filter

            conds = []
            for key, value in args.items():
                attr = "emailaddress1" if key == "email" else key
                conds.append(Condition(attr, "eq", [value]))
            if conds:
                query.filters.append(Filter("and", conds))
            result = self.crm.engine.run(query)
            records = [{ent.primary_id: rid, "_entity": stored, **data} for stored, rid, data in result.rows]
            return _json(200, {"records": records, "count": len(records)})
        return _json(404, {"error": f"unknown control path '{path}'"})

    def _add_app_users(self) -> None:
        """Each registered app with an application user has its systemuser, as an administrator would add it."""
        with self.identity.lock:
            clients = [a.client_id for a in self.identity.apps.values() if a.app_user]
        for client in clients:
            self.crm.user_for(f"APP\\{client}")

    def set_faults(self, payload: dict[str, Any], replace: bool = False) -> dict[str, Any]:
        """Replace or merge the injected faults."""
        known = {f.name for f in fields(FaultSettings)}
        unknown = set(payload) - known - {"every_nth"}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        current = FaultSettings() if replace else self.crm.faults
        values = asdict(current)
        values.update(payload)
        # A shared every_nth applies to whichever ratio-style faults were named in the same call.
        nth = values.pop("every_nth", None)
        if nth:
            for name in ("busy", "http500", "drop", "lose_answer", "item_fault", "stale_connection", "hang",
                         "throttle"):
                if payload.get(f"{name}_ratio"):
                    values[f"{name}_every_nth"] = int(nth)
        missing = values.get("missing_privilege") or []
        values["missing_privilege"] = [missing] if isinstance(missing, str) else list(missing)
        self.crm.faults = FaultSettings(**values)
        user = self.crm.faults.password_changed_user
        self.ntlm.rejected_principals = {user.lower()} if user else set()
        self.injector.reset(self.crm.faults.seed)
        return asdict(self.crm.faults)


WRITES = {"Create", "Update", "Delete", "Execute:ExecuteMultiple", "Execute:SetState", "Execute:Create",
          "Execute:Update"}


def _channel(environ: dict[str, Any]) -> Any:
    """Waitress's channel (one per TCP connection), reached through a bound method it puts in the environ."""
    return getattr(environ.get("waitress.client_disconnected"), "__self__", None)


def _client_gone(sock: socket.socket, wait: float) -> bool:
    """Wait up to `wait` seconds for the client to close its side; True once it has (or the socket broke)."""
    try:
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _is_write(environ: dict[str, Any]) -> bool:
    action = environ.get("HTTP_SOAPACTION", "").strip().strip('"')
    if action.endswith(("/Create", "/Update", "/Delete")):
        return True
    body = environ.get("sandbox.body") or b""
    return action.endswith("/Execute") and any(
        f"RequestName>{name}<".encode() in body for name in ("ExecuteMultiple", "Create", "Update", "SetState"))


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    return stream.read(length) if stream is not None and length > 0 else b""


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"


def _html(code: int, body: bytes) -> Response:
    return _status(code), [("Content-Type", "text/html; charset=utf-8")], body


def _json(code: int, body: Any) -> Response:
    return _status(code), [("Content-Type", "application/json")], json.dumps(body).encode()


__all__ = ["SandboxApp", "esc"]
