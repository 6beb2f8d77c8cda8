"""Erasable identities of audit actors: pseudonyms and the per-subject keys that reveal them.

``audit_identities`` maps an actor (an e-mail address, ``cli:<account>``, ...) to the pseudonym
that stands for it in ``audit_entries.actor`` and in details. The pseudonym is random: nothing in
the chain can be turned back into the identity. The row keeps

* ``lookup``: HMAC-SHA256 of the normalised identity under a key kept outside the database
  (``governance/identities.py``), so ``audit query --actor alice@x`` finds alice's pseudonym
  without any identity stored in clear;
* ``sealed``: the identity itself, AES-256-GCM under the subject's key (``audit_subject_keys``),
  so a compliance officer can reveal it.

Erasure destroys the subject's key and sets ``lookup``, ``subject`` and ``sealed`` to NULL: the
pseudonym stays (the chain's hashes cover it) but leads nowhere.

``audit_payload_keys`` holds one data key per sealed personal payload, wrapped by its subject's
key: retention destroys one entry's key when its action's period is over, erasure destroys the
subject's key and with it every payload key it wraps. Both tables are mutable, unlike the chain.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, utcnow

# SQLite only auto-assigns an "INTEGER PRIMARY KEY".
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class AuditIdentity(Base):
    """One actor's pseudonym; ``lookup``, ``subject`` and ``sealed`` are NULL once erased."""

    __tablename__ = "audit_identities"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    pseudonym: Mapped[str] = mapped_column(sa.String(64), unique=True)
    lookup: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    # Whose key seals the identity: ``user:<id>`` for a user's e-mail, else ``actor:<pseudonym>``.
    subject: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    sealed: Mapped[str | None] = mapped_column(sa.Text)  # JSON: sealing.seal's envelope
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    erased_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


class AuditPayloadKey(Base):
    """The data key of one sealed personal payload, wrapped by its subject's key; NULL once shredded."""

    __tablename__ = "audit_payload_keys"
    __table_args__ = (sa.Index("ix_audit_payload_keys_action_created_at", "action", "created_at"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(sa.String(400), index=True)
    subject_key_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    action: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    wrapped: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # nonce ‖ AES-GCM(subject key, data key)
    shredded_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    shred_reason: Mapped[str | None] = mapped_column(sa.String(16))  # retention | erasure
