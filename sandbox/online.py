"""Online mode: a Microsoft Entra token endpoint and the Dynamics 365 Web API v9.2 over TLS on loopback.

The same records as the on-premises front ends. Tokens are opaque, checked on every call and expire
(``token_lifetime`` in the faults), so clients must renew them. ``$batch`` runs operations outside change sets
one by one (``Prefer: odata.continue-on-error`` decides whether a failure stops the rest) and a change set all
or nothing, as the real service does; service protection 429s with ``Retry-After`` come on demand, and every
answer names a recommended degree of parallelism (``x-ms-dop-hint``, set with the ``dop_hint`` fault setting).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import schema as s
from .crm import User
from .odata import ODataError, query_args, webapi_error
from .values import (
    E_INVALID_ARGUMENT,
    E_MISSING_PRIVILEGE,
    E_NO_ATTRIBUTE,
    E_NOT_FOUND,
    CrmFault,
    EntityIn,
    EntityReference,
    Money,
    OptionSetValue,
    norm_guid,
)

VERSION = "9.2.25031.00178"
API = "api/data/v9.2"
MAX_BATCH = 1000
# Documented: a URL may be 32,768 characters; inside a $batch body, 65,536. Measured on the absolute URL.
MAX_URL = 32 * 1024
MAX_BATCH_URL = 64 * 1024
# Service protection limit codes (request count, execution time, concurrency).
E_REQUEST_COUNT = -2147015902
E_EXECUTION_TIME = -2147015903
E_CONCURRENCY = -2147015898
# The recommended degree of parallelism the real service names in x-ms-dop-hint; this one for a small environment.
DOP_HINT = 4
E_NOT_MEMBER = -2147015328  # 0x80072560
E_INVALID_PROPERTY = -2147088248  # 0x80060888
THROTTLE_MESSAGES = {
    E_REQUEST_COUNT: "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    E_EXECUTION_TIME: "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over "
                      "time window of 300 seconds. Decrease number of concurrent requests or reduce the duration "
                      "of requests and try again later.",
    E_CONCURRENCY: "Number of concurrent requests exceeded the limit of 52.",
}

# The demo registration: a tenant, an app with a secret, and its application user.
TENANT_ID = "7d3c2b1a-0000-4000-8000-00000000a001"
CLIENT_ID = "7d3c2b1a-0000-4000-8000-00000000c001"
CLIENT_SECRET = "Sandbox-Client-Secret-1"  # noqa: S105 - the sandbox's published demo secret

Response = tuple[str, list[tuple[str, str]], bytes]


@dataclass
class App:
    """An app registration: its tenant, credentials and whether the environment has its application user."""

    tenant_id: str
    client_id: str
    client_secret: str = ""
    certificate_pem: str = ""
    app_user: bool = True

    def thumbprints(self) -> set[str]:
        """The certificate's SHA-1 (x5t) and SHA-256 (x5t#S256) thumbprints, base64url without padding."""
        if not self.certificate_pem:
            return set()
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = x509.load_pem_x509_certificate(self.certificate_pem.encode())
        return {base64.urlsafe_b64encode(cert.fingerprint(h)).decode().rstrip("=")
                for h in (hashes.SHA1(), hashes.SHA256())}  # noqa: S303 - what x5t is


@dataclass
class Identity:
    """Tenants, app registrations and the tokens issued."""

    apps: dict[str, App] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0

    def reset(self) -> None:
        """Only the demo registration, no tokens."""
        with self.lock:
            self.apps = {CLIENT_ID: App(TENANT_ID, CLIENT_ID, CLIENT_SECRET)}
            self.tokens.clear()

    def register(self, payload: dict[str, Any]) -> App:
        """Add or replace an app registration (control API)."""
        app = App(str(payload.get("tenant_id") or TENANT_ID), str(payload["client_id"]),
                  str(payload.get("client_secret") or ""), str(payload.get("certificate_pem") or ""),
                  bool(payload.get("app_user", True)))
        with self.lock:
            self.apps[app.client_id] = app
            # A registration change ends the app's tokens, as removing its application user would.
            for token in [t for t, (cid, _, _) in self.tokens.items() if cid == app.client_id]:
                del self.tokens[token]
        return app

    def tenants(self) -> set[str]:
        """Every tenant with at least one app."""
        with self.lock:
            return {a.tenant_id for a in self.apps.values()}

    def issue(self, client_id: str, audience: str, lifetime: int) -> str:
        """A new opaque token for an app and an environment."""
        token = secrets.token_urlsafe(32)
        with self.lock:
            now = time.time()
            for old in [t for t, (_, exp, _) in self.tokens.items() if exp < now - 60]:
                del self.tokens[old]
            self.tokens[token] = (client_id, now + lifetime, audience)
            self.issued += 1
        return token

    def check(self, token: str, audience: str) -> tuple[App | None, str]:
        """The app a token belongs to, or None and why not."""
        with self.lock:
            found = self.tokens.get(token)
            app = self.apps.get(found[0]) if found else None
        if found is None or app is None:
            return None, "invalid_token"
        if found[1] <= time.time():
            return None, "expired"
        if found[2] != audience:
            return None, "wrong_audience"
        return app, ""


def ensure_certificate(data_dir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, ::1 and localhost (made once per data directory)."""
    cert_path, key_path = data_dir / "tls-cert.pem", data_dir / "tls-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crm sandbox (loopback)")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _json(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return _status(status), [("Content-Type", "application/json; charset=utf-8"), *(headers or [])], \
        json.dumps(body).encode()


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed",
            414: "URI Too Long", 429: "Too Many Requests", 500: "Internal Server Error"}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"


def _api_error(status: int, message: str, code: int, headers: list[tuple[str, str]] | None = None) -> Response:
    body = webapi_error(ODataError(status, message, code))
    return _status(status), [("Content-Type", "application/json; odata.metadata=minimal"),
                             ("OData-Version", "4.0"), *(headers or [])], body


def _fault_status(fault: CrmFault) -> int:
    return {E_NOT_FOUND: 404, E_MISSING_PRIVILEGE: 403}.get(fault.code, 400)


class OnlineApp:
    """WSGI app of the TLS port: /{tenant}/… (Entra) and /api/data/v9.2/… (the environment)."""

    def __init__(self, sandbox: Any) -> None:
        """Share the records, faults, injector and statistics of the on-premises sandbox."""
        self.sandbox = sandbox
        self.crm = sandbox.crm
        self.identity: Identity = sandbox.identity
        self.in_flight = 0
        self.lock = threading.Lock()
        self.sets = {e.set_webapi: e for e in s.ENTITIES.values()}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """WSGI entry point."""
        try:
            status, headers, body = self.dispatch(environ)
        except Exception as exc:  # noqa: BLE001 - the sandbox answers 500 as a server would, and keeps serving
            status, headers, body = _json(500, {"error": {"code": "0x80040216", "message": str(exc)}})
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def root(self, environ: dict[str, Any]) -> str:
        """https://host:port as the client addressed us."""
        return f"https://{environ.get('HTTP_HOST', '127.0.0.1')}"

    def dispatch(self, environ: dict[str, Any]) -> Response:
        """Route to the token endpoint or the Web API."""
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        length = len(self.root(environ)) + (len(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "") or (
            len(path) + len(environ.get("QUERY_STRING", "")) + 1))
        if length > MAX_URL:
            return _api_error(414, "The request URL is too long (over 32 KB): send the query in a $batch.",
                              E_INVALID_ARGUMENT)
        if path.startswith("/" + API):
            return self.webapi(method, path[len(API) + 1:].lstrip("/"), environ)
        m = re.fullmatch(r"/([^/]+)/(v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token)", path)
        if m:
            self.sandbox.count("http:entra")
            return self.entra(method, m.group(1), m.group(2), environ)
        return _json(404, {"error": "not found"})

    # ------------------------------------------------------------ Microsoft Entra ID

    def entra(self, method: str, tenant: str, what: str, environ: dict[str, Any]) -> Response:
        """OpenID discovery and the client-credentials token endpoint of a tenant."""
        root = self.root(environ)
        if tenant.lower() not in {t.lower() for t in self.identity.tenants()}:
            return _json(400, {"error": "invalid_tenant", "error_codes": [90002],
                               "error_description": f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure "
                                                    "you have the correct tenant ID and are signing into the "
                                                    "correct cloud."})
        if what.startswith("v2.0"):
            base = f"{root}/{tenant}"
            return _json(200, {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                               "token_endpoint": f"{base}/oauth2/v2.0/token",
                               "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"]})
        if method != "POST":
            return _json(405, {"error": "invalid_request"})
        form = dict(parse_qsl(_read(environ).decode("utf-8", "replace")))
        if form.get("grant_type") != "client_credentials":
            return _json(400, {"error": "unsupported_grant_type", "error_codes": [70003],
                               "error_description": "AADSTS70003: The app requested an unsupported grant type."})
        app = self.identity.apps.get(form.get("client_id", ""))
        if app is None or app.tenant_id.lower() != tenant.lower():
            cid = form.get("client_id", "")
            return _json(400, {"error": "unauthorized_client", "error_codes": [700016],
                               "error_description": f"AADSTS700016: Application with identifier '{cid}' was not "
                                                   f"found in the directory '{tenant}'."})
        problem = self._check_credential(app, form, f"{root}/{tenant}/oauth2/v2.0/token")
        if problem:
            return _json(401, problem)
        scope = form.get("scope", "")
        if scope.rstrip("/") != f"{root}/.default":
            return _json(400, {"error": "invalid_resource", "error_codes": [500011],
                               "error_description": f"AADSTS500011: The resource principal named {scope} was not "
                                                   f"found in the tenant named {tenant}."})
        lifetime = int(self.crm.faults.token_lifetime or 3600)
        token = self.identity.issue(app.client_id, root, lifetime)
        self.sandbox.count("token:issued")
        return _json(200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                           "access_token": token})

    @staticmethod
    def _check_credential(app: App, form: dict[str, str], audience: str) -> dict[str, Any] | None:
        if form.get("client_assertion"):
            import jwt

            if not app.certificate_pem:
                return {"error": "invalid_client", "error_codes": [700027],
                        "error_description": "AADSTS700027: Client assertion failed signature validation: no "
                                             "certificate is registered for the app."}
            from cryptography import x509

            try:
                header = jwt.get_unverified_header(form["client_assertion"])
                cert = x509.load_pem_x509_certificate(app.certificate_pem.encode())
                claims = jwt.decode(form["client_assertion"], cert.public_key(),  # type: ignore[arg-type]
                                    algorithms=["RS256", "PS256"], audience=audience)
            except (jwt.PyJWTError, ValueError) as exc:
                return {"error": "invalid_client", "error_codes": [700027],
                        "error_description": f"AADSTS700027: Client assertion failed signature validation. ({exc})"}
            named = {str(header.get(k) or "").rstrip("=") for k in ("x5t", "x5t#S256")} - {""}
            if not named & app.thumbprints():
                return {"error": "invalid_client", "error_codes": [700027],
                        "error_description": "AADSTS700027: The certificate with thumbprint in x5t is not "
                                             "registered for the app."}
            if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
                return {"error": "invalid_client", "error_codes": [700023],
                        "error_description": "AADSTS700023: Client assertion audience or issuer is invalid."}
            return None
        secret = form.get("client_secret", "")
        if not app.client_secret or not secrets.compare_digest(secret.encode(), app.client_secret.encode()):
            return {"error": "invalid_client", "error_codes": [7000215],
                    "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
                                         "sent in the request is the client secret value, not the client secret ID, "
                                         f"for a secret added to app '{app.client_id}'."}
        return None

    # ------------------------------------------------------------ the Web API

    def webapi(self, method: str, sub: str, environ: dict[str, Any]) -> Response:
        """Check the bearer token, apply injected limits, then run the request; every answer carries the hint."""
        status, headers, body = self._webapi(method, sub, environ)
        hint = self.crm.faults.dop_hint or DOP_HINT
        return status, [*headers, ("x-ms-dop-hint", str(hint))] if hint > 0 else headers, body

    def _webapi(self, method: str, sub: str, environ: dict[str, Any]) -> Response:
        self.sandbox.count("http:webapi9")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        challenge = [("WWW-Authenticate", f'Bearer authorization_uri="https://login.microsoftonline.com/'
                                          f'{TENANT_ID}/oauth2/authorize", resource_id="{self.root(environ)}"')]
        if not auth.startswith("Bearer "):
            self.sandbox.count("bearer:401")
            return _status(401), [("Content-Type", "text/plain"), *challenge], b""
        app, why = self.identity.check(auth[7:].strip(), self.root(environ))
        if app is None:
            self.sandbox.count(f"bearer:401:{why}")
            return _status(401), [("Content-Type", "text/plain"), *challenge], b""
        if not app.app_user:
            return _api_error(403, "The user is not a member of the organization.", E_NOT_MEMBER)
        user = self.crm.user_for(f"APP\\{app.client_id}")
        faults = self.crm.faults
        is_batch = sub == "$batch"
        with self.lock:
            self.in_flight += 1
            over = bool(faults.max_concurrent_requests) and self.in_flight > faults.max_concurrent_requests
        if is_batch:
            with self.crm.em_lock:
                self.crm.batch_running += 1
                self.crm.batch_peak = max(self.crm.batch_peak, self.crm.batch_running)
        try:
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000)
            if over:
                self.sandbox.count("fault:throttle")
                return self._throttled(E_CONCURRENCY)
            if faults.throttle_scope != "operation" and self.sandbox.injector.hit(
                    "throttle", faults.throttle_ratio, faults.throttle_every_nth):
                self.sandbox.count("fault:throttle")
                return self._throttled(faults.throttle_code or E_REQUEST_COUNT)
            body = _read(environ)
            if sub == "$batch":
                if method != "POST":
                    return _api_error(405, "$batch takes POST.", E_INVALID_ARGUMENT)
                return self.batch(environ, body, user)
            headers = {"prefer": environ.get("HTTP_PREFER", ""), "if-match": environ.get("HTTP_IF_MATCH", ""),
                       "if-none-match": environ.get("HTTP_IF_NONE_MATCH", "")}
            return self.operation(method, unquote(sub), environ.get("QUERY_STRING", ""), headers, body, user,
                                  self.root(environ))
        finally:
            with self.lock:
                self.in_flight -= 1
            if is_batch:
                with self.crm.em_lock:
                    self.crm.batch_running -= 1

    def _throttled(self, code: int) -> Response:
        retry = str(self.crm.faults.throttle_retry_after)
        return _api_error(429, THROTTLE_MESSAGES.get(code, THROTTLE_MESSAGES[E_REQUEST_COUNT]), code,
                          [("Retry-After", retry)])

    def operation(self, method: str, sub: str, query: str, headers: dict[str, str], body: bytes, user: User,
                  root: str, inner: bool = False) -> Response:
        """One Web API operation (on its own, or inside a $batch: then counted apart from HTTP requests)."""
        base = f"{root}/{API}"
        kind = "batchop" if inner else "op"
        self.sandbox.count(f"{kind}:webapi9:{method}:{sub.split('(')[0] or 'service'}")
        try:
            if method == "GET":
                return self._get(sub, query, headers, base, user)
            if method == "POST" and sub == "InsertOptionValue":
                return self._insert_option(_body_json(body), user, base)
            if method == "POST" and sub in ("PublishXml", "PublishAllXml"):
                if sub == "PublishXml" and "<importexportxml" not in str(_body_json(body).get("ParameterXml", "")):
                    raise CrmFault(E_INVALID_ARGUMENT, "ParameterXml must be an <importexportxml> document.")
                return _status(204), [("OData-Version", "4.0")], b""
            m = re.fullmatch(r"(\w+)(?:\(([0-9a-fA-F-]{36})\))?", sub)
            if not m or m.group(1) not in self.sets:
                raise ODataError(404, f"Resource not found for the segment '{sub}'.")
            ent = self.sets[m.group(1)]
            rid = m.group(2)
            if method == "POST" and rid is None:
                new_id = self.crm.create(EntityIn(ent.name, None, self._attributes(ent, _body_json(body))), user)
                self.sandbox.count("write:create")
                url = f"{base}/{ent.set_webapi}({new_id})"
                return _status(204), [("OData-Version", "4.0"), ("OData-EntityId", url), ("Location", url)], b""
            if method == "PATCH" and rid:
                attrs = self._attributes(ent, _body_json(body))
                exists = self.crm.store.get(ent.name, norm_guid(rid)) is not None
                if not exists and headers.get("if-match") == "*":
                    raise CrmFault(E_NOT_FOUND, f"{ent.name} With Id = {rid} Does Not Exist")
                if exists:
                    self.crm.update(EntityIn(ent.name, norm_guid(rid), attrs), user)
                    self.sandbox.count("write:update")
                else:  # PATCH without If-Match is an upsert
                    self.crm.create(EntityIn(ent.name, norm_guid(rid), attrs), user)
                    self.sandbox.count("write:create")
                url = f"{base}/{ent.set_webapi}({norm_guid(rid)})"
                return _status(204), [("OData-Version", "4.0"), ("OData-EntityId", url)], b""
            if method == "DELETE" and rid:
                self.crm.delete(ent.name, rid, user)
                return _status(204), [("OData-Version", "4.0")], b""
            raise ODataError(405, f"{method} is not supported on '{sub}'.")
        except ODataError as err:
            return _api_error(err.status, err.message, err.code)
        except CrmFault as fault:
            return _api_error(_fault_status(fault), fault.message, fault.code)
        except (ValueError, TypeError) as exc:
            return _api_error(400, f"The request body is not valid: {exc}", E_INVALID_ARGUMENT)

    def _get(self, sub: str, query: str, headers: dict[str, str], base: str, user: User) -> Response:
        out = [("Content-Type", "application/json; odata.metadata=minimal"), ("OData-Version", "4.0")]
        if sub in ("RetrieveVersion", "RetrieveVersion()"):
            return _status(200), out, json.dumps({"@odata.context": f"{base}/$metadata#Microsoft.Dynamics.CRM."
                                                                    "RetrieveVersionResponse",
                                                  "Version": VERSION}).encode()
        m = re.fullmatch(r"EntityDefinitions\(LogicalName='(\w+)'\)(?:/Attributes\(LogicalName='(\w+)'\)"
                         r"/Microsoft\.Dynamics\.CRM\.PicklistAttributeMetadata)?", sub)
        if m:
            ent = self.crm.entity_def(m.group(1))
            if not m.group(2):
                return _status(200), out, json.dumps({"LogicalName": ent.name, "EntitySetName": ent.set_webapi,
                                                      "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, ent.name))
                                                      }).encode()
            attribute = m.group(2)
            if ent.attributes.get(attribute) is None:
                raise ODataError(404, f"Could not find attribute with name '{attribute}' on entity '{ent.name}'.",
                                 E_NO_ATTRIBUTE)
            if ent.attributes[attribute] != s.OPTIONSET or attribute in ("statecode", "statuscode"):
                raise ODataError(400, f"The attribute '{attribute}' is not a picklist.", E_INVALID_ARGUMENT)
            options = {**ent.options.get(attribute, {}), **self.crm.custom_options(ent.name, attribute)}
            body = {"LogicalName": attribute, "OptionSet": {"Options": [
                {"Value": value, "Label": {"LocalizedLabels": [{"Label": label, "LanguageCode": 1033}],
                                           "UserLocalizedLabel": {"Label": label, "LanguageCode": 1033}}}
                for value, label in sorted(options.items())]}}
            return _status(200), out, json.dumps(body).encode()
        status, body, extra = self.sandbox.odata.webapi(sub, query_args(query), headers, base, user)
        return _status(status), [*out, *extra], json.dumps(body).encode()

    def _insert_option(self, body: dict[str, Any], user: User, base: str) -> Response:
        from .organization import _customization

        labels = ((body.get("Label") or {}).get("LocalizedLabels")) or []
        text = next((str(lbl.get("Label")) for lbl in labels if isinstance(lbl, dict) and lbl.get("Label")), "")
        if not text:
            raise CrmFault(E_INVALID_ARGUMENT, "Label is required.")
        self.crm.check_privilege("Create", _customization(), user)
        value = body.get("Value")
        new = self.crm.insert_option(str(body.get("EntityLogicalName") or ""),
                                     str(body.get("AttributeLogicalName") or ""), text,
                                     int(value) if isinstance(value, int) else None)
        return _json(200, {"@odata.context": f"{base}/$metadata#Microsoft.Dynamics.CRM.InsertOptionValueResponse",
                           "NewOptionValue": new})

    def _attributes(self, ent: s.EntityDef, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON entity body as typed request values, refusing what the real service refuses."""
        out: dict[str, Any] = {}
        for key, value in body.items():
            if key.endswith("@odata.bind"):
                nav = key[: -len("@odata.bind")]
                m = re.fullmatch(r"/?(\w+)\(([0-9a-fA-F-]{36})\)", str(value or ""))
                if not m or m.group(1) not in self.sets:
                    raise ODataError(400, f"The @odata.bind value '{value}' is not a record URL.", E_INVALID_ARGUMENT)
                target = self.sets[m.group(1)].name
                declared = s.navigation_properties(ent).get(nav)
                if declared is None:
                    raise ODataError(400, "An error occurred while validating input parameters: "
                                          f"Microsoft.OData.ODataException: An undeclared property '{nav}' which only "
                                          "has property annotations in the payload but no property value was found "
                                          "in the payload. In OData, only declared navigation properties and "
                                          "declared named streams can be represented as properties without values.",
                                     E_INVALID_PROPERTY)
                attr, targets = declared
                if target not in targets:
                    raise ODataError(400, f"The navigation property '{nav}' does not point at {target}.",
                                     E_INVALID_ARGUMENT)
                out[attr] = EntityReference(target, norm_guid(m.group(2)))
                continue
            if "@" in key or key.startswith("_"):
                raise ODataError(400, f"Invalid property '{key}' was found in entity "
                                      f"'Microsoft.Dynamics.CRM.{ent.name}'.", E_INVALID_PROPERTY)
            kind = ent.attributes.get(key)
            if kind is None:
                raise ODataError(400, f"Invalid property '{key}' was found in entity "
                                      f"'Microsoft.Dynamics.CRM.{ent.name}'.", E_INVALID_PROPERTY)
            out[key] = _typed(kind, key, value)
        return out

    # ------------------------------------------------------------ $batch

    def batch(self, environ: dict[str, Any], body: bytes, user: User) -> Response:
        """Run a multipart $batch: independent operations, and change sets all or nothing."""
        ctype = environ.get("CONTENT_TYPE", "")
        boundary = _boundary(ctype)
        if not ctype.lower().startswith("multipart/mixed") or not boundary:
            return _api_error(400, "The $batch request must be multipart/mixed with a boundary.", E_INVALID_ARGUMENT)
        items = _parse_multipart(body, boundary)
        ops = sum(len(i) if isinstance(i, list) else 1 for i in items)
        if ops > MAX_BATCH:
            return _api_error(400, f"The number of requests in the batch ({ops}) exceeds the limit of {MAX_BATCH}.",
                              E_INVALID_ARGUMENT)
        root = self.root(environ)
        for part in (p for item in items for p in (item if isinstance(item, list) else [item])):
            url = part["url"]
            if len(root + url if url.startswith("/") else url) > MAX_BATCH_URL:
                # The real status is not documented: the whole batch is refused, so nothing in it runs.
                return _api_error(400, "The URL of a request in the batch is longer than 65,536 characters.",
                                  E_INVALID_ARGUMENT)
        self.sandbox.count("op:webapi9:$batch")
        prefer = environ.get("HTTP_PREFER", "").lower()
        continue_on_error = "odata.continue-on-error" in prefer
        faults = self.crm.faults
        out_parts: list[bytes] = []
        for item in items:
            if isinstance(item, list):  # a change set
                part, failed = self._changeset(item, user, root)
                out_parts.append(part)
            else:
                if faults.throttle_scope == "operation" and self.sandbox.injector.hit(
                        "throttle", faults.throttle_ratio, faults.throttle_every_nth):
                    self.sandbox.count("fault:throttle")
                    status, headers, payload = self._throttled(faults.throttle_code or E_REQUEST_COUNT)
                else:
                    status, headers, payload = self._run_part(item, user, root, prefer)
                out_parts.append(_http_part(status, headers, payload))
                failed = int(status.split()[0]) >= 400
            if failed and not continue_on_error:
                break
        boundary_out = f"batchresponse_{uuid.uuid4()}"
        return _status(200), [("Content-Type", f"multipart/mixed; boundary={boundary_out}"),
                              ("OData-Version", "4.0")], _multipart(boundary_out, out_parts)

    def _run_part(self, part: dict[str, Any], user: User, root: str, prefer: str) -> Response:
        url = urlsplit(part["url"])
        path = url.path
        marker = f"/{API}/"
        if marker in path:
            path = path.split(marker, 1)[1]
        headers = {"prefer": part["headers"].get("prefer", prefer), "if-match": part["headers"].get("if-match", ""),
                   "if-none-match": part["headers"].get("if-none-match", "")}
        return self.operation(part["method"], unquote(path), url.query, headers, part["body"], user, root, True)

    def _changeset(self, parts: list[dict[str, Any]], user: User, root: str) -> tuple[bytes, bool]:
        """All or nothing: the first failure rolls back the set and is its only answer."""
        boundary = f"changesetresponse_{uuid.uuid4()}"
        answers: list[bytes] = []
        store = self.crm.store

        class _Rollback(Exception):
            pass

        failure: Response | None = None
        try:
            with store.transaction():
                for part in parts:
                    if part["method"] == "GET":
                        failure = _api_error(400, "A change set cannot hold GET requests.", E_INVALID_ARGUMENT)
                        raise _Rollback
                    status, headers, payload = self._run_part(part, user, root, "")
                    if int(status.split()[0]) >= 400:
                        failure = (status, headers, payload)
                        raise _Rollback
                    cid = part["headers"].get("content-id")
                    answers.append(_http_part(status, headers, payload, content_id=cid))
        except _Rollback:
            self.sandbox.count("batch:changeset_rolled_back")
            status, headers, payload = failure  # type: ignore[misc]
            return _http_part(status, headers, payload), True
        inner = _multipart(boundary, answers)
        head = f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n".encode()
        return head + inner, False


def _typed(kind: str, key: str, value: Any) -> Any:
    """A JSON value as the typed value the record operations check."""
    if value is None:
        return None
    if kind == s.OPTIONSET:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CrmFault(E_INVALID_ARGUMENT, f"Cannot convert the literal '{value}' to 'Edm.Int32'.")
        return OptionSetValue(value)
    if kind == s.MONEY:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CrmFault(E_INVALID_ARGUMENT, f"Cannot convert the literal '{value}' to 'Edm.Decimal'.")
        return Money(Decimal(str(value)))
    if kind == s.DATETIME:
        try:
            text = str(value)
            if "T" not in text:  # Edm.DateTimeOffset: a date alone is refused, as by the real service
                raise ValueError(text)
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise CrmFault(E_INVALID_ARGUMENT, f"Cannot convert the literal '{value}' to 'Edm.DateTimeOffset'.") \
                from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if kind == s.GUID:
        return uuid.UUID(str(value))
    if kind in (s.DECIMAL, s.DOUBLE) and isinstance(value, float):
        return Decimal(str(value))
    return value


def _read(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    return stream.read(length) if stream is not None and length > 0 else b""


def _body_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8-sig") or "{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CrmFault(E_INVALID_ARGUMENT, "The request body is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise CrmFault(E_INVALID_ARGUMENT, "The request body must be a JSON object.")
    return value


def _boundary(ctype: str) -> str | None:
    m = re.search(r'boundary="?([^";]+)"?', ctype or "", re.IGNORECASE)
    return m.group(1) if m else None


def _headers_and_rest(block: bytes) -> tuple[dict[str, str], bytes]:
    head, _, rest = block.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def _parse_multipart(body: bytes, boundary: str) -> list[Any]:
    """The parts of a $batch body: dicts for operations, lists of dicts for change sets."""
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    out: list[Any] = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        mime, payload = _headers_and_rest(chunk.lstrip(b"\r\n"))
        ctype = mime.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            inner = _boundary(ctype)
            if not inner:
                raise CrmFault(E_INVALID_ARGUMENT, "A change set has no boundary.")
            out.append([p for p in _parse_multipart(payload, inner) if isinstance(p, dict)])
            continue
        line, _, rest = payload.partition(b"\r\n")
        m = re.match(rb"(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/1\.1", line)
        if not m:
            raise CrmFault(E_INVALID_ARGUMENT, "A $batch part has no request line.")
        headers, part_body = _headers_and_rest(rest)
        headers.setdefault("content-id", mime.get("content-id", ""))
        out.append({"method": m.group(1).decode(), "url": m.group(2).decode(), "headers": headers,
                    "body": part_body.rstrip(b"\r\n")})
    return out


def _http_part(status: str, headers: list[tuple[str, str]], body: bytes, content_id: str | None = None) -> bytes:
    mime = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id:
        mime += f"Content-ID: {content_id}\r\n"
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"{mime}\r\nHTTP/1.1 {status}\r\n{lines}\r\n".encode() + body


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return out + b"--" + boundary.encode() + b"--\r\n"


def serve_tls(app: OnlineApp, host: str, port: int, data_dir: Path) -> Any:
    """Start the TLS server of the online mode in a background thread; returns the server."""
    import logging
    import ssl

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    cert, key = ensure_certificate(data_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    server = make_server(host, port, app, threaded=True, ssl_context=context)
    threading.Thread(target=server.serve_forever, name="sandbox-online", daemon=True).start()
    return server
