"""Authenticity of pending audit rows: an HMAC made by the application, checked by the integrator.

``audit_pending`` must accept INSERTs from the application's database role, so the database alone
cannot tell an entry the application wrote from a row someone inserted with SQL. Every row
``audit.record`` writes therefore carries ``mac``: a random nonce and
``HMAC-SHA256(key, nonce, at, actor, action, resource, outcome, details)``, with a key kept outside
the database, beside the checkpoint signing key (``Settings.audit_mac_key``, default
``LATENTOPS_HOME/audit/pending-mac-key``: 32 random bytes as hex, mode 0600, created on first use
like the signing key). The integrator refuses a row

* without a MAC, or with one that does not verify (``forged``);
* whose MAC is already in the chain (``replayed``: a copy of a real row);
* whose time is more than ``Settings.audit_max_skew_s`` before the entry the application wrote
  just before it (``backdated``). "Before" is write order, the pending id (a sequence on
  PostgreSQL, AUTOINCREMENT on SQLite), not chain order: a transaction that records an entry and
  commits a minute later (a generation job renders between its policy decision and its commit)
  joins the chain after entries written meanwhile, and that is no reason to refuse it.

A refused row is **skipped**, not integrated: the entries after it are integrated as usual, so a
single inserted row cannot stop the trail. It stays in ``audit_pending`` (the table is
append-only), every process that meets it logs an ERROR and counts
``latentops_audit_pending_refused_total{reason}`` and the integrity alarm once, and
``latentops audit verify`` fails naming it until the database owner removes it.

The MAC is kept on the entry once integrated (``audit_entries.mac``, not hashed), so ``verify``
also catches a row appended to the chain directly, past the integrator.

Every process that writes or integrates entries of one database must use the same key file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings, get_settings
from latentops.governance.tables import AuditEntry

log = logging.getLogger(__name__)

MAC_CONTEXT = b"latentops audit pending v1\n"
NONCE_BYTES = 16

ALARMS = Counter("latentops_audit_integrity_alarms_total", "Appends refused because the audit chain head did not verify")
REFUSED = Counter("latentops_audit_pending_refused_total",
                  "Pending audit rows the integrator refused (no valid MAC, replayed, backdated), by reason",
                  ["reason"])


def key_path(settings: Settings) -> Path:
    assert settings.audit_mac_key is not None  # filled in by Settings
    return settings.audit_mac_key


_keys: dict[Path, bytes] = {}
_keys_lock = threading.Lock()


def load_or_create_key(path: Path) -> bytes:
    """The MAC key at ``path`` (32 bytes as hex), created on first use (mode 0600) and cached."""
    cached = _keys.get(path)
    if cached is not None:
        return cached
    with _keys_lock:
        if path not in _keys:
            _keys[path] = _read_or_create(path)
        return _keys[path]


def _read_or_create(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name and linked into place: another process creating the
        # key at the same moment loses the link and reads the winner's key, never a partial file.
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            log.warning("created the audit key %s", path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"audit MAC key {path.name}: not 32 bytes of hex ({error})") from None
    if len(key) < 32:
        raise InvalidInput(f"audit MAC key {path.name}: at least 32 bytes needed, it holds {len(key)}")
    return key


def current_key() -> bytes:
    return load_or_create_key(key_path(get_settings()))


def max_skew() -> dt.timedelta:
    return dt.timedelta(seconds=get_settings().audit_max_skew_s)


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def _message(nonce: str, fields: Mapping[str, Any]) -> bytes:
    at = _utc(fields["at"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = [nonce, at, fields["actor"], fields["action"], fields["resource"], fields["outcome"], fields["details"]]
    return MAC_CONTEXT + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def seal(fields: Mapping[str, Any], key: bytes | None = None) -> str:
    """The ``mac`` column of a new pending row: ``<nonce hex>:<HMAC-SHA256 hex>``."""
    nonce = secrets.token_hex(NONCE_BYTES)
    digest = hmac.new(key or current_key(), _message(nonce, fields), hashlib.sha256).hexdigest()
    return f"{nonce}:{digest}"


def valid(row: Any, key: bytes) -> bool:
    """Whether ``row`` (pending row or entry: at, actor, action, resource, outcome, details, mac)
    carries a MAC made with ``key`` over its content."""
    mac = getattr(row, "mac", None)
    if not isinstance(mac, str) or mac.count(":") != 1:
        return False
    nonce, digest = mac.split(":")
    try:
        expected = hmac.new(key, _message(nonce, row._mapping if hasattr(row, "_mapping") else vars(row)),
                            hashlib.sha256).hexdigest()
    except (KeyError, TypeError, AttributeError):
        return False
    return hmac.compare_digest(expected, digest)


@dataclass(frozen=True)
class Refusal:
    pending_id: int
    reason: str  # forged, replayed, backdated
    detail: str

    def line(self) -> str:
        return f"pending entry {self.pending_id} ({self.reason}): {self.detail}"


def written_before(session: Session, pending_id: int) -> dt.datetime | None:
    """The time of the chain's entry written last before pending row ``pending_id`` (write order)."""
    return session.execute(sa.select(AuditEntry.at).where(AuditEntry.pending_id < pending_id)
                           .order_by(AuditEntry.pending_id.desc()).limit(1)).scalar()


def judge(row: Any, *, key: bytes, previous_at: dt.datetime | None, skew: dt.timedelta,
          macs_in_chain: set[str]) -> Refusal | None:
    """Why the integrator must refuse pending ``row`` written after an entry of ``previous_at``; None if it may go."""
    what = f"{row.action} {row.resource} by {row.actor} at {_utc(row.at).isoformat()}"
    if not valid(row, key):
        reason = "no MAC" if not row.mac else "a MAC that does not verify"
        return Refusal(row.id, "forged", f"{what}: {reason}; the application did not write this row")
    if row.mac in macs_in_chain:
        return Refusal(row.id, "replayed", f"{what}: a copy of an entry already in the chain")
    if previous_at is not None and _utc(row.at) < _utc(previous_at) - skew:
        behind = (_utc(previous_at) - _utc(row.at)).total_seconds()
        return Refusal(row.id, "backdated", f"{what}: {behind:.1f}s before the entry it would follow "
                                            f"(at most {skew.total_seconds():g}s allowed)")
    return None


# Pending rows this process has refused, per database: skipped by later batches without another
# alarm (the rows stay in audit_pending; `audit verify` keeps naming them).
_refused: dict[str, set[int]] = {}
_refused_lock = threading.Lock()


def refused_ids(database: str) -> frozenset[int]:
    return frozenset(_refused.get(database, ()))


def refuse(database: str, refusal: Refusal) -> None:
    """Alarm (once per process and row) about a pending row the integrator will not integrate."""
    with _refused_lock:
        known = _refused.setdefault(database, set())
        if refusal.pending_id in known:
            return
        known.add(refusal.pending_id)
    REFUSED.labels(refusal.reason).inc()
    ALARMS.inc()
    log.error("audit integrity alarm: refusing %s; it stays pending and `latentops audit verify` fails until the "
              "database owner investigates and removes it", refusal.line(),
              extra={"pending_id": refusal.pending_id, "damage": refusal.reason})


def forget_refused() -> None:
    """Drop this process's memory of refused rows (after a database is replaced under the same URL)."""
    with _refused_lock:
        _refused.clear()
