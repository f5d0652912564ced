"""The error hierarchy: codes, actions, retryability and the ErrorCode mapping."""

from __future__ import annotations

import pytest

from portal.connectors.dynamics import errors as e


@pytest.mark.parametrize(
    ("code", "message", "cls", "stable"),
    [
        (-2147220969, "lead With Id = x Does Not Exist", e.NotFoundError, "not_found"),
        (-2147220937, "Cannot insert duplicate key", e.DuplicateError, "duplicate"),
        (-2147220685, "A duplicate record was found", e.DuplicateError, "duplicate"),
        (-2147220960, "Principal user is missing prvCreateLead privilege", e.PrivilegeError, "privilege"),
        (-2146233088, "Server Busy", e.ServerBusyError, "server_busy"),
        (-2147204783, "Timeout expired. The timeout period elapsed prior to completion of the operation.",
         e.TransientItemError, "transient"),
        (-2147204782, "Transaction (Process ID 61) was deadlocked on lock resources with another process and "
                      "has been chosen as the deadlock victim. Rerun the transaction.", e.TransientItemError,
         "transient"),
        (None, "The server was unable to process the request. Please try again later.", e.TransientItemError,
         "transient"),
        (-2147217149, "'account' entity doesn't contain attribute", e.FaultError, "fault"),
        (None, "The server is busy: Server Busy", e.ServerBusyError, "server_busy"),
    ],
)
def test_error_from_fault(code, message, cls, stable) -> None:  # noqa: ANN001
    err = e.error_from_fault(code, message, "<raw/>")
    assert type(err) is cls
    assert err.code == stable
    assert err.message == message
    assert err.action


def test_bad_auth_ticket_is_an_authentication_failure() -> None:
    err = e.error_from_fault(-2147180286, "The ticket specified for authentication is invalid.", "")
    assert type(err) is e.AuthFailedError and not err.retryable
    assert "BadAuthTicket" in err.message and err.action


def test_max_batch_size_comes_from_error_details() -> None:
    err = e.error_from_fault(-2147220989, "The request collection exceeds the maximum batch size.", "",
                             {"MaxBatchSize": 250})
    assert type(err) is e.BatchTooLargeError and err.max_batch_size == 250
    assert e.error_from_fault(-2147220989, "too many", "<raw/> MaxBatchSize=40").max_batch_size == 40


def test_privilege_names_the_missing_privilege() -> None:
    err = e.error_from_fault(-2147220960, "Principal user (Id=1) is missing prvReadList privilege (Id=2)", "")
    assert isinstance(err, e.PrivilegeError)
    assert err.privilege == "prvReadList"
    assert "prvReadList" in err.action


def test_retryable_flags_and_dict() -> None:
    assert e.ServerBusyError().retryable and e.ServerError().retryable and e.RequestTimeoutError().retryable
    assert not e.AuthFailedError().retryable and not e.FaultError().retryable
    assert "DOMAIN\\user" in e.AuthFailedError().action
    assert "/adfs/ls" in e.ClaimsAuthError().message
    assert "/web" in e.NotDynamicsError().action
    assert "Lead Source" in e.LeadSourceMissingError().action
    assert "outside your firewall" in e.UnreachableError().action
    assert e.BlockedUrlError("m").to_dict() == {"code": "blocked_url", "message": "m",
                                                "action": e.BlockedUrlError.default_action}
    assert e.FaultError("x", error_code=-2147220969).error_code_hex == "0x80040217"


def test_codes_are_unique() -> None:
    classes = [c for c in vars(e).values() if isinstance(c, type) and issubclass(c, e.DynamicsError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    assert {"invalid_url", "blocked_url", "unreachable", "tls", "timeout", "auth_failed", "claims_auth",
            "not_dynamics", "privilege", "lead_source_missing", "server_busy", "server_error", "fault",
            "not_found", "duplicate"} <= set(codes)


def test_a_plugin_refusal_asking_to_try_again_is_final_not_transient() -> None:
    from portal.connectors.dynamics.errors import FaultError, TransientItemError, error_from_fault

    refused = error_from_fault(-2147220891, "Credit check failed: please try again later.")  # 0x80040265
    assert isinstance(refused, FaultError) and not isinstance(refused, TransientItemError)


def test_a_sql_timeout_is_transient_by_its_code_in_any_language() -> None:
    from portal.connectors.dynamics.errors import TransientItemError, error_from_fault

    assert isinstance(error_from_fault(-2147204783, "Zeitlimit abgelaufen."), TransientItemError)  # 0x80044151
