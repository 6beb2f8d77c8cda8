"""Reading the audit trail for a caller: query filters, export names and the audited verification report.

Shared by ``/api/v1/audit`` and the portal's audit page. ``filters_of`` turns the query's text
fields into ``compliance.Filters`` (a bad time is ``InvalidInput`` naming the field);
``verify_report`` recomputes the hash chain and Merkle tree, checks every signed checkpoint
against the keyring (rotated-out keys too) and records the verification itself.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, InvalidInput
from latentops.core.settings import Settings
from latentops.governance import audit, checkpoints, compliance, verification
from latentops.governance.access import Principal

MAX_EXPORT_NAME_BYTES = 200


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


def export_name(name: str | None, fmt: str) -> str:
    """The entries file's name inside the zip: ``name`` when given (a plain file name), else ``audit.<fmt>``."""
    if name is None:
        return f"audit.{fmt}"
    if (not name.strip() or name.startswith(".") or not name.isprintable() or "/" in name or "\\" in name
            or len(name.encode("utf-8")) > MAX_EXPORT_NAME_BYTES):
        raise InvalidInput(f"name: must be a plain file name (no folders, not hidden, at most "
                           f"{MAX_EXPORT_NAME_BYTES} bytes), got {name!r}")
    return name


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def download_name(fmt: str, filters: compliance.Filters, now: dt.datetime | None = None) -> str:
    """The zip's file name: what it holds (format), which time range, and when it was made, e.g.
    ``latentops-audit-csv-all-20261206T041500Z.zip`` or
    ``latentops-audit-jsonl-from-20260101T000000Z-to-20260201T000000Z-20261206T041500Z.zip``;
    ``-filtered`` marks an export narrowed by actor, action, resource or outcome."""
    if filters.since is None and filters.until is None:
        span = "all"
    else:
        span = "-".join(part for part in (f"from-{_stamp(filters.since)}" if filters.since else "",
                                           f"to-{_stamp(filters.until)}" if filters.until else "") if part)
    narrowed = any(getattr(filters, key) for key in ("actor", "action", "resource", "outcome"))
    return f"latentops-audit-{fmt}-{span}{'-filtered' if narrowed else ''}-{_stamp(now or dt.datetime.now(dt.UTC))}.zip"
