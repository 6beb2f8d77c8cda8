"""Erasure of personal data in the audit trail by crypto-shredding, and audited reveals.

Personal data never enters the chain in clear: ``audit.record(..., personal={...},
subject="user:42")`` seals it under a data key wrapped by that subject's own key
(``payload_keys``), and actors and e-mail addresses are written as pseudonyms whose identities are
sealed under their subject's key (``identities``). An erasure request (GDPR Art. 17) destroys the
subject's keys and wrapped data keys and unlinks their identities. The ciphertext and the
pseudonyms stay, so every hash, the Merkle tree and every signed checkpoint still verify, but
nobody can read the personal data or tell whose entries they were. ``reveal`` shows
``{"erased": true}`` in place of the data.

Revealing identities (``reveal_identities``) is for compliance officers and admins (the callers
check ``audit.reveal``) and is itself audited: an ``audit.reveal`` entry names the entries and
pseudonyms revealed.

Keys live in ``audit_subject_keys`` and ``audit_payload_keys``, identities in
``audit_identities``; database backups hold them too, so the erasure is complete once the backups
taken before it expire (docs/audit.md).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.core.orm import utcnow
from latentops.core.tables import User
from latentops.governance import audit, identities, payload_keys
from latentops.governance.sealing import check_subject, seal
from latentops.governance.tables import AuditSubjectKey
from latentops.governance.tables.identity import AuditPayloadKey

log = logging.getLogger(__name__)

# Sealing and revealing are part of this module's API too.
__all__ = ["Erasure", "erase", "erase_subject", "reveal", "reveal_identities", "seal"]

# Subjects that are pseudonymous already and may be named in the chain as they are.
_PSEUDONYMOUS = re.compile(r"[a-z_]+:\d+|actor:pseudonym:[0-9a-f]{24}|pseudonym:[0-9a-f]{24}")


def reveal(session: Session, details: str | dict[str, Any]) -> dict[str, Any]:
    """Details as a reader sees them: sealed personal data decrypted, or marked erased."""
    return payload_keys.reveal(session, details)


@dataclass
class Erasure:
    """What one erasure destroyed."""

    subject: str  # as named in the trail: ``user:42`` or a pseudonym, never an identity in clear
    keys: int = 0  # subject keys destroyed
    payload_keys: int = 0  # wrapped data keys dropped
    pseudonyms: list[str] = field(default_factory=list)  # identities unlinked
    decisions: int = 0  # policy decision records whose actor was replaced by the pseudonym

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "keys_erased": self.keys, "payload_keys_erased": self.payload_keys,
                "identities_erased": self.pseudonyms, "decisions_pseudonymised": self.decisions}


def _user_email(session: Session, subject: str) -> str | None:
    if subject.startswith("user:") and subject[5:].isdigit():
        return session.scalar(sa.select(User.email).where(User.id == int(subject[5:])))
    return None


def _scope(session: Session, subject: str) -> tuple[set[str], list[Any]]:
    """The key subjects and live identity rows an erasure of ``subject`` covers: a subject
    (``user:42``) with the identities sealed under it, or an identity (an e-mail address, a
    pseudonym) with its subject and that subject's other identities."""
    rows = {row.id: row for row in identities.rows_of(session, subject=subject, identity=subject)}
    email = _user_email(session, subject)
    if email is not None:
        rows.update((row.id, row) for row in identities.rows_of(session, identity=email))
    subjects = {subject} | {row.subject for row in rows.values() if row.subject}
    for name in list(subjects):
        rows.update((row.id, row) for row in identities.rows_of(session, subject=name))
    return subjects, list(rows.values())


def _known(session: Session, subjects: set[str]) -> bool:
    for table in (AuditSubjectKey, AuditPayloadKey):
        if session.execute(sa.select(table.id).where(table.subject.in_(subjects)).limit(1)).first() is not None:
            return True
    return False


def erase(session: Session, *, subject: str, actor: audit.Actor | str, reason: str = "") -> Erasure:
    """Crypto-shred ``subject`` (``user:42``, an e-mail address or another actor, or a pseudonym):
    their keys, the data keys those wrap, and their identities; audited.

    Raises ``NotFound``, changing nothing, when the trail holds nothing of ``subject``.
    """
    subject = subject.strip()
    check_subject(subject)
    subjects, rows = _scope(session, subject)
    if not rows and not _known(session, subjects):
        raise NotFound(f"subject: the audit trail holds no personal data or identity of {subject!r}")
    decisions = _pseudonymise_decisions(session, rows)  # while the identities can still be read
    # No chain lock needed: an entry sealed concurrently either read the key before this update
    # (its ciphertext is shredded with the key) or reads NULL after it and gets a fresh key.
    result: Any = session.execute(
        sa.update(AuditSubjectKey)
        .where(AuditSubjectKey.subject.in_(sorted(subjects)), AuditSubjectKey.key.is_not(None))
        .values(key=None, erased_at=utcnow())
    )
    named = subject if _PSEUDONYMOUS.fullmatch(subject) else (
        rows[0].pseudonym if rows else "sha256:" + hashlib.sha256(subject.encode()).hexdigest()[:24])
    done = Erasure(subject=named, keys=int(result.rowcount),
                   payload_keys=payload_keys.shred_subject(session, sorted(subjects)),
                   pseudonyms=identities.erase(session, rows), decisions=decisions)
    # The reason must not bring an erased address back into the chain (it would get a new pseudonym).
    told = identities.EMAIL_RE.sub("(address removed)", reason.replace(subject, named))
    audit.record(session, actor=actor, action="audit.subject.erase", resource=f"subject:{named}",
                 details={**done.to_json(), "reason": told})
    log.info("erased subject %s: %d key(s), %d data key(s), %d identit(ies)", named, done.keys, done.payload_keys,
             len(done.pseudonyms))
    return done


def _pseudonymise_decisions(session: Session, rows: Sequence[Any]) -> int:
    """Policy decision records (``policy_decisions``, outside the chain) name their actor in clear:
    replace each of the subject's identities there by its pseudonym, before the identity is gone."""
    from latentops.governance.tables import PolicyDecision

    revealed = identities.reveal(session, [row.pseudonym for row in rows])
    changed = 0
    for pseudonym, identity in revealed.items():
        if identity:
            result: Any = session.execute(sa.update(PolicyDecision).where(PolicyDecision.actor == identity)
                                          .values(actor=pseudonym))
            changed += int(result.rowcount)
    return changed


def erase_subject(session: Session, *, subject: str, actor: audit.Actor | str, reason: str = "") -> int:
    """Destroy every key of ``subject`` and unlink their identities (``erase``); the subject keys destroyed."""
    return erase(session, subject=subject, actor=actor, reason=reason).keys


def reveal_identities(session: Session, entries: Sequence[dict[str, Any]], *, actor: audit.Actor | str,
                      personal: bool = False) -> dict[str, str | None]:
    """Reveal who is behind the pseudonyms of ``entries`` (query results, changed in place); audited.

    Each entry gets ``identity``: the actor's identity (a system actor as it is, None once erased);
    ``details_revealed``, when present (``personal``), has pseudonyms replaced by identities too.
    Returns pseudonym -> identity (None: erased). The caller checks ``audit.reveal`` first.
    """
    wanted: set[str] = set()
    for entry in entries:
        wanted |= identities.pseudonyms_in([entry["actor"], entry["resource"], entry["details"]])
    found = identities.reveal(session, wanted)
    for entry in entries:
        actor_name = str(entry["actor"])
        entry["identity"] = found.get(actor_name) if identities.is_pseudonym(actor_name) else actor_name
        if personal or "details_revealed" in entry:
            entry["details_revealed"] = identities.substitute(entry.get("details_revealed") or reveal(session, entry["details"]),
                                                              found)
    _record_reveal(session, [int(e["seq"]) for e in entries], found, actor=actor, personal=personal)
    return found


def _record_reveal(session: Session, seqs: Iterable[int], found: dict[str, str | None], *,
                   actor: audit.Actor | str, personal: bool) -> None:
    audit.record(session, actor=actor, action="audit.reveal", resource="audit:identities",
                 details={"seqs": sorted(seqs), "revealed": sorted(k for k, v in found.items() if v is not None),
                          "erased": sorted(k for k, v in found.items() if v is None), "personal": personal})
