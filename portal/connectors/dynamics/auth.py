"""Dynamics 365 online sign-in: OAuth 2.0 client credentials through MSAL, with tokens cached per integration."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import msal
import requests

from .errors import AuthFailedError, DynamicsError, InvalidUrlError
from .transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_USER_AGENT,
    GuardedAdapter,
    RedactingFilter,
    map_request_exception,
)
from .urlguard import Endpoint, IPNetwork, check_url

log = logging.getLogger("portal.connectors.dynamics")

_OAUTH_SECRET_RE = re.compile(
    r"(?i)(client_secret|client_assertion|access_token|refresh_token|id_token)([\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"'&,;}]+)"
)


def redact_oauth(text: str) -> str:
    """Blank out client secrets, assertions and tokens in a text (form bodies, JSON, reprs)."""
    return _OAUTH_SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)


# MSAL and urllib3 log at DEBUG what they send; a record made on a logger only meets that logger's filters.
for _name in ("portal.connectors.dynamics", "msal", "msal.application", "msal.authority", "msal.oauth2cli",
              "msal.token_cache", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(RedactingFilter(redact_oauth))

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# A token is used until this many seconds before its expiry, then a new one is asked for (as MSAL does).
REFRESH_MARGIN = 300.0


class TokenCache(Protocol):
    """Where access tokens are kept between requests, runs and workers: the token and its expiry, nothing else."""

    def get(self, key: str) -> tuple[str, float] | None:
        """The access token and its expiry (epoch seconds) kept under key, or None."""

    def put(self, key: str, token: str, expires_at: float) -> None:
        """Keep a token until REFRESH_MARGIN before its expiry (a token that short-lived is not kept)."""

    def drop(self, key: str, token: str) -> None:
        """Forget the token under key if it is still this one (the service refused it)."""

    def lock(self, key: str) -> AbstractContextManager[object]:
        """Held while one caller asks Microsoft Entra ID for a token, so the others wait and take it."""


class MemoryTokenCache:
    """Tokens of this process only, the least recently used dropped first beyond ``size`` integrations."""

    def __init__(self, size: int = 500) -> None:
        self.size = size
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[str, float] | None:
        """The token kept under key while it is fresh."""
        with self._lock:
            found = self._tokens.get(key)
            if found is None:
                return None
            if found[1] - REFRESH_MARGIN <= time.time():
                del self._tokens[key]
                return None
            self._tokens.move_to_end(key)
            return found

    def put(self, key: str, token: str, expires_at: float) -> None:
        """Keep a token while it is fresh."""
        if expires_at - REFRESH_MARGIN <= time.time():
            return
        with self._lock:
            self._tokens[key] = (token, expires_at)
            self._tokens.move_to_end(key)
            while len(self._tokens) > self.size:
                self._tokens.popitem(last=False)

    def drop(self, key: str, token: str) -> None:
        """Forget a refused token."""
        with self._lock:
            if self._tokens.get(key, ("",))[0] == token:
                del self._tokens[key]

    def lock(self, key: str) -> AbstractContextManager[object]:
        """A lock per key within this process."""
        with self._lock:
            if len(self._locks) > self.size:
                self._locks = {k: v for k, v in self._locks.items() if k in self._tokens}
            return self._locks.setdefault(key, threading.Lock())


PROCESS_TOKENS = MemoryTokenCache()
WEBAPI_PATH = "/api/data/v9.2/"


@dataclass(frozen=True, kw_only=True)
class OnlineConfig:
    """Everything needed to reach one Dynamics 365 online environment; secrets never show in repr."""

    environment_url: str
    tenant_id: str
    client_id: str
    client_secret: str = field(default="", repr=False)
    certificate_pem: str = field(default="", repr=False)
    authority_host: str = DEFAULT_AUTHORITY_HOST
    ca_bundle: str | None = None
    verify_tls: bool = True
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_endpoints: tuple[Endpoint, ...] = ()
    user_agent: str = DEFAULT_USER_AGENT
    max_parallel: int = 2
    cache_key: str = ""
    # Where tokens are shared (by every worker: the portal gives a Redis one); None is this process alone.
    token_cache: TokenCache | None = field(default=None, repr=False, compare=False)
    # As on-premises: every exchange ends within total_timeout; a $batch's deadline grows with its size.
    total_timeout: float = 180.0
    batch_base_seconds: float = 60.0
    batch_record_seconds: float = 0.3

    def batch_deadline(self, size: int) -> float:
        """Seconds a $batch of ``size`` operations may take before its outcome counts as unknown."""
        return self.batch_base_seconds + self.batch_record_seconds * max(0, size)

    @property
    def root(self) -> str:
        """The environment's root URL without a trailing slash (https://org.crm4.dynamics.com)."""
        parts = urlsplit(self.environment_url.strip())
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def org_url(self) -> str:
        """The Web API root (what the transport warms up and the guard checks)."""
        return self.root + WEBAPI_PATH

    @property
    def webapi_url(self) -> str:
        """The Web API v9.2 root with its trailing slash."""
        return self.root + WEBAPI_PATH

    @property
    def authority(self) -> str:
        """The Microsoft Entra authority of the tenant."""
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id.strip()}"

    @property
    def scope(self) -> str:
        """The client-credentials scope of the environment (its root URL plus /.default)."""
        return self.root + "/.default"

    def fingerprint(self) -> str:
        """The key of this integration's tokens: tenant, client id, authority, scope and a hash of the credential.

        A changed secret or certificate gives a new key, so a token got with the old one is never served again.
        """
        credential = hashlib.sha256(f"{self.client_secret}\x1f{self.certificate_pem}".encode()).hexdigest()
        parts = [self.tenant_id.strip(), self.client_id.strip(), self.authority, self.scope, self.cache_key, credential]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- typed sign-in failures


class TenantNotFoundError(AuthFailedError):
    """Microsoft Entra does not know the tenant id (AADSTS90002) or its authority is not an Entra authority."""

    default_message = "Microsoft Entra ID does not know this tenant id."
    default_action = (
        "Copy the Directory (tenant) ID from the Microsoft Entra admin center > App registrations > your app > "
        "Overview, and paste it into Tenant id."
    )


class ClientIdError(AuthFailedError):
    """No application with this client id in the tenant (AADSTS700016)."""

    default_message = "The tenant has no application with this application (client) id."
    default_action = (
        "Copy the Application (client) ID from the Microsoft Entra admin center > App registrations > your app > "
        "Overview. The app must be registered in the tenant entered above."
    )


class ClientSecretError(AuthFailedError):
    """The client secret is wrong or expired (AADSTS7000215, AADSTS7000222)."""

    default_message = "Microsoft Entra ID refused the client secret."
    default_action = (
        "Create a new client secret under App registrations > your app > Certificates & secrets, and paste its "
        "Value (not its Secret ID) into Client secret. Secrets expire: note the new expiry date."
    )


class CertificateError(AuthFailedError):
    """The certificate is unreadable, or Entra does not know it for this app (AADSTS700027, AADSTS700023)."""

    default_message = "Microsoft Entra ID refused the certificate."
    default_action = (
        "Upload the certificate's public part under App registrations > your app > Certificates & secrets, and "
        "paste here the PEM holding both the private key and the certificate."
    )


class ApplicationUserError(AuthFailedError):
    """The app signed in, but the environment has no application user for it (or it is disabled)."""

    default_message = "The app signed in, but the Dynamics 365 environment has no application user for it."
    default_action = (
        "In the Power Platform admin center > Environments > your environment > Settings > Users + permissions > "
        "Application users, add a new app user for this application (client) id and give it a security role "
        "such as Sales Manager or Marketing Manager (System Customizer too, to add the lead source option)."
    )


class ResourceError(AuthFailedError):
    """Entra does not know the environment URL as a resource (AADSTS500011)."""

    default_message = "Microsoft Entra ID does not know this environment URL."
    default_action = (
        "Copy the Environment URL from the Power Platform admin center > Environments > your environment "
        "(https://<org>.crm<N>.dynamics.com)."
    )


_AADSTS = (
    ("AADSTS90002", TenantNotFoundError),
    ("AADSTS900023", TenantNotFoundError),
    ("AADSTS700016", ClientIdError),
    ("AADSTS7000215", ClientSecretError),
    ("AADSTS7000222", ClientSecretError),
    ("AADSTS700027", CertificateError),
    ("AADSTS700023", CertificateError),
    ("AADSTS500011", ResourceError),
)


def error_from_token_answer(answer: dict[str, Any]) -> AuthFailedError:
    """Map MSAL's error answer (error, error_description, error_codes) to the error that names the culprit."""
    description = str(answer.get("error_description") or answer.get("error") or "")
    codes = {f"AADSTS{c}" for c in answer.get("error_codes") or []}
    first_line = description.splitlines()[0] if description else "The sign-in failed."
    for code, cls in _AADSTS:
        if code in codes or code in description.split(":", 1)[0].split():
            return cls(f"{cls.default_message} ({first_line[:300]})", detail=code)
    if answer.get("error") == "invalid_client":
        return ClientSecretError(f"{ClientSecretError.default_message} ({first_line[:300]})", detail="invalid_client")
    return AuthFailedError(f"Microsoft Entra ID refused the sign-in: {first_line[:300]}",
                           action=ClientSecretError.default_action, detail=answer.get("error"))


# ---------------------------------------------------------------- tokens


def guarded_session(config: OnlineConfig) -> requests.Session:
    """A requests.Session for the token endpoint: no proxies from the environment, the URL guard, capped TLS."""
    session = requests.Session()
    session.trust_env = False
    session.verify = (config.ca_bundle or True) if config.verify_tls else False
    session.headers.update({"User-Agent": config.user_agent})
    adapter = GuardedAdapter(config.allowed_networks, config.allowed_endpoints, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _GuardedHttpClient:
    """What MSAL calls for HTTP: every URL passes the URL guard, with timeouts and no redirects."""

    def __init__(self, config: OnlineConfig) -> None:
        self.config = config
        self.session = guarded_session(config)
        self.requests_sent = 0

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        check_url(url, self.config.allowed_networks, self.config.allowed_endpoints)
        self.requests_sent += 1
        kwargs.setdefault("timeout", (self.config.connect_timeout, self.config.read_timeout))
        kwargs["allow_redirects"] = False
        try:
            return self.session.request(method, url, **kwargs)
        except (requests.exceptions.RequestException, OSError) as exc:
            raise map_request_exception(exc, url) from exc

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """GET for MSAL (discovery)."""
        return self._call("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """POST for MSAL (the token request)."""
        return self._call("POST", url, **kwargs)

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()


def _certificate_credential(pem: str) -> dict[str, str]:
    """MSAL's certificate credential from a PEM holding a private key and its certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise CertificateError("The certificate PEM holds no readable certificate.") from exc
    if "PRIVATE KEY-----" not in pem:
        raise CertificateError("The certificate PEM holds no private key.")
    # Without a "thumbprint", MSAL signs with PS256 and names the certificate by its SHA-256 thumbprint.
    return {"private_key": pem, "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}


class TokenProvider:
    """Bearer tokens for one integration: MSAL gets them; the token cache shares them until shortly before expiry."""

    def __init__(self, config: OnlineConfig, cache: TokenCache | None = None) -> None:
        self.config = config
        self.cache: TokenCache = cache or config.token_cache or PROCESS_TOKENS
        self.key = config.fingerprint()
        self._lock = threading.Lock()
        self._app: msal.ConfidentialClientApplication | None = None
        self._http = _GuardedHttpClient(config)
        self._last = ""
        self.tokens_issued = 0

    @property
    def http_requests(self) -> int:
        """Requests sent to the token endpoint (discovery included)."""
        return self._http.requests_sent

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is not None:
            return self._app
        config = self.config
        if not config.tenant_id.strip():
            raise TenantNotFoundError("The tenant id is empty.")
        if not config.client_id.strip():
            raise ClientIdError("The application (client) id is empty.")
        try:
            check_url(config.authority, config.allowed_networks, config.allowed_endpoints)
        except InvalidUrlError as exc:
            raise TenantNotFoundError(f"The tenant id does not make a valid sign-in address: {exc.message}") from exc
        credential: Any
        if config.certificate_pem.strip():
            credential = _certificate_credential(config.certificate_pem)
        elif config.client_secret:
            credential = config.client_secret
        else:
            raise ClientSecretError("No client secret or certificate is saved.")
        try:
            # instance_discovery=False: the authority host is the one configured, and nothing else is asked.
            self._app = msal.ConfidentialClientApplication(
                config.client_id.strip(), client_credential=credential, authority=config.authority,
                http_client=self._http, instance_discovery=False, validate_authority=False,
                timeout=(config.connect_timeout, config.read_timeout),
            )
        except DynamicsError:
            raise
        except ValueError as exc:
            text = str(exc)
            # MSAL reads the tenant's OpenID configuration first: an unknown tenant fails there.
            if "AADSTS90002" in text or "Unable to get" in text or "tenant" in text.lower():
                raise TenantNotFoundError(detail=text[:300]) from exc
            if "should be of the form https" in text:
                raise TenantNotFoundError("The sign-in address must be https.", detail=text[:300]) from exc
            raise AuthFailedError(f"The sign-in could not start: {text[:200]}", detail=text[:300]) from exc
        return self._app

    def token(self) -> str:
        """A valid access token: the shared one, or a new one when none is left or it expires within minutes."""
        cached = self.cache.get(self.key)
        if cached is None:
            # One caller (of every worker sharing the cache) asks Entra; the others wait, then take its token.
            with self.cache.lock(self.key):
                cached = self.cache.get(self.key)
                if cached is None:
                    cached = self._acquire()
        self._last = cached[0]
        return cached[0]

    def _acquire(self) -> tuple[str, float]:
        with self._lock:
            app = self._application()
            answer = app.acquire_token_for_client(scopes=[self.config.scope])
        if "access_token" not in answer:
            raise error_from_token_answer(answer)
        if answer.get("token_source") == "identity_provider":
            self.tokens_issued += 1
        token = str(answer["access_token"])
        try:
            expires_at = time.time() + float(answer.get("expires_in") or 0)
        except (TypeError, ValueError):
            expires_at = time.time()
        self.cache.put(self.key, token, expires_at)
        return token, expires_at

    def invalidate(self) -> None:
        """Forget the token the service refused before its expiry, here and in the shared cache."""
        self.cache.drop(self.key, self._last)
        with self._lock:
            if self._app is not None:
                self._app.remove_tokens_for_client()

    def close(self) -> None:
        """Close the token endpoint's connections."""
        self._http.close()


_PROVIDERS: OrderedDict[str, TokenProvider] = OrderedDict()
_PROVIDERS_LOCK = threading.Lock()


def provider_for(config: OnlineConfig) -> TokenProvider:
    """The token provider of an integration, kept in this process (the least recently used closed beyond 500)."""
    key = config.fingerprint()
    with _PROVIDERS_LOCK:
        provider = _PROVIDERS.get(key)
        if provider is None or provider.cache is not (config.token_cache or PROCESS_TOKENS):
            provider = _PROVIDERS[key] = TokenProvider(config)
        _PROVIDERS.move_to_end(key)
        while len(_PROVIDERS) > 500:
            _PROVIDERS.popitem(last=False)[1].close()
        return provider
