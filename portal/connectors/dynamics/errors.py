"""Typed errors of the Dynamics connector, each with a message and an action for a CRM admin."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

# OrganizationServiceFault ErrorCodes we treat specially (see the protocol notes, section 2.10).
ERROR_NOT_FOUND = -2147220969
ERROR_PRIVILEGE = -2147220960
ERROR_ACCESS_CHECK = -2147187962
ERROR_DUPLICATE_KEY = -2147220937
ERROR_DUPLICATE_RULE = -2147220685
# BadAuthTicket (0x8004A102): "The ticket specified for authentication is invalid". Server Busy has no
# documented code: it is recognised by its message (see error_from_fault).
ERROR_BAD_AUTH_TICKET = -2147180286
ERROR_OPTION_OUT_OF_RANGE = -2147204326
ERROR_NO_ATTRIBUTE = -2147217149

MAX_BATCH_SIZE = 1000


class DynamicsError(Exception):
    """Base class: a failure talking to Dynamics CRM, explained for a person."""

    code: ClassVar[str] = "dynamics_error"
    default_message: ClassVar[str] = "The CRM could not be reached or answered with an error."
    default_action: ClassVar[str] = "Check the CRM connection settings and try again."
    retryable: bool = False

    def __init__(
        self,
        message: str | None = None,
        *,
        action: str | None = None,
        detail: Any = None,
        retryable: bool | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.action = action or self.default_action
        self.detail = detail
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self.message)

    def to_dict(self) -> dict[str, str]:
        """Return the code, message and action, safe to show and to store as JSON."""
        return {"code": self.code, "message": self.message, "action": self.action}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidUrlError(DynamicsError):
    """The URL is malformed: not http(s), or without a host."""

    code = "invalid_url"
    default_message = "The URL is not a valid http or https address."
    default_action = (
        "Copy the Organization Service URL from Settings > Customizations > Developer Resources "
        "and append /web."
    )


class BlockedUrlError(DynamicsError):
    """The URL resolves to an address the portal refuses to contact (private, loopback, metadata...)."""

    code = "blocked_url"
    default_message = "The URL points to a private or reserved network address."
    default_action = (
        "Use the CRM address that is published outside your firewall. If the CRM really lives on a "
        "private network, ask the portal operator to add that network to the allowed networks."
    )


class UnreachableError(DynamicsError):
    """DNS failure, connection refused or no route to the host."""

    code = "unreachable"
    default_message = "The CRM server could not be reached."
    default_action = (
        "Check the URL is reachable from outside your firewall: the host name must resolve in public "
        "DNS and the port must be open to the internet."
    )


class TlsError(DynamicsError):
    """The TLS handshake or certificate verification failed."""

    code = "tls"
    default_message = "A secure (TLS) connection to the CRM could not be established."
    default_action = (
        "Make sure the CRM's certificate is valid for this host name and issued by a trusted authority "
        "(or upload your CA bundle), and that the server offers TLS 1.2 or later."
    )


class RequestTimeoutError(DynamicsError):
    """The CRM did not connect or answer in time."""

    code = "timeout"
    default_message = "The CRM did not answer in time."
    default_action = "Try again later; if it keeps happening, check the CRM server's load and network path."
    retryable = True


class AuthFailedError(DynamicsError):
    """NTLM authentication was rejected."""

    code = "auth_failed"
    default_message = "The CRM rejected the user name or password."
    default_action = (
        "Check the user name, password and Windows domain. The user name is usually written "
        "DOMAIN\\user; enter the domain in its own field or include it in the user name."
    )


class ClaimsAuthError(DynamicsError):
    """The deployment uses claims-based authentication (AD FS), where NTLM is not available."""

    code = "claims_auth"
    default_message = (
        "The CRM redirected the sign-in to AD FS (/adfs/ls): it uses claims-based authentication, "
        "where Windows (NTLM) sign-in is not available."
    )
    default_action = (
        "Give the portal an Organization Service URL that accepts Windows authentication (an internal, "
        "non-IFD address published through your firewall), or ask your CRM administrator to enable it."
    )


class NotDynamicsError(DynamicsError):
    """The URL answered, but not as a Dynamics CRM Organization Service."""

    code = "not_dynamics"
    default_message = "The URL does not point to a Dynamics CRM Organization Service."
    default_action = (
        "Use the Organization Service URL shown in Settings > Customizations > Developer Resources, "
        "with /web appended (it ends with /XRMServices/2011/Organization.svc/web)."
    )


class LeadSourceMissingError(DynamicsError):
    """The platform's option is missing from Lead > Lead Source."""

    code = "lead_source_missing"
    default_message = "The Lead Source field has no option for the platform."
    default_action = (
        "Add the option as described in step 1 of the integration guide: Settings > Customizations > "
        "Customize the System > Entities > Lead > Fields > Lead Source, add the option, save and publish. "
        "Or let the portal add it (the CRM user needs customization privileges)."
    )


class ResponseTooLargeError(DynamicsError):
    """The response exceeded the configured size cap."""

    code = "response_too_large"
    default_message = "The CRM sent a response larger than the portal accepts."
    default_action = "Check the URL points to the CRM; if it does, ask the portal operator to raise the limit."


class ServerBusyError(DynamicsError):
    """The CRM is throttling requests (Server Busy / HTTP 503); try again later."""

    code = "server_busy"
    default_message = "The CRM server is busy."
    default_action = "Nothing to change: the portal retries later."
    retryable = True

    def __init__(self, message: str | None = None, *, error_code: int | None = None, **kw: Any) -> None:
        self.error_code = error_code
        super().__init__(message, **kw)


class CrmInUseError(DynamicsError):
    """Our own work already has as many requests in the CRM's hands as it may: this one was not sent."""

    code = "crm_in_use"
    default_message = "The CRM is busy with this integration's sync."
    default_action = "Nothing to change: test again when the sync shown in Sync history is done."
    retryable = True


class ServerError(DynamicsError):
    """The CRM failed with an internal or gateway error; usually transient."""

    code = "server_error"
    default_message = "The CRM server had an internal error."
    default_action = "The portal retries later; if it persists, check the CRM server's event log."
    retryable = True


class BatchTooLargeError(DynamicsError):
    """An ExecuteMultiple batch exceeds the server's MaxBatchSize (which the fault's ErrorDetails carry)."""

    code = "batch_too_large"
    default_message = f"A batch may hold at most {MAX_BATCH_SIZE} requests."
    default_action = "Send smaller batches."

    def __init__(self, message: str | None = None, *, max_batch_size: int | None = None, **kw: Any) -> None:
        self.max_batch_size = max_batch_size
        super().__init__(message, **kw)


class FaultError(DynamicsError):
    """Any other OrganizationServiceFault, with its ErrorCode and message."""

    code = "fault"
    default_message = "The CRM refused the request."
    default_action = "Read the CRM's message; it usually names the field or record at fault."

    def __init__(self, message: str | None = None, *, error_code: int | None = None, **kw: Any) -> None:
        self.error_code = error_code
        super().__init__(message, **kw)

    @property
    def error_code_hex(self) -> str | None:
        """The ErrorCode as the unsigned hex form the CRM documentation uses (0x80040217)."""
        if self.error_code is None:
            return None
        return f"0x{self.error_code & 0xFFFFFFFF:08X}"


class TransientItemError(FaultError):
    """One record of a batch met a passing fault (SQL timeout, deadlock, "try again later"): send it again."""

    code = "transient"
    default_message = "The CRM could not write this record just now."
    default_action = "Nothing to change: the portal tries again."
    retryable = True


class NotFoundError(FaultError):
    """The record does not exist (-2147220969)."""

    code = "not_found"
    default_message = "The CRM record does not exist."
    default_action = "The record was probably deleted in the CRM; the portal will recreate or skip it."


class DuplicateError(FaultError):
    """A duplicate key or duplicate-detection rule stopped the write (-2147220937)."""

    code = "duplicate"
    default_message = "The CRM refused a duplicate record."
    default_action = "Check the CRM's duplicate-detection rules and the existing record."


class PrivilegeError(FaultError):
    """The CRM user lacks a privilege; the message names it when the CRM does."""

    code = "privilege"
    default_message = "The CRM user is missing a privilege."
    default_action = (
        "Give the CRM user a security role with the missing privilege (for example Sales Manager, "
        "Marketing Manager or System Customizer)."
    )

    def __init__(self, message: str | None = None, *, privilege: str | None = None, **kw: Any) -> None:
        self.privilege = privilege
        super().__init__(message, **kw)


_PRIVILEGE_RE = re.compile(r"\bprv[A-Za-z0-9_]+")


# Faults that say the sign-in itself was refused: BadAuthTicket 0x8004A102, TamperedAuthTicket 0x8004A105,
# SystemUserDisabled 0x8004A112, AccessTokenExpired 0x8005F101.
SIGN_IN_FAULTS = frozenset({ERROR_BAD_AUTH_TICKET, -2147180283, -2147180270, -2147094271})
ERROR_SQL_TIMEOUT = -2147204783  # 0x80044151 SqlTimeout: the database did not answer in time
ERROR_PLUGIN_ABORTED = -2147220891  # 0x80040265 a plug-in refused the operation (IsvAborted)
# SQL Server's command timeout and deadlock-victim messages, and the CRM's generic "try again later".
_TRANSIENT_RE = re.compile(
    r"(?i)timeout expired|deadlocked on lock resources|rerun the transaction|try again later|"
    r"try the operation again"
)


def _int_detail(details: Mapping[str, Any] | None, key: str) -> int | None:
    value = (details or {}).get(key)
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def error_from_fault(
    error_code: int | None, message: str, raw: str = "", details: Mapping[str, Any] | None = None
) -> DynamicsError:
    """Map an OrganizationServiceFault (ErrorCode, Message, raw text, ErrorDetails) to the right error class."""
    text = message or "The CRM refused the request."
    detail = raw or None
    if error_code in SIGN_IN_FAULTS:
        return AuthFailedError(
            f"The CRM refused the sign-in ticket (BadAuthTicket): {text}",
            action="Check the CRM user's password and that the account is enabled; then test the connection.",
            detail=detail,
        )
    if error_code == ERROR_NOT_FOUND:
        return NotFoundError(text, error_code=error_code, detail=detail)
    if error_code in (ERROR_DUPLICATE_KEY, ERROR_DUPLICATE_RULE):
        return DuplicateError(text, error_code=error_code, detail=detail)
    if error_code in (ERROR_PRIVILEGE, ERROR_ACCESS_CHECK):
        found = _PRIVILEGE_RE.search(message or "") or _PRIVILEGE_RE.search(raw or "")
        privilege = found.group(0) if found else None
        action = PrivilegeError.default_action
        if privilege:
            action = f"Give the CRM user a security role that includes the privilege {privilege}."
        return PrivilegeError(text, privilege=privilege, error_code=error_code, action=action, detail=detail)
    if "server busy" in (message or "").lower():
        return ServerBusyError(text, error_code=error_code, detail=detail)
    size = _int_detail(details, "MaxBatchSize")
    if size is None and "MaxBatchSize" in (raw or ""):
        found = re.search(r"MaxBatchSize=(\d+)", raw or "")
        size = int(found.group(1)) if found else None
    if size is not None or "MaxBatchSize" in (message or ""):
        return BatchTooLargeError(text, max_batch_size=size, detail=detail)
    if error_code == ERROR_SQL_TIMEOUT or (
            error_code != ERROR_PLUGIN_ABORTED and _TRANSIENT_RE.search(message or "")):
        # A plug-in's refusal (business logic) is final, whatever its text says about trying again.
        return TransientItemError(text, error_code=error_code, detail=detail)
    return FaultError(text, error_code=error_code, detail=detail)
