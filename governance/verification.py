"""Full verification of the audit trail in the database (``latentops audit verify``).

One streaming pass over the entries recomputes every entry hash and chain link, feeds the leaves
through a Merkle frontier and, at each checkpoint's size, compares the root and head hash the
checkpoint signed. Checkpoints come from the database and from the external sink; each signature
is checked with the key its ``key_id`` names in the given keyring (key id -> public key, old keys
kept across rotations). Pending entries are integrated first, so the report is not stale.

The report names the first damage by kind and sequence number:

``modified``   an entry's content or hash changed (or a rewrite re-hashed the chain after it);
``deleted``    a sequence number is missing;
``reordered``  an intact entry sits at another sequence number than the one it was written with;
``truncated``  entries were removed from the tail after a checkpoint had covered them;
``forged_checkpoint`` a checkpoint whose signature does not verify;
``tree_node``  a stored Merkle node (``merkle_store``, used for proofs) that the entries do not give;
``forged``     an entry or pending row without the application's valid MAC (``audit_mac``);
``replayed``   a pending row copied from an entry already in the chain;
``backdated``  an entry or pending row written more than ``audit_max_skew_s`` before the one written just before it;
``guard_missing`` an append-only trigger (or, on PostgreSQL, a privilege limit) is gone (``guards``).

``beyond_checkpoint`` counts the entries after the newest checkpoint: the window in which a
deletion from the tail cannot be proven.

What cannot be detected: a rewrite of entries after the newest checkpoint by someone who also
re-hashes the chain (write checkpoints often), and anything done with the signing key itself.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation, InvalidInput
from latentops.governance import audit, audit_mac, checkpoints, guards, merkle, merkle_store, placement
from latentops.governance.damage import Damage
from latentops.governance.tables import AuditCheckpoint, AuditEntry

log = logging.getLogger(__name__)

# How far from its own place a displaced entry is looked for before calling it merely modified.
REORDER_WINDOW = 256


@dataclass
class Report:
    entries: int = 0
    pending: int = 0  # committed entries still waiting for integration after the catch-up
    checkpoints: int = 0
    sink_checkpoints: int = 0
    tree_size: int = 0
    root_hash: str = merkle.EMPTY_ROOT.hex()
    damage: list[Damage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Entries after the newest valid checkpoint: a deletion of these from the tail cannot be proven.
    beyond_checkpoint: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "entries": self.entries, "pending": self.pending, "checkpoints": self.checkpoints,
            "sink_checkpoints": self.sink_checkpoints, "tree_size": self.tree_size, "root_hash": self.root_hash,
            "damage": [{"kind": d.kind, "seq": d.seq, "detail": d.detail} for d in self.damage],
            "warnings": self.warnings, "beyond_checkpoint": self.beyond_checkpoint,
        }


@dataclass(frozen=True)
class _Statement:
    source: str  # "database checkpoint 3" or "sink line 2"
    tree_size: int
    root_hash: str
    head_hash: str


def _check_signatures(items: Sequence[tuple[str, dict[str, Any]]], keyring: checkpoints.Keyring,
                      report: Report) -> list[_Statement]:
    if not items:
        return []
    if not keyring:
        raise InvalidInput("public key: the log has checkpoints but no public key was given and no signing key "
                           "was found (pass --public-key)")
    signers = {str(item.get("key_id")) for _, item in items}
    if not signers & keyring.keys():
        raise InvalidInput(f"public key: wrong key; the keyring holds {', '.join(sorted(keyring))} but the checkpoints "
                           f"are signed by {', '.join(sorted(signers))}")
    valid = []
    for source, item in items:
        public_key = keyring.get(str(item.get("key_id")))
        if public_key is None:
            report.damage.append(Damage("forged_checkpoint", None, f"{source} (tree size {item.get('tree_size')}): "
                                        f"signed by key {item.get('key_id')}, which is not in the keyring (a forged "
                                        "checkpoint, or a rotated key missing from the keyring)"))
            continue
        if not checkpoints.signature_valid(item, public_key):
            report.damage.append(Damage("forged_checkpoint", None, f"{source} (tree size {item.get('tree_size')}): "
                                        "the signature does not verify with the public key"))
            continue
        valid.append(_Statement(source, int(item["tree_size"]), str(item["root_hash"]), str(item["head_hash"])))
    return valid


def _displaced(row: Any) -> int | None:
    """The sequence number an entry was written with, if it verifies under another nearby one."""
    payload = audit.entry_payload(row)
    for candidate in range(max(0, row.seq - REORDER_WINDOW), row.seq + REORDER_WINDOW + 1):
        if candidate != row.seq:
            payload["seq"] = candidate
            if audit.entry_hash(payload) == row.hash:
                return candidate
    return None


def _check_nodes(nodes: Mapping[tuple[int, int], str], frontier: merkle.Frontier, report: Report) -> None:
    """Stored subtree hashes (``merkle_store``) against the ones the entries give."""
    for (level, index), value in sorted(nodes.items()):
        computed = frontier.completed.get((level, index))
        if computed is None:
            detail = (f"stored tree node level {level} index {index} covers entries {index << level}.."
                      f"{((index + 1) << level) - 1}, beyond the {frontier.size} entries")
        elif computed.hex() != value:
            detail = (f"stored tree node level {level} index {index} (entries {index << level}.."
                      f"{((index + 1) << level) - 1}) does not match the entries: proofs through it are refused")
        else:
            continue
        report.damage.append(Damage("tree_node", index << level, detail))
        return


def _authentic(row: Any, mac_key: bytes | None, macs_seen: bool) -> Damage | None:
    """An entry the application did not write (its MAC)."""
    if mac_key is not None and getattr(row, "mac", None) is not None:
        if not audit_mac.valid(row, mac_key):
            return Damage("forged", row.seq, "the entry's MAC does not verify: the application did not write it "
                          "(a row appended past the integrator, or the MAC key given is not the application's)")
    elif mac_key is not None and macs_seen:
        return Damage("forged", row.seq, "the entry carries no MAC although earlier ones do: it was appended past "
                      "the integrator")
    return None


def _backdated(session: Session, skew: dt.timedelta, batch: int) -> list[Damage]:
    """The first entry whose time lies more than ``skew`` before the entry written just before it.

    Write order is the pending id, not the seq: a long transaction's entry joins the chain after
    entries written while it was open, legitimately earlier in time than they are.
    """
    query = (sa.select(AuditEntry.seq, AuditEntry.at).where(AuditEntry.pending_id.is_not(None))
             .order_by(AuditEntry.pending_id).execution_options(yield_per=batch))
    previous: Any = None
    for row in session.execute(query):
        if previous is not None:
            at, before = audit_mac._utc(row.at), audit_mac._utc(previous.at)
            if at < before - skew:
                return [Damage("backdated", row.seq, f"written {(before - at).total_seconds():.1f}s before entry "
                               f"{previous.seq}, which the application wrote just before it "
                               f"(at most {skew.total_seconds():g}s allowed)")]
        previous = row
    return []


def scan(rows: Iterable[Any], statements: Sequence[_Statement], report: Report,
         nodes: Mapping[tuple[int, int], str] | None = None, *, mac_key: bytes | None = None) -> None:
    """Stream the entries; record the first break of chain or tree in ``report``.

    ``nodes``: the stored subtree hashes, ``(level, index) -> hex``, compared once the entries verify.
    ``mac_key``: check each entry's MAC (entries from before migration 0014 carry none). Time order
    is checked apart, in write order (``_backdated``).
    """
    found: list[Damage] = []
    _scan(rows, statements, report, nodes or {}, mac_key, found)
    # A rewrite shows first as the chain or tree break it caused; the MAC finding follows.
    report.damage.extend(found[:1])


def _scan(rows: Iterable[Any], statements: Sequence[_Statement], report: Report, nodes: Mapping[tuple[int, int], str],
          mac_key: bytes | None, found: list[Damage]) -> None:
    macs_seen = False
    by_size: dict[int, list[_Statement]] = {}
    for item in statements:
        by_size.setdefault(item.tree_size, []).append(item)
    frontier = merkle.Frontier(keep_from_level=merkle_store.TILE_LEVEL)
    head = audit.EMPTY_HEAD
    proven = 0  # size of the last checkpoint whose root matched: rewrites are located after it

    def check_checkpoints(size: int) -> bool:
        nonlocal proven
        for item in by_size.get(size, ()):
            if frontier.root().hex() != item.root_hash or (size and head.hash != item.head_hash):
                report.damage.append(Damage("modified", proven, f"the entries {proven}..{size - 1} do not give the "
                                            f"root signed by {item.source}: one of them was rewritten and the chain "
                                            "re-hashed after it"))
                return False
        if size in by_size:
            proven = size
        return True

    if not check_checkpoints(0):
        return
    for row in rows:
        if row.seq != head.seq + 1:
            report.damage.append(Damage("deleted", head.seq + 1, f"expected seq {head.seq + 1}, found seq {row.seq}"))
            return
        own_hash_ok = audit.entry_hash(audit.entry_payload(row)) == row.hash
        if not own_hash_ok:
            original = _displaced(row)
            if original is not None:
                report.damage.append(Damage("reordered", row.seq, f"this entry was written as seq {original}"))
            else:
                report.damage.append(Damage("modified", row.seq, "the entry's hash does not match its content"))
            return
        if row.prev_hash != head.hash:
            report.damage.append(Damage("modified", head.seq, f"entry {row.seq} chains to a different hash than "
                                        f"entry {head.seq} now has"))
            return
        if not found:
            problem = _authentic(row, mac_key, macs_seen)
            if problem is not None:
                found.append(problem)
        macs_seen = macs_seen or getattr(row, "mac", None) is not None
        head = audit.Head(row.seq, row.hash)
        frontier.append(merkle.leaf_hash(audit.leaf_data(row.hash)))
        report.entries += 1
        if not check_checkpoints(frontier.size):
            return
    report.tree_size, report.root_hash = frontier.size, frontier.root().hex()
    _check_nodes(nodes, frontier, report)
    beyond = [item for item in statements if item.tree_size > frontier.size]
    if beyond:
        item = max(beyond, key=lambda s: s.tree_size)
        report.damage.append(Damage("truncated", frontier.size, f"{item.source} covers {item.tree_size} entries but "
                                    f"only {frontier.size} remain: entries {frontier.size}..{item.tree_size - 1} "
                                    "were removed from the tail"))


def _refused_pending(session: Session, mac_key: bytes, skew: dt.timedelta, limit: int = 100) -> list[Damage]:
    """The pending rows the integrator refuses (no valid MAC, replayed, backdated), by id."""
    rows = session.execute(sa.select(*placement.PENDING_COLUMNS).order_by(placement.PENDING.c.id)
                           .limit(limit)).all()
    if not rows:
        return []
    macs = [row.mac for row in rows if row.mac]
    in_chain = set(session.execute(sa.select(AuditEntry.mac).where(AuditEntry.mac.in_(macs))).scalars()) if macs else set()
    found = []
    for row in rows:
        refusal = audit_mac.judge(row, key=mac_key, previous_at=audit_mac.written_before(session, row.id), skew=skew,
                                  macs_in_chain=in_chain)
        if refusal is not None:
            found.append(Damage(refusal.reason, None, f"{refusal.line()}; refused by the integrator, it stays in "
                                "audit_pending until the database owner removes it"))
    return found


def verify(session: Session, *, public_key: Ed25519PublicKey | None = None,
           keyring: checkpoints.Keyring | None = None, sink: checkpoints.CheckpointSink | None = None,
           batch: int = 5000, mac_key: bytes | None = None) -> Report:
    """Verify every entry, the tree, every checkpoint (database and sink) and their signatures,
    the MAC and time order of entries and pending rows, and the database's append-only guards.

    Signatures are checked against ``keyring`` plus ``public_key``; MACs with ``mac_key`` (default:
    the deployment's). Pending entries are integrated first (in the caller's transaction); when
    the chain is too damaged to extend they stay pending and the report counts them.
    """
    report = Report()
    try:
        placement.catch_up(session)
    except IntegrityViolation as error:
        report.warnings.append(f"pending entries not integrated: {error}")
    report.pending = placement.pending_count(session)
    keys = dict(keyring or {})
    if public_key is not None:
        keys[checkpoints.key_id(public_key)] = public_key
    stored = session.execute(sa.select(AuditCheckpoint).order_by(AuditCheckpoint.id)).scalars().all()
    items = [(f"database checkpoint {cp.id}", checkpoints.statement(cp)) for cp in stored]
    sink_items = sink.read() if sink is not None else []
    items += [(f"sink {sink.location if sink else ''} line {n}", item) for n, item in enumerate(sink_items, start=1)]
    report.checkpoints, report.sink_checkpoints = len(stored), len(sink_items)

    in_database = {(cp.tree_size, cp.root_hash) for cp in stored}
    in_sink = {(int(item["tree_size"]), str(item.get("root_hash"))) for item in sink_items}
    if sink is not None:
        for size, _root in sorted(in_database - in_sink):
            report.warnings.append(f"database checkpoint of tree size {size} is missing from the sink")
        for size, _root in sorted(in_sink - in_database):
            report.warnings.append(f"sink checkpoint of tree size {size} is missing from the database")

    statements = _check_signatures(items, keys, report)
    mac_key = audit_mac.current_key() if mac_key is None else mac_key
    skew = audit_mac.max_skew()
    query = (sa.select(*audit.ENTRY_COLUMNS, AuditEntry.mac).order_by(AuditEntry.seq)
             .execution_options(yield_per=batch))
    scan_report = Report()
    nodes = {(int(level), int(idx)): value for level, idx, value in session.execute(
        sa.select(merkle_store.NODES.c.level, merkle_store.NODES.c.idx, merkle_store.NODES.c.hash))}
    scan(session.execute(query), statements, scan_report, nodes, mac_key=mac_key)
    entry_damage = scan_report.damage or _backdated(session, skew, batch)
    report.entries, report.tree_size, report.root_hash = scan_report.entries, scan_report.tree_size, scan_report.root_hash
    covered = [item.tree_size for item in statements if item.tree_size <= report.tree_size]
    report.beyond_checkpoint = report.tree_size - max(covered, default=0)
    # The first bad entry comes first; refused pending rows, missing guards and forged checkpoints follow.
    report.damage = entry_damage + _refused_pending(session, mac_key, skew) + guards.missing(session) + report.damage
    for damage in report.damage:
        log.error("audit verification: %s", damage.line())
    return report
