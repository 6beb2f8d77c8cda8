"""Erasable actor identities: the chain holds pseudonyms, the identities sit under per-subject keys.

An audit entry's hash covers its actor, so an e-mail address written into ``audit_entries.actor``
could never be erased. ``audit.record`` therefore writes a **pseudonym** in its place
(``pseudonym:`` and 24 hex digits), and replaces every e-mail address in ``resource`` and
``details`` by the pseudonym of that address. ``audit_identities`` (``tables/identity.py``) keeps,
per identity:

* the pseudonym: **random**, not derived from the identity, so nothing in the chain (nor any key)
  turns it back into the identity, and it is stable because it is stored;
* ``lookup`` = HMAC-SHA256 of the normalised identity under a key kept outside the database
  (``identity-lookup-key`` beside the pending-entry MAC key, 32 random bytes as hex, mode 0600,
  created on first use): how ``audit query --actor alice@example.com`` finds alice's pseudonym
  without the identity stored in clear;
* the identity, sealed (AES-256-GCM, ``sealing.seal``) under the key of its subject: ``user:<id>``
  when the identity is a user's e-mail (the key that also seals that user's prompts), otherwise
  ``actor:<pseudonym>``.

Why a random pseudonym with a keyed-hash index, not the keyed hash itself as pseudonym: whoever
holds the HMAC key can recompute a keyed-hash pseudonym from a known e-mail address for ever, so an
erasure could not unlink the address from its entries. Erasure (``erase``) instead destroys the
subject's key and sets ``lookup``, ``subject`` and ``sealed`` to NULL: the pseudonym still stands
in the chain (every hash and checkpoint verifies) but nothing leads from it to a person, or from a
person to it. A subject who comes back gets a new pseudonym.

**System actors stay in clear**: ``system``, ``console`` and ``worker:<host>`` name processes,
not people. Everything else is pseudonymised, including ``cli:<account>`` (an operating-system
account is usually a person's), ``user:<id>`` and ``anonymous@<address>``.

Every process that writes or reads entries of one database must share the lookup key file (like
the MAC key); without it, queries by identity find nothing and the same person gets a second
pseudonym.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from latentops.core.orm import utcnow
from latentops.core.settings import get_settings
from latentops.core.tables import User
from latentops.governance import audit_mac, sealing
from latentops.governance.tables.identity import AuditIdentity

PSEUDONYM_PREFIX = "pseudonym:"
PSEUDONYM_RE = re.compile(r"pseudonym:[0-9a-f]{24}")
# An e-mail address inside any text: local part, @, a dotted domain with an alphabetic top label.
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+'-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
SYSTEM_ACTORS = frozenset({"system", "console"})
SYSTEM_PREFIXES = ("worker:",)
LOOKUP_CONTEXT = b"latentops audit identity lookup v1\n"
KEY_FILE = "identity-lookup-key"
IDENTITY_CONTEXT = "audit.identity"

T = TypeVar("T")


def is_system(actor: str) -> bool:
    """Whether ``actor`` names a process rather than a person (kept in clear)."""
    return actor in SYSTEM_ACTORS or actor.startswith(SYSTEM_PREFIXES)


def is_pseudonym(value: str) -> bool:
    return PSEUDONYM_RE.fullmatch(value) is not None


def normalise(identity: str) -> str:
    """The form that is looked up: e-mail addresses (and every other identity) are case-insensitive."""
    return identity.strip().lower()


def key_path() -> Path:
    return audit_mac.key_path(get_settings()).with_name(KEY_FILE)


def lookup_of(identity: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 of the normalised identity under the lookup key (hex)."""
    key = key or audit_mac.load_or_create_key(key_path())
    return hmac.new(key, LOOKUP_CONTEXT + normalise(identity).encode("utf-8"), hashlib.sha256).hexdigest()


def find(session: Session, identity: str) -> AuditIdentity | None:
    """The live (not erased) identity row of ``identity``, or of ``pseudonym:...`` itself."""
    if is_pseudonym(identity):
        return session.execute(sa.select(AuditIdentity).where(AuditIdentity.pseudonym == identity)).scalar_one_or_none()
    return session.execute(sa.select(AuditIdentity).where(AuditIdentity.lookup == lookup_of(identity))).scalar_one_or_none()


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(AuditIdentity)


def pseudonym_for(session: Session, actor: str) -> str:
    """The name written into the chain for ``actor``: system actors and pseudonyms as they are,
    anyone else's stable pseudonym (created, with the identity sealed, on their first entry)."""
    if is_system(actor) or is_pseudonym(actor):
        return actor
    lookup = lookup_of(actor)
    found = session.execute(sa.select(AuditIdentity.pseudonym).where(AuditIdentity.lookup == lookup)).scalar()
    if found is not None:
        return str(found)
    pseudonym = PSEUDONYM_PREFIX + secrets.token_hex(12)
    clear = normalise(actor)
    user_id = session.scalar(sa.select(User.id).where(User.email == clear)) if "@" in clear else None
    subject = f"user:{user_id}" if user_id is not None else f"actor:{pseudonym}"
    envelope = sealing.seal(session, subject=subject, data={"identity": actor.strip()}, context=IDENTITY_CONTEXT)
    # Two first entries of one identity at once: the second insert does nothing and both read the winner.
    session.execute(_insert(session).values(pseudonym=pseudonym, lookup=lookup, subject=subject,
                                            sealed=json.dumps(envelope), created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["lookup"]))
    return str(session.execute(sa.select(AuditIdentity.pseudonym).where(AuditIdentity.lookup == lookup)).scalar_one())


def _replace_emails(session: Session, text: str, cache: dict[str, str]) -> str:
    if "@" not in text:
        return text

    def swap(match: re.Match[str]) -> str:
        address = match.group(0)
        if address not in cache:
            cache[address] = pseudonym_for(session, address)
        return cache[address]

    return EMAIL_RE.sub(swap, text)


def pseudonymise(session: Session, value: T, cache: dict[str, str] | None = None) -> T:
    """``value`` (a string, or JSON-like details) with every e-mail address replaced by its pseudonym."""
    cache = {} if cache is None else cache
    if isinstance(value, str):
        return _replace_emails(session, value, cache)  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {key: pseudonymise(session, item, cache) for key, item in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return [pseudonymise(session, item, cache) for item in value]  # type: ignore[return-value]
    return value


def pseudonyms_in(value: Any) -> set[str]:
    """Every pseudonym named in ``value`` (a string, details as JSON text or as objects)."""
    if isinstance(value, str):
        return set(PSEUDONYM_RE.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(pseudonyms_in(item) for item in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(pseudonyms_in(item) for item in value)) if value else set()
    return set()


def reveal(session: Session, pseudonyms: Iterable[str]) -> dict[str, str | None]:
    """The identity behind each pseudonym; None where it was erased (or never existed)."""
    wanted = sorted(set(pseudonyms))
    found: dict[str, str | None] = dict.fromkeys(wanted)
    if not wanted:
        return found
    rows = session.execute(sa.select(AuditIdentity).where(AuditIdentity.pseudonym.in_(wanted))).scalars()
    for row in rows:
        if row.sealed is None:
            continue
        personal = sealing.reveal(session, {sealing.SEALED_KEY: json.loads(row.sealed)}).get("personal") or {}
        identity = (personal.get("data") or {}).get("identity")
        found[row.pseudonym] = identity if isinstance(identity, str) else None
    return found


def substitute(value: T, identities: Mapping[str, str | None]) -> T:
    """``value`` with each revealed pseudonym replaced by its identity (erased ones stay)."""
    if isinstance(value, str):
        return PSEUDONYM_RE.sub(lambda m: identities.get(m.group(0)) or m.group(0), value)  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {key: substitute(item, identities) for key, item in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return [substitute(item, identities) for item in value]  # type: ignore[return-value]
    return value


def stored_actor(session: Session, actor: str | None) -> str | None:
    """The actor filter as stored: an identity becomes its pseudonym. A prefix (``alice*``), a
    system actor, a pseudonym, or an identity without one (entries written in clear before
    pseudonyms) is matched as given."""
    if actor is None or actor.endswith("*") or is_system(actor) or is_pseudonym(actor):
        return actor
    row = find(session, actor)
    return row.pseudonym if row is not None else actor


def stored_filters(session: Session, filters: T) -> T:
    """Query filters (any dataclass with ``actor``) with the actor as stored (``stored_actor``)."""
    actor = getattr(filters, "actor", None)
    stored = stored_actor(session, actor)
    return filters if stored == actor else dataclasses.replace(filters, actor=stored)  # type: ignore[type-var]


def rows_of(session: Session, *, subject: str | None = None, identity: str | None = None) -> list[AuditIdentity]:
    """The live identity rows of a subject (``user:42``, ``actor:pseudonym:...``) or of an identity."""
    clauses = []
    if subject is not None:
        clauses.append(AuditIdentity.subject == subject)
        if subject.startswith("actor:") and is_pseudonym(subject[6:]):
            clauses.append(AuditIdentity.pseudonym == subject[6:])
    if identity is not None:
        clauses.append(AuditIdentity.pseudonym == identity if is_pseudonym(identity)
                       else AuditIdentity.lookup == lookup_of(identity))
    if not clauses:
        return []
    return list(session.execute(sa.select(AuditIdentity).where(sa.or_(*clauses), AuditIdentity.sealed.is_not(None))
                                .order_by(AuditIdentity.id)).scalars())


def erase(session: Session, rows: Iterable[AuditIdentity]) -> list[str]:
    """Unlink identity rows (their subject keys are destroyed by the caller); the pseudonyms erased."""
    erased = []
    for row in rows:
        row.lookup = row.subject = row.sealed = None
        row.erased_at = utcnow()
        erased.append(row.pseudonym)
    session.flush()
    return erased
