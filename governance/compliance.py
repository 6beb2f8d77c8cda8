"""The audit trail for compliance officers: queries, proofs and evidence exports.

* ``query``: filter by time range, actor, action, resource (exact, or a prefix ending in ``*``) and
  outcome; keyset pagination on ``seq`` (``after`` is the last seq of the previous page, ``before``
  the first of the next one), so pages stay stable while new entries arrive. Oldest first unless
  ``newest_first``.
* ``inclusion`` / ``consistency``: RFC 9162 proofs against signed checkpoints.
* ``export``: JSON lines or CSV, one row per entry with its inclusion proof, and beside it
  ``<file>.proofs.json`` holding the signed checkpoint, the public key and consistency proofs from
  every earlier checkpoint. ``governance/verifier/latentops_audit_verify.py`` checks both without
  the database. Sealed personal data is exported as the ciphertext the hashes cover.

Each of them integrates pending entries first (``integration.catch_up``), so nothing shown is
stale. Entries are never deleted; exports and verifications are themselves audited (by the callers in
``platform/cli/audit.py``, after commit of the checkpoint they rely on).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, InvalidInput, NotFound
from latentops.governance import audit, checkpoints, erasure, identities, integration, merkle, merkle_store
from latentops.governance.tables import AuditCheckpoint, AuditEntry

log = logging.getLogger(__name__)

EXPORT_FORMAT = "latentops-audit-export/v1"
CSV_COLUMNS = ["seq", "at", "actor", "action", "resource", "outcome", "details", "prev_hash", "hash", "proof"]
MAX_PAGE = 1000


@dataclass(frozen=True)
class Filters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str | None = None
    action: str | None = None
    resource: str | None = None
    outcome: str | None = None

    @property
    def empty(self) -> bool:
        return all(value is None for value in self.__dict__.values())

    def to_json(self) -> dict[str, str]:
        return {name: (audit.format_time(value) if isinstance(value, dt.datetime) else value)
                for name, value in self.__dict__.items() if value is not None}


@dataclass
class Page:
    entries: list[dict[str, Any]]
    next_after: int | None  # pass as ``after`` for the page of higher seqs; None when there is none
    next_before: int | None = None  # pass as ``before`` for the page of lower seqs; None when there is none


def _match(column: Any, pattern: str) -> Any:
    if pattern.endswith("*"):
        prefix = pattern[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(prefix + "%", escape="\\")
    return column == pattern


def _where(filters: Filters) -> list[Any]:
    if filters.since and filters.until and filters.since > filters.until:
        raise InvalidInput(f"since: {filters.since.isoformat()} is after until {filters.until.isoformat()}")
    clauses: list[Any] = []
    if filters.since is not None:
        clauses.append(AuditEntry.at >= filters.since)
    if filters.until is not None:
        clauses.append(AuditEntry.at < filters.until)
    for name in ("actor", "action", "resource", "outcome"):
        value = getattr(filters, name)
        if value is not None:
            clauses.append(_match(getattr(AuditEntry, name), value))
    return clauses


def as_dict(row: Any) -> dict[str, Any]:
    return {**audit.entry_payload(row), "hash": row.hash}


def query(session: Session, *, filters: Filters = Filters(), after: int | None = None, before: int | None = None,
          limit: int = 100, reveal: bool = False, newest_first: bool = False) -> Page:
    """One page of entries in seq order (descending with ``newest_first``); ``after`` and
    ``before`` are keyset cursors (at most one of them); ``reveal`` decrypts sealed personal data
    still held."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: must be between 1 and {MAX_PAGE} (got {limit})")
    if after is not None and before is not None:
        raise InvalidInput("before: give either after or before, not both")
    try:
        integration.catch_up(session)
    except IntegrityViolation as error:
        # A damaged chain cannot be extended (and has alarmed); what it holds can still be read.
        log.warning("audit query without integrating pending entries: %s", error)
    where = _where(identities.stored_filters(session, filters))  # an identity is found by its pseudonym
    statement = sa.select(*audit.ENTRY_COLUMNS).where(*where)
    # Read towards lower seqs from ``before`` (or from the newest), towards higher ones otherwise.
    downwards = before is not None or (newest_first and after is None)
    if after is not None:
        statement = statement.where(AuditEntry.seq > after)
    if before is not None:
        statement = statement.where(AuditEntry.seq < before)
    order = AuditEntry.seq.desc() if downwards else AuditEntry.seq
    rows = session.execute(statement.order_by(order).limit(limit + 1)).all()
    more = len(rows) > limit
    entries = [as_dict(row) for row in rows[:limit]]
    if downwards != newest_first:
        entries.reverse()
    if reveal:
        for entry in entries:
            entry["details_revealed"] = erasure.reveal(session, entry["details"])
    if not entries:
        return Page(entries, None)
    low, high = min(e["seq"] for e in entries), max(e["seq"] for e in entries)

    def exists(clause: Any) -> bool:
        return session.execute(sa.select(AuditEntry.seq).where(*where, clause).limit(1)).first() is not None

    higher = more if not downwards else exists(AuditEntry.seq > high)
    lower = more if downwards else (after is not None and exists(AuditEntry.seq < low))
    return Page(entries, high if higher else None, low if lower else None)


# --- proofs ------------------------------------------------------------------------------------


def load_tree(session: Session, size: int) -> merkle.MerkleTree:
    """The tree over the first ``size`` entries, read from their stored hashes."""
    tree = merkle.MerkleTree()
    statement = (sa.select(AuditEntry.seq, AuditEntry.hash).where(AuditEntry.seq < size).order_by(AuditEntry.seq)
                 .execution_options(yield_per=10_000))
    for seq, value in session.execute(statement):
        if seq != tree.size:
            raise IntegrityViolation(f"audit trail damaged (deleted at seq {tree.size}); run `latentops audit verify`")
        tree.append(merkle.leaf_hash(audit.leaf_data(value)))
    if tree.size != size:
        raise IntegrityViolation(f"audit trail damaged (truncated at seq {tree.size}): a checkpoint covers {size} entries")
    return tree


def _signed(session: Session, checkpoint: AuditCheckpoint | None = None) -> tuple[AuditCheckpoint, merkle.MerkleTree]:
    checkpoint = checkpoint or checkpoints.latest(session)
    if checkpoint is None:
        raise NotFound("no audit checkpoint yet: run `latentops audit checkpoint` first")
    tree = load_tree(session, checkpoint.tree_size)
    if tree.root().hex() != checkpoint.root_hash:
        raise IntegrityViolation(f"the stored entries do not give the root of checkpoint {checkpoint.id}; "
                             "run `latentops audit verify`")
    return checkpoint, tree


def _proved_root(tree: merkle_store.StoredTree, size: int, checkpoint: AuditCheckpoint) -> bytes:
    """The root of the first ``size`` entries, proven consistent with ``checkpoint``'s signed root."""
    signed = bytes.fromhex(checkpoint.root_hash)
    if size == 0:
        return merkle.EMPTY_ROOT
    if size == checkpoint.tree_size:
        root = tree.root()
        if root != signed:
            raise IntegrityViolation(f"the stored entries do not give the root of checkpoint {checkpoint.id}; "
                                 "run `latentops audit verify`")
        return root
    path = tree.prepared(lambda mth: merkle.consistency_path(size, checkpoint.tree_size, mth))
    root = tree.root(size)
    if not merkle.verify_consistency(size, checkpoint.tree_size, root, signed, path):
        raise IntegrityViolation(f"the stored entries before seq {size} are not consistent with checkpoint {checkpoint.id}; "
                             "run `latentops audit verify`")
    return root


def _latest_for(session: Session, field: str, index: int) -> AuditCheckpoint:
    """The latest checkpoint, after catching the chain up, for a proof about ``field`` = ``index``."""
    if index < 0:
        raise InvalidInput(f"{field}: must be 0 or more (got {index})")
    integration.catch_up(session)
    checkpoint = checkpoints.latest(session)
    if checkpoint is None:
        raise NotFound("no audit checkpoint yet: run `latentops audit checkpoint` first")
    return checkpoint


def inclusion(session: Session, *, seq: int) -> dict[str, Any]:
    """An inclusion proof of entry ``seq`` against the latest checkpoint.

    Read from the stored subtrees (O(log n) rows) and checked against the signed root before it
    is returned: a damaged entry or node on the path refuses with ``IntegrityViolation``.
    """
    checkpoint = _latest_for(session, "seq", seq)
    if seq >= checkpoint.tree_size:
        raise InvalidInput(f"seq: {seq} is beyond the latest checkpoint (tree size {checkpoint.tree_size}); "
                           "run `latentops audit checkpoint` and ask again")
    tree = merkle_store.StoredTree(session, checkpoint.tree_size)
    proof = tree.prepared(lambda mth: merkle.inclusion_path(seq, checkpoint.tree_size, mth), leaves=[seq])
    leaf = tree.leaf(seq)
    if not merkle.verify_inclusion(seq, checkpoint.tree_size, leaf, proof, bytes.fromhex(checkpoint.root_hash)):
        raise IntegrityViolation(f"entry {seq} or the stored tree does not give the root of checkpoint {checkpoint.id}; "
                             "run `latentops audit verify`")
    entry = session.execute(sa.select(*audit.ENTRY_COLUMNS).where(AuditEntry.seq == seq)).one()
    return {
        "entry": as_dict(entry), "leaf_index": seq, "tree_size": checkpoint.tree_size,
        "leaf_hash": leaf.hex(), "proof": [node.hex() for node in proof],
        "root_hash": checkpoint.root_hash, "checkpoint": checkpoints.statement(checkpoint),
    }


def consistency(session: Session, *, old: int, new: int) -> dict[str, Any]:
    """A consistency proof between tree sizes ``old`` and ``new`` (at most the latest checkpoint's).

    Both roots are proven consistent with the latest signed checkpoint before they are returned.
    """
    integration.catch_up(session)
    latest = checkpoints.latest(session)
    limit = 0 if latest is None else latest.tree_size
    if not 0 <= old <= new:
        raise InvalidInput(f"old: must be between 0 and new ({new}) (got {old})")
    if new > limit:
        raise InvalidInput(f"new: {new} is beyond the latest checkpoint (tree size {limit}); "
                           "run `latentops audit checkpoint` first")
    if latest is None:
        raise NotFound("no audit checkpoint yet: run `latentops audit checkpoint` first")
    tree = merkle_store.StoredTree(session, latest.tree_size)
    old_root, new_root = _proved_root(tree, old, latest), _proved_root(tree, new, latest)
    proof = tree.prepared(lambda mth: merkle.consistency_path(old, new, mth))
    if not merkle.verify_consistency(old, new, old_root, new_root, proof):
        raise IntegrityViolation(f"the stored tree gives no consistent proof between {old} and {new}; run `latentops audit verify`")
    signed = {cp.tree_size: checkpoints.statement(cp) for cp in
              session.execute(sa.select(AuditCheckpoint).where(AuditCheckpoint.tree_size.in_([old, new]))).scalars()}
    return {
        "old_size": old, "new_size": new, "old_root": old_root.hex(), "new_root": new_root.hex(),
        "proof": [node.hex() for node in proof],
        "old_checkpoint": signed.get(old), "new_checkpoint": signed.get(new),
    }


CONSISTENCY_FORMAT = "latentops-audit-consistency/v1"


def consistency_bundle(session: Session, *, from_size: int) -> dict[str, Any]:
    """Consistency proofs from the tree of ``from_size`` entries to every later signed checkpoint.

    What an auditor holding an export of ``from_size`` entries and a later signed checkpoint needs:
    without a proof, a signed statement of a larger size is evidence of truncation, not growth
    (``latentops_audit_verify.py --consistency``). Each proof is checked here before it is served.
    """
    latest = _latest_for(session, "from_size", from_size)
    if from_size > latest.tree_size:
        raise InvalidInput(f"from_size: {from_size} is beyond the latest checkpoint (tree size {latest.tree_size})")
    tree = merkle_store.StoredTree(session, latest.tree_size)
    from_root = _proved_root(tree, from_size, latest)
    later = session.execute(sa.select(AuditCheckpoint).where(AuditCheckpoint.tree_size > from_size)
                            .order_by(AuditCheckpoint.tree_size, AuditCheckpoint.id)).scalars().all()
    proofs = []
    for checkpoint in later:
        root = bytes.fromhex(checkpoint.root_hash)
        path = tree.prepared(lambda mth, size=checkpoint.tree_size: merkle.consistency_path(from_size, size, mth))
        if not merkle.verify_consistency(from_size, checkpoint.tree_size, from_root, root, path):
            raise IntegrityViolation(f"the stored tree gives no consistent proof from {from_size} to checkpoint "
                                 f"{checkpoint.id}; run `latentops audit verify`")
        proofs.append({"checkpoint": checkpoints.statement(checkpoint), "proof": [node.hex() for node in path]})
    return {"format": CONSISTENCY_FORMAT, "from_size": from_size, "from_root": from_root.hex(), "proofs": proofs}


# --- export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    proofs_path: Path
    entries: int
    tree_size: int
    root_hash: str
    sha256: str


def _rows(session: Session, filters: Filters, size: int) -> Iterator[Any]:
    statement = (sa.select(*audit.ENTRY_COLUMNS).where(AuditEntry.seq < size, *_where(filters))
                 .order_by(AuditEntry.seq).execution_options(yield_per=5000))
    yield from session.execute(statement)


def export(session: Session, *, path: Path, fmt: Literal["jsonl", "csv"], filters: Filters = Filters(),
           public_key_pem: str, keyring_pem: str | None = None) -> ExportSummary:
    """Write the entries matching ``filters`` that the latest checkpoint covers, with proofs."""
    if fmt not in ("jsonl", "csv"):
        raise InvalidInput(f"format: must be jsonl or csv (got {fmt!r})")
    checkpoints.await_witnesses()  # before the first read: the note carries the cosignatures just returned
    integration.catch_up(session)
    checkpoint, tree = _signed(session)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        for row in _rows(session, identities.stored_filters(session, filters), checkpoint.tree_size):
            proof = [node.hex() for node in tree.inclusion_proof(row.seq)]
            item = as_dict(row)
            if writer is not None:
                writer.writerow({**item, "proof": " ".join(proof)})
            else:
                handle.write(json.dumps({**item, "proof": proof}, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    earlier = session.execute(sa.select(AuditCheckpoint).where(AuditCheckpoint.tree_size <= checkpoint.tree_size,
                                                              AuditCheckpoint.id != checkpoint.id)
                              .order_by(AuditCheckpoint.tree_size)).scalars().all()
    proofs = {
        "format": EXPORT_FORMAT,
        "entries_file": path.name,
        "entries_format": fmt,
        "entries": count,
        "complete": filters.empty,
        "filters": filters.to_json(),
        "checkpoint": checkpoints.cosigned_statement(session, checkpoint),
        "public_key_pem": public_key_pem,
        # Every key that signed a checkpoint here, old ones included; auditors compare it with the
        # keys they got out of band (the verifier trusts only those).
        "keyring_pem": keyring_pem or public_key_pem,
        "consistency": [
            {"checkpoint": checkpoints.statement(old),
             "proof": [node.hex() for node in tree.consistency_proof(old.tree_size, checkpoint.tree_size)]}
            for old in earlier
        ],
        # Checkpoints signed after this one (usually none: the export signs the latest); an
        # auditor holding a later one asks for `latentops audit consistency --from-size N`.
        "later": consistency_bundle(session, from_size=checkpoint.tree_size)["proofs"],
    }
    proofs_path = path.with_name(path.name + ".proofs.json")
    proofs_path.write_text(json.dumps(proofs, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log.info("audit export %s: %d entries against tree size %d", path, count, checkpoint.tree_size)
    return ExportSummary(path, proofs_path, count, checkpoint.tree_size, checkpoint.root_hash, digest)


def parse_time(value: str | None, field_name: str) -> dt.datetime | None:
    """An ISO 8601 time from the command line or API; naive times are UTC."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field_name}: not an ISO 8601 time (got {value!r})") from None
    # UTC throughout: SQLite stores times without their zone.
    return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def summary_details(summary: ExportSummary, filters: Filters, fmt: str) -> Mapping[str, Any]:
    return {"format": fmt, "entries": summary.entries, "tree_size": summary.tree_size, "root_hash": summary.root_hash,
            "sha256": summary.sha256, "filters": filters.to_json()}
