"""Retention of personal payloads in the audit trail: shred what policy data no longer lets us keep.

Policy data ``audit.retention_days`` (``governance/policies/audit/data.json``, shape-checked by
``policy_bundle``) maps an entry's action to the days its sealed personal payload is kept, with
``default`` for every other action::

    {"generation.request": 90, "default": 365}

Each sealed payload has its own data key, wrapped by its subject's key (``payload_keys``).
``run`` drops the wrapped keys older than their action's period: those payloads become
unreadable (``reveal`` shows ``{"erased": true, "expired": true}``), the subject's newer payloads
and their identity stay, and the chain is untouched, so ``audit verify`` still passes. A run that
shredded anything records an ``audit.retention`` entry saying how many payloads of which action,
which data keys and the cut-off times. Periods follow the policy in force when the job runs:
shortening one applies to payloads already stored.

Worker processes run it every ``INTERVAL_S`` seconds beside their sweep (``platform/queue/worker.py``);
several workers may run it at once: each data key is shredded (and counted) by exactly one of
them. ``latentops audit retention [--dry-run]`` runs it now.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.orm import utcnow
from latentops.governance import audit, payload_keys, policy
from latentops.governance.tables.identity import AuditPayloadKey

log = logging.getLogger(__name__)

POLICY_KEY = "audit.retention_days"
INTERVAL_S = 3600.0
# Data key ids listed in the run's audit entry (the counts cover all of them).
LISTED_KEYS = 1000


@dataclass
class RetentionRun:
    """What one run shredded (or, with ``dry_run``, would shred)."""

    retention_days: dict[str, int]
    by_action: dict[str, int] = field(default_factory=dict)
    payload_keys: list[int] = field(default_factory=list)
    dry_run: bool = False
    at: dt.datetime = field(default_factory=utcnow)

    @property
    def shredded(self) -> int:
        return sum(self.by_action.values())

    def to_json(self) -> dict[str, Any]:
        return {"shredded": self.shredded, "by_action": dict(sorted(self.by_action.items())),
                "payload_keys": self.payload_keys[:LISTED_KEYS], "more_keys": len(self.payload_keys) > LISTED_KEYS,
                "retention_days": self.retention_days, "at": audit.format_time(self.at), "dry_run": self.dry_run}


def retention_days() -> dict[str, int]:
    """The periods in force (policy data ``audit.retention_days``, shape-checked when loaded)."""
    return {str(action): int(days) for action, days in policy.policy_data(POLICY_KEY).items()}


def run(session: Session, *, actor: audit.Actor | str = "system", dry_run: bool = False,
        now: dt.datetime | None = None) -> RetentionRun:
    """Shred the payloads past their period, in ``session``'s transaction, and record it."""
    days = retention_days()
    report = RetentionRun(retention_days=days, dry_run=dry_run, at=now or utcnow())
    expired = payload_keys.expired_clause(days, report.at)
    if dry_run:
        rows = session.execute(sa.select(AuditPayloadKey.id, AuditPayloadKey.action).where(expired)
                               .order_by(AuditPayloadKey.id)).all()
    else:
        # RETURNING: under concurrent runs each key is reported by the run whose update took it.
        rows = session.execute(sa.update(AuditPayloadKey).where(expired)
                               .values(wrapped=None, shredded_at=report.at, shred_reason="retention")
                               .returning(AuditPayloadKey.id, AuditPayloadKey.action)).all()
    report.by_action = dict(Counter(str(action) for _, action in rows))
    report.payload_keys = sorted(int(key_id) for key_id, _ in rows)
    if report.shredded and not dry_run:
        audit.record(session, actor=actor, action="audit.retention", resource="audit:personal",
                     details=report.to_json())
    log.info("audit retention %s %d personal payload(s)", "would shred" if dry_run else "shredded", report.shredded,
             extra={"by_action": report.by_action})
    return report


_last_run: dict[str, float] = {}
_last_lock = threading.Lock()


def due(database: str, interval_s: float = INTERVAL_S) -> bool:
    """Whether this process should run retention on ``database`` now (at most every ``interval_s``);
    claims the run when it is."""
    now = time.monotonic()
    with _last_lock:
        last = _last_run.get(database)
        if last is not None and now - last < interval_s:
            return False
        _last_run[database] = now
        return True
