"""The audit tree's perfect subtrees in the database, so that a proof reads O(log n) rows.

``audit_tree_nodes`` holds the hash of every complete, aligned subtree of ``2**level`` leaves for
``level >= TILE_LEVEL`` (256 leaves and up): about ``n / 128`` rows for ``n`` entries. The
checkpoint writer calls ``extend`` under the chain lock, so the nodes cover every checkpointed
entry. An RFC 9162 proof asks for O(log n) subtree hashes; ``StoredTree`` answers each from one
stored node, or, below 256 leaves, from the leaf hashes of at most two 256-entry blocks, all read
in three queries. A node that is not stored yet (entries checkpointed before migration 0012 and
no checkpoint since) is computed from its leaves: slower, never wrong.

Nothing here is trusted on its own: ``compliance`` checks every proof against the signed
checkpoint root before serving it, and ``verification.verify`` recomputes every stored node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import IntegrityViolation
from latentops.governance import audit_chain, merkle
from latentops.governance.tables import AuditEntry, AuditTreeNode

TILE_LEVEL = 8
TILE = 1 << TILE_LEVEL
NODES = AuditTreeNode.__table__
_INSERT = NODES.insert()


def _leaf_hashes(session: Session, ranges: Sequence[tuple[int, int]]) -> dict[int, bytes]:
    """Leaf hashes of the entries in the ``[start, end)`` ranges, by seq, in one query."""
    rows = session.execute(sa.select(AuditEntry.seq, AuditEntry.hash).where(
        sa.or_(*(sa.and_(AuditEntry.seq >= start, AuditEntry.seq < end) for start, end in ranges)))
        .execution_options(yield_per=10_000))
    return {int(seq): merkle.leaf_hash(audit_chain.leaf_data(value)) for seq, value in rows}


def stored_counts(session: Session) -> dict[int, int]:
    """Per level, how many nodes are stored (they are written in order, from index 0)."""
    rows = session.execute(sa.select(NODES.c.level, sa.func.max(NODES.c.idx)).group_by(NODES.c.level))
    return {int(level): int(top) + 1 for level, top in rows}


def extend(session: Session, size: int) -> int:
    """Store the nodes of the first ``size`` entries that are not stored yet; return how many.

    Called by the checkpoint writer, which holds the chain lock (one writer at a time). Reads only
    the leaves of the blocks completed since the last call, and the children it combines.
    """
    have = stored_counts(session)
    written: dict[tuple[int, int], bytes] = {}
    first, last = have.get(TILE_LEVEL, 0), size >> TILE_LEVEL
    below: dict[int, bytes] = {}  # the level under the one being built: index -> hash
    if last > first:
        leaves = _leaf_hashes(session, [(first * TILE, last * TILE)])
        if len(leaves) != (last - first) * TILE:
            raise IntegrityViolation(f"audit trail damaged: entries missing between seq {first * TILE} and "
                                 f"{last * TILE}; run `latentops audit verify`")
        below = {index: merkle.root_of(leaves[index * TILE + i] for i in range(TILE)) for index in range(first, last)}
        written.update({(TILE_LEVEL, index): value for index, value in below.items()})
    level = TILE_LEVEL + 1
    while size >> level:
        first, last = have.get(level, 0), size >> level
        missing = [i for i in range(2 * first, 2 * last) if i not in below]
        if missing:
            rows = session.execute(sa.select(NODES.c.idx, NODES.c.hash).where(
                NODES.c.level == level - 1, NODES.c.idx >= min(missing), NODES.c.idx < 2 * last))
            below.update({int(idx): bytes.fromhex(value) for idx, value in rows})
        below = {index: merkle.node_hash(below[2 * index], below[2 * index + 1]) for index in range(first, last)}
        written.update({(level, index): value for index, value in below.items()})
        level += 1
    if written:
        session.execute(_INSERT, [{"level": level, "idx": index, "hash": value.hex()}
                                  for (level, index), value in sorted(written.items())])
    return len(written)


class StoredTree:
    """Subtree hashes of the first ``size`` entries, from stored nodes and leaves."""

    def __init__(self, session: Session, size: int) -> None:
        self.session, self.size = session, size
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._leaves: dict[int, bytes] = {}

    def fetch(self, ranges: Iterable[tuple[int, int]], leaves: Iterable[int] = ()) -> None:
        """Read what ``mth`` needs for ``ranges`` (and the hashes of ``leaves``) in a few queries."""
        keys: set[tuple[int, int]] = set()
        loose: list[tuple[int, int]] = [(index, index + 1) for index in leaves]
        for start, end in ranges:
            if not 0 <= start <= end <= self.size:
                raise ValueError(f"range [{start}, {end}) is outside a tree of {self.size} leaves")
            perfect, rest = merkle.subtrees(start, end, TILE)
            keys.update(perfect)
            loose += rest
        wanted = sorted(keys - self._nodes.keys())
        if wanted:
            rows = self.session.execute(sa.select(NODES.c.level, NODES.c.idx, NODES.c.hash).where(
                sa.tuple_(NODES.c.level, NODES.c.idx).in_(wanted)))
            self._nodes.update({(int(level), int(idx)): bytes.fromhex(value) for level, idx, value in rows})
        # Not stored yet: from the leaves (slow, only until the next checkpoint stores them).
        loose += [(idx << level, (idx + 1) << level) for level, idx in wanted if (level, idx) not in self._nodes]
        merged: list[list[int]] = []
        for start, end in sorted(loose):
            if end - start <= TILE and all(seq in self._leaves for seq in range(start, end)):
                continue
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        if merged:
            self._leaves.update(_leaf_hashes(self.session, [(start, end) for start, end in merged]))

    def leaf(self, index: int) -> bytes:
        try:
            return self._leaves[index]
        except KeyError:
            raise IntegrityViolation(f"audit trail damaged (entry {index} missing); run `latentops audit verify`") from None

    def mth(self, start: int, end: int) -> bytes:
        """RFC 9162 MTH of leaves ``[start, end)`` from what ``fetch`` read."""
        return merkle.subtree_hash(start, end, self._perfect)

    def _perfect(self, level: int, index: int) -> bytes | None:
        return self.leaf(index) if level == 0 else self._nodes.get((level, index))

    def prepared(self, path: Callable[[Callable[[int, int], bytes]], list[bytes]],
                 leaves: Iterable[int] = ()) -> list[bytes]:
        """Run a proof computation (``merkle.inclusion_path`` or ``consistency_path``) after one fetch."""
        self.fetch(merkle.ranges_asked(path), leaves)
        return path(self.mth)

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self.fetch([(0, size)])
        return self.mth(0, size)
