"""Personal data in audit details: sealed with its subject's own key.

The audit trail is append-only and every entry's hash covers its details, so personal data (a
prompt, an email address) cannot be deleted from an entry without breaking the chain. Instead it
never enters the chain in clear: ``audit.record(..., personal={...}, subject="user:42")`` encrypts
it here (``seal``) with that subject's own AES-256-GCM key and stores only the ciphertext under
``details["sealed"]``. The entry hash covers the ciphertext.

Erasing the subject (``erasure.erase_subject``) destroys the keys; ``reveal`` then shows
``{"erased": true}`` in place of the data while every hash still verifies.

Subjects are pseudonymous ids (``user:42``), not emails: the subject itself is stored in clear.
Keys live in ``audit_subject_keys``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, InvalidInput
from latentops.core.orm import utcnow
from latentops.governance.audit_chain import SEALED_KEY, canonical_details
from latentops.governance.tables import AuditSubjectKey

ALGORITHM = "A256GCM"
SUBJECT_LIMIT = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_subject(subject: str) -> None:
    if not subject or len(subject) > SUBJECT_LIMIT:
        raise InvalidInput(f"subject: must be 1 to {SUBJECT_LIMIT} characters (got {subject!r})")


def _aad(subject: str, key_id: int) -> bytes:
    # Binds the ciphertext to its subject and key: it cannot be moved to another subject's entry.
    return f"latentops-audit-personal/v1|{subject}|{key_id}".encode()


def current_key(session: Session, subject: str) -> AuditSubjectKey:
    """The subject's current key, made when it has none (first entry, or back after an erasure)."""
    key = session.execute(
        sa.select(AuditSubjectKey)
        .where(AuditSubjectKey.subject == subject, AuditSubjectKey.key.is_not(None))
        .order_by(AuditSubjectKey.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if key is None:
        # A subject erased earlier who comes back gets a fresh key: their old data stays unreadable.
        key = AuditSubjectKey(subject=subject, key=AESGCM.generate_key(bit_length=256), created_at=utcnow())
        session.add(key)
        session.flush()
    return key


def seal(session: Session, *, subject: str, data: Mapping[str, Any], context: str = "") -> dict[str, Any]:
    """Encrypt ``data`` for ``subject`` (called by ``audit.record`` in the caller's transaction)."""
    check_subject(subject)
    plaintext = canonical_details(data).encode("utf-8")
    key = current_key(session, subject)
    assert key.key is not None
    nonce = os.urandom(12)
    ciphertext = AESGCM(key.key).encrypt(nonce, plaintext, _aad(subject, key.id))
    return {"subject": subject, "key_id": key.id, "alg": ALGORITHM, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}


def reveal(session: Session, details: str | Mapping[str, Any]) -> dict[str, Any]:
    """Details as a reader sees them: sealed personal data decrypted, or marked erased."""
    plain = dict(json.loads(details) if isinstance(details, str) else details)
    sealed = plain.pop(SEALED_KEY, None)
    if sealed is None:
        return plain
    key = session.get(AuditSubjectKey, sealed["key_id"])
    if key is None or key.key is None:
        plain["personal"] = {"subject": sealed["subject"], "erased": True}
        return plain
    try:
        data = AESGCM(key.key).decrypt(_unb64(sealed["nonce"]), _unb64(sealed["ciphertext"]),
                                       _aad(sealed["subject"], key.id))
    except InvalidTag:
        raise IntegrityViolation(f"sealed personal data for {sealed['subject']} does not decrypt with key {key.id}") from None
    plain["personal"] = {"subject": sealed["subject"], "data": json.loads(data)}
    return plain
