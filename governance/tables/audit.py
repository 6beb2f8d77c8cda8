"""The audit trail's tables: pending entries, hash-chained entries, signed checkpoints, subject keys.

``audit_pending`` holds entries written in their change's transaction but not yet given a place
in the chain; the integrator moves them, in batches, into ``audit_entries`` (keeping the pending
id as ``pending_id``). A pending row cannot be updated or truncated, and can be deleted only once
an entry with its id and identical content exists (migration 0010).

``audit_entries`` and ``audit_checkpoints`` are append-only: database triggers (migrations 0001
and 0002) reject UPDATE and DELETE, and on PostgreSQL TRUNCATE; the application role is granted
INSERT and SELECT only. Each entry's hash covers its predecessor's, and each checkpoint signs the
Merkle root over the first ``tree_size`` entries.

``audit_tree_nodes`` (append-only too) stores the tree's perfect subtrees of 256 leaves and up,
so proofs read O(log n) rows.

``audit_subject_keys`` is the one mutable audit table: erasing a data subject overwrites their key
with NULL (crypto-shredding), which leaves every hash intact because hashes cover ciphertext.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    # Gapless, from 0, assigned by the audit writer under the database's write lock.
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(320), index=True)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    resource: Mapped[str] = mapped_column(sa.String(400), index=True)
    outcome: Mapped[str] = mapped_column(sa.String(16), index=True)
    details: Mapped[str] = mapped_column(sa.Text)  # canonical JSON (RFC 8785)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))
    # The id the entry was written with in ``audit_pending`` (NULL for entries older than 0010);
    # not hashed: it links a caller's reference to the entry's place in the chain.
    pending_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True, unique=True)
    # The application's MAC of the pending row (``governance/audit_mac.py``; NULL for entries older
    # than 0014); not hashed: ``audit verify`` checks it, so a row appended past the integrator shows.
    mac: Mapped[str | None] = mapped_column(sa.String(100), index=True, unique=True)


# SQLite only auto-assigns an "INTEGER PRIMARY KEY"; AUTOINCREMENT keeps ids of deleted
# (integrated) rows from being handed out again.
PendingId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class AuditPending(Base):
    """An entry committed with its change, waiting for the integrator to give it seq and hashes."""

    __tablename__ = "audit_pending"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(PendingId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(320))
    action: Mapped[str] = mapped_column(sa.String(64))
    resource: Mapped[str] = mapped_column(sa.String(400))
    outcome: Mapped[str] = mapped_column(sa.String(16))
    details: Mapped[str] = mapped_column(sa.Text)  # canonical JSON (RFC 8785)
    # ``<nonce>:<HMAC-SHA256>`` by the application (``governance/audit_mac.py``): a row without a
    # valid one was not written by ``audit.record`` and is refused by the integrator.
    mac: Mapped[str | None] = mapped_column(sa.String(100))


class AuditCheckpoint(Base):
    """A signed statement of the tree: size, root hash, last entry hash, time."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    tree_size: Mapped[int] = mapped_column(sa.BigInteger)
    root_hash: Mapped[str] = mapped_column(sa.String(64))
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    key_id: Mapped[str] = mapped_column(sa.String(64))
    signature: Mapped[str] = mapped_column(sa.String(200))
    # Hash of entry ``tree_size - 1`` (signed): lets a writer check the head in O(entries since).
    head_hash: Mapped[str] = mapped_column(sa.String(64), server_default="")
    # The tree's compact range (JSON list of hex hashes): the next checkpoint hashes only new leaves.
    frontier: Mapped[str] = mapped_column(sa.Text, server_default="[]")


class AuditTreeNode(Base):
    """A perfect subtree of the audit Merkle tree: 2**level leaves from ``idx * 2**level``.

    Written with each checkpoint for level 8 (256 leaves) and up (``governance/merkle_store.py``),
    so an inclusion or consistency proof reads O(log n) rows instead of every leaf. Derived data,
    append-only like the entries; a wrong node cannot yield a proof, because every proof is checked
    against the signed root before it is served, and ``audit verify`` recomputes them all.
    """

    __tablename__ = "audit_tree_nodes"

    level: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(sa.String(64))


class AuditSubjectKey(Base):
    """A data subject's key for personal data in audit details; ``key`` is NULL once erased."""

    __tablename__ = "audit_subject_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(400), index=True)
    key: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    erased_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
