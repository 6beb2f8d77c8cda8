"""The one exception tree of latentops.

Every error a user can cause derives from ``LatentopsError``. The REST API maps each class to an
HTTP status and the stable JSON body ``{"error", "detail", "reasons"}``; the CLI prints
``Name: detail`` on one line and exits non-zero. Catch the base class to catch the family.
"""

from __future__ import annotations

from collections.abc import Sequence


class LatentopsError(Exception):
    """Base class. ``detail`` is a sentence for humans; ``reasons`` are machine-readable extras."""

    status_code = 500
    error = "internal_error"

    def __init__(self, detail: str, *, reasons: Sequence[object] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reasons = list(reasons)

    def to_json(self) -> dict[str, object]:
        return {"error": self.error, "detail": self.detail, "reasons": self.reasons}


class InvalidInput(LatentopsError):
    """The request or a file in it is malformed; the message names the field or file."""

    status_code = 422
    error = "invalid_input"


class NotFound(LatentopsError):
    """The resource does not exist, or the caller may not know that it exists."""

    status_code = 404
    error = "not_found"


class Conflict(LatentopsError):
    """The request clashes with existing state (a duplicate name, a finished job)."""

    status_code = 409
    error = "conflict"


class AuthenticationFailed(LatentopsError):
    status_code = 401
    error = "authentication_failed"


class PolicyDenied(LatentopsError):
    """The policy engine refused the request; ``reasons`` carry rule ids and messages."""

    status_code = 403
    error = "policy_denied"


class QuotaExceeded(LatentopsError):
    status_code = 429
    error = "quota_exceeded"


class ServiceUnavailable(LatentopsError):
    """A backing service (database, broker, policy engine) cannot be reached."""

    status_code = 503
    error = "service_unavailable"


class SchemaNotMigrated(ServiceUnavailable):
    """The database's schema is older than this release (never migrated, or by an older one)."""

    error = "schema_not_migrated"


class ConfigurationError(LatentopsError):
    """The deployment's settings are invalid; raised at start-up."""

    status_code = 500
    error = "configuration_error"


class IntegrityViolation(LatentopsError):
    """Stored evidence (audit chain, checkpoint, content hash) does not verify."""

    status_code = 500
    error = "integrity_error"


def retry_after(error: Exception) -> dict[str, str]:
    """``Retry-After`` (seconds) for a 429 ``LatentopsError``: its ``retry_after_s`` reason, else a minute."""
    if getattr(error, "status_code", None) != 429:
        return {}
    reasons = getattr(error, "reasons", [])
    seconds = next((r["retry_after_s"] for r in reasons if isinstance(r, dict) and "retry_after_s" in r), 60)
    return {"Retry-After": str(max(1, int(seconds)))}
