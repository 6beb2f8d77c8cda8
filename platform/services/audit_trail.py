"""Reading the audit trail for a caller: query filters and the audited verification report.

Shared by ``/api/v1/audit`` and the portal's audit page. ``filters_of`` turns the query's text
fields into ``compliance.Filters`` (a bad time is ``InvalidInput`` naming the field);
``verify_report`` recomputes the hash chain and Merkle tree, checks every signed checkpoint
against the keyring (rotated-out keys too) and records the verification itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation
from latentops.core.settings import Settings
from latentops.governance import audit, checkpoints, compliance, verification
from latentops.governance.access import Principal


def filters_of(since: str | None, until: str | None, actor: str | None, action: str | None, resource: str | None,
               outcome: str | None) -> compliance.Filters:
    return compliance.Filters(since=compliance.parse_time(since, "since"), until=compliance.parse_time(until, "until"),
                              actor=actor or None, action=action or None, resource=resource or None,
                              outcome=outcome or None)


def signing_key_path(settings: Settings) -> Path:
    return checkpoints.default_key_path(settings)


def verify_report(session: Session, settings: Settings, principal: Principal) -> dict[str, Any]:
    """Verify the whole trail and every checkpoint; audit the verification; return report + status."""
    keyring = checkpoints.signing_keyring(signing_key_path(settings))  # old keys kept across rotations
    sink = checkpoints.open_sink(checkpoints.default_sink_location(settings))
    report = verification.verify(session, keyring=keyring, sink=sink)
    latest = checkpoints.latest(session)
    result = {**report.to_json(), "signed_checkpoints_checked": bool(keyring),
              "latest_checkpoint": ({"id": latest.id, **checkpoints.statement(latest)} if latest else None)}
    try:
        audit.record(session, actor=principal.email, action="audit.verify", resource="audit:log",
                     outcome="success" if report.ok else "failure", details=report.to_json())
    except IntegrityViolation:
        session.rollback()  # the writer refused a damaged chain and alarmed; the report says why
    return result
