"""Erasure of personal data in the audit trail by crypto-shredding.

Personal data never enters the chain in clear: ``audit.record(..., personal={...},
subject="user:42")`` seals it with that subject's own key (``sealing``). An erasure request
(GDPR Art. 17) overwrites the subject's keys with NULL. The ciphertext stays, so every hash, the
Merkle tree and every signed checkpoint still verify, but nobody can read the personal data any
more. ``reveal`` shows ``{"erased": true}`` in its place.

Keys live in ``audit_subject_keys``; database backups hold them too, so the erasure is complete
once the backups taken before it expire (docs/audit.md).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.orm import utcnow
from latentops.governance import audit
from latentops.governance.sealing import check_subject, reveal, seal
from latentops.governance.tables import AuditSubjectKey

log = logging.getLogger(__name__)

# Sealing and revealing (``sealing``) are part of this module's API too.
__all__ = ["erase_subject", "reveal", "seal"]


def erase_subject(session: Session, *, subject: str, actor: audit.Actor | str, reason: str = "") -> int:
    """Destroy every key of ``subject`` (crypto-shredding); audited. Returns the keys destroyed."""
    check_subject(subject)
    # No chain lock needed: an entry sealed concurrently either read the key before this update
    # (its ciphertext is shredded with the key) or reads NULL after it and gets a fresh key.
    result: Any = session.execute(
        sa.update(AuditSubjectKey)
        .where(AuditSubjectKey.subject == subject, AuditSubjectKey.key.is_not(None))
        .values(key=None, erased_at=utcnow())
    )
    erased = result.rowcount
    audit.record(session, actor=actor, action="audit.subject.erase", resource=f"subject:{subject}",
                 details={"keys_erased": erased, "reason": reason})
    log.info("erased %d audit key(s) of subject %s", erased, subject)
    return int(erased)
