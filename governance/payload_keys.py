"""Per-entry data keys for sealed personal payloads, so that one entry's payload can expire alone.

``audit.record(..., personal=..., subject="user:42")`` seals the payload with a fresh AES-256-GCM
**data key** of its own, and stores that data key only wrapped (AES-256-GCM) by the subject's key
(``audit_subject_keys``) in ``audit_payload_keys`` (``tables/identity.py``), with the entry's
action and time. The chain holds ``details["sealed"] = {subject, payload_key, alg, nonce,
ciphertext}``; the entry hash covers the ciphertext only.

* **Retention** (``governance/retention.py``) sets ``wrapped`` to NULL for the payloads whose
  action's period is over: that entry's data is gone, the subject's newer entries stay readable.
* **Erasure** destroys the subject's key, which unwraps every data key of the subject; the wrapped
  keys are set to NULL too.

Why per-entry keys rather than per-subject-per-period keys: expiry is then exact to the entry and
follows the policy in force when retention runs (shortening a period applies to what is already
stored), at the cost of one small row per sealed entry. Payloads sealed before these keys existed
(``details["sealed"]`` with ``key_id``: sealed with the subject key itself) are read as before and
go only with their subject's erasure.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation
from latentops.core.orm import utcnow
from latentops.governance import sealing
from latentops.governance.audit_chain import SEALED_KEY, canonical_details
from latentops.governance.tables import AuditSubjectKey
from latentops.governance.tables.identity import AuditPayloadKey

ALGORITHM = "A256GCM"
NONCE_BYTES = 12
PAYLOAD_KEYS = AuditPayloadKey.__table__
_INSERT = PAYLOAD_KEYS.insert().returning(PAYLOAD_KEYS.c.id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _wrap_aad(subject: str, subject_key_id: int, action: str) -> bytes:
    return f"latentops-audit-data-key/v1|{subject}|{subject_key_id}|{action}".encode()


def _aad(subject: str, payload_key_id: int, action: str) -> bytes:
    # Binds the ciphertext to its subject, data key and action: it cannot be moved to another entry.
    return f"latentops-audit-personal/v2|{subject}|{payload_key_id}|{action}".encode()


def seal(session: Session, *, subject: str, data: Mapping[str, Any], action: str) -> dict[str, Any]:
    """Encrypt ``data`` for ``subject`` under a new data key wrapped by the subject's key."""
    sealing.check_subject(subject)
    plaintext = canonical_details(data).encode("utf-8")
    key = sealing.current_key(session, subject)
    assert key.key is not None
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = wrap_nonce + AESGCM(key.key).encrypt(wrap_nonce, data_key, _wrap_aad(subject, key.id, action))
    payload_key_id = session.execute(_INSERT, {"subject": subject, "subject_key_id": key.id, "action": action,
                                               "created_at": utcnow(), "wrapped": wrapped}).scalar_one()
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(subject, payload_key_id, action))
    return {"subject": subject, "payload_key": payload_key_id, "alg": ALGORITHM, "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext)}


def _open(session: Session, sealed: Mapping[str, Any]) -> dict[str, Any]:
    subject = sealed["subject"]
    row = session.get(AuditPayloadKey, sealed["payload_key"])
    if row is None or row.wrapped is None:
        gone: dict[str, Any] = {"subject": subject, "erased": True}
        if row is not None and row.shred_reason == "retention":
            gone["expired"] = True
        return gone
    key = session.get(AuditSubjectKey, row.subject_key_id)
    if key is None or key.key is None:
        return {"subject": subject, "erased": True}
    try:
        data_key = AESGCM(key.key).decrypt(row.wrapped[:NONCE_BYTES], row.wrapped[NONCE_BYTES:],
                                           _wrap_aad(row.subject, key.id, row.action))
        data = AESGCM(data_key).decrypt(_unb64(sealed["nonce"]), _unb64(sealed["ciphertext"]),
                                        _aad(subject, row.id, row.action))
    except InvalidTag:
        raise IntegrityViolation(f"sealed personal data for {subject} does not decrypt with data key {row.id}") from None
    return {"subject": subject, "data": json.loads(data)}


def reveal(session: Session, details: str | Mapping[str, Any]) -> dict[str, Any]:
    """Details as a reader sees them: sealed personal data decrypted, or marked erased (and
    ``expired`` when retention shredded it)."""
    plain = dict(json.loads(details) if isinstance(details, str) else details)
    sealed = plain.get(SEALED_KEY)
    if not isinstance(sealed, Mapping) or "payload_key" not in sealed:
        return sealing.reveal(session, plain)  # no sealed data, or sealed with the subject key itself
    plain.pop(SEALED_KEY)
    plain["personal"] = _open(session, sealed)
    return plain


def shred_subject(session: Session, subjects: list[str]) -> int:
    """Drop the wrapped data keys of ``subjects`` (their keys are destroyed too); the number shredded."""
    if not subjects:
        return 0
    result: Any = session.execute(
        sa.update(AuditPayloadKey)
        .where(AuditPayloadKey.subject.in_(subjects), AuditPayloadKey.wrapped.is_not(None))
        .values(wrapped=None, shredded_at=utcnow(), shred_reason="erasure"))
    return int(result.rowcount)


def expired_clause(retention: Mapping[str, int], now: dt.datetime) -> Any:
    """Live data keys older than their action's retention period (``default`` for unnamed actions)."""
    named = {action: days for action, days in retention.items() if action != "default"}
    clauses = [sa.and_(AuditPayloadKey.action == action, AuditPayloadKey.created_at < now - dt.timedelta(days=days))
               for action, days in named.items()]
    if "default" in retention:
        clauses.append(sa.and_(AuditPayloadKey.action.not_in(list(named)) if named else sa.true(),
                               AuditPayloadKey.created_at < now - dt.timedelta(days=retention["default"])))
    if not clauses:
        return sa.false()
    return sa.and_(AuditPayloadKey.wrapped.is_not(None), sa.or_(*clauses))
