"""HTTP-facing errors of the control plane: one record, rendered by one middleware."""

from __future__ import annotations

from nixfleet.core.dispatch import ConfirmVerdict
from nixfleet.core.errors import NixfleetError


class ApiError(NixfleetError):
    """An answer other than success: `status`, a stable `code`, a one-line message."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.http_status = status
        self.code = code
        self.retry_after = retry_after


def not_ready(reason: str) -> ApiError:
    """The readiness gate's answer: 503, Retry-After 30, saying what is awaited."""
    return ApiError(503, "control plane not ready", reason, retry_after=30)


AWAITING_FLEET = "awaiting the first verified fleet artifact (channel-refs or build-time)"
NOT_READY = not_ready(AWAITING_FLEET)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


CONFIRM_STATUS = {
    ConfirmVerdict.ACCEPT: 204,
    ConfirmVerdict.ALREADY_CONFIRMED: 204,
    ConfirmVerdict.ORPHAN: 204,
    ConfirmVerdict.EXPIRED: 410,
    ConfirmVerdict.REJECT: 410,
}
"""The status of each confirm verdict (a MISMATCH is raised as 409 with its reason)."""
