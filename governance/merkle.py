"""Merkle trees over the audit log, hashed as RFC 9162 (Certificate Transparency v2) specifies.

Leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left || right)``, the empty
tree's root ``SHA-256("")``; a tree of ``n`` leaves splits at the largest power of two below ``n``.
The leaf data of audit entry ``seq`` is its 32-byte entry hash, so the tree commits to every
entry's content and to the chain.

Three tools, each for one job:

* ``Frontier``: the compact range of a growing tree (one hash per set bit of its size). Appending
  is amortised O(1) and the root is O(log n): the verifier and the checkpoint writer stream leaves
  through it without holding the tree.
* ``MerkleTree``: every level in memory (32 bytes per node, about 64 MB at a million leaves), so
  inclusion and consistency proofs for any earlier size cost O(log² n) hashes.
* ``verify_inclusion`` / ``verify_consistency``: RFC 9162 §2.1.3.2 and §2.1.4.2, verbatim.

This module is stdlib-only on purpose; ``governance/verifier`` carries a copy of the verification
half so that an outside auditor need not import latentops.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The perfect subtrees that make up a tree of ``size`` leaves, largest first."""

    __slots__ = ("completed", "hashes", "min_level", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = (), *, keep_from_level: int | None = None) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes, got {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)
        # With ``keep_from_level``: every perfect subtree of at least 2**level leaves completed by
        # an append, as ``(level, index) -> hash`` (what ``audit verify`` compares stored nodes with).
        self.min_level = keep_from_level
        self.completed: dict[tuple[int, int], bytes] = {}

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (already ``leaf_hash``-ed)."""
        node, size = leaf, self.size
        if self.min_level is not None and not (size + 1) & ((1 << self.min_level) - 1):
            self._append_keeping(node)
            return
        # Each trailing 1 bit of the old size is a subtree of the same height as the carry: merge.
        while size & 1:
            node = node_hash(self.hashes.pop(), node)
            size >>= 1
        self.hashes.append(node)
        self.size += 1

    def _append_keeping(self, node: bytes) -> None:
        """``append`` for a leaf that completes subtrees of at least ``2**min_level`` leaves."""
        size, level, keep_from = self.size, 0, self.min_level
        assert keep_from is not None
        while size & 1:
            node = node_hash(self.hashes.pop(), node)
            size >>= 1
            level += 1
            if level >= keep_from:
                self.completed[(level, size)] = node  # the shifted old size is the subtree's index
        self.hashes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root

    def to_hex(self) -> list[str]:
        return [value.hex() for value in self.hashes]

    @classmethod
    def from_hex(cls, size: int, hashes: Sequence[str]) -> Frontier:
        return cls(size, [bytes.fromhex(value) for value in hashes])


def root_of(leaves: Iterable[bytes]) -> bytes:
    """The root over leaf hashes, streamed."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


class MerkleTree:
    """All levels of a tree in memory; proofs for any size up to ``size``."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        node, level = leaf, 0
        while True:
            if level == len(self._levels):
                self._levels.append(bytearray())
            row = self._levels[level]
            row += node
            count = len(row) // HASH_SIZE
            if count % 2:
                return
            node = node_hash(bytes(row[-2 * HASH_SIZE:-HASH_SIZE]), bytes(row[-HASH_SIZE:]))
            level += 1

    def leaf(self, index: int) -> bytes:
        return bytes(self._levels[0][index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def _node(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH_SIZE:(index + 1) * HASH_SIZE])

    def _hash(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)``; ``start`` is always aligned by the callers' splits."""
        return subtree_hash(start, end, self._node)

    def root(self, size: int | None = None) -> bytes:
        return self._hash(0, self._check_size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[size])."""
        return inclusion_path(index, self._check_size(size), self._hash)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[new_size])."""
        return consistency_path(old_size, self._check_size(new_size), self._hash)

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is beyond the {self.size} leaves held")
        return size


# --- proofs over any source of subtree hashes -----------------------------------------------------


def subtree_hash(start: int, end: int, perfect: Callable[[int, int], bytes | None]) -> bytes:
    """RFC 9162 MTH of leaves ``[start, end)``, split as the RFC splits, taking each perfect aligned
    subtree from ``perfect(level, index)`` (level 0: a leaf hash) unless it answers None."""
    count = end - start
    if count == 0:
        return EMPTY_ROOT
    if count & (count - 1) == 0 and start % count == 0:
        node = perfect(count.bit_length() - 1, start // count)
        if node is not None:
            return node
    k = _split(count)
    return node_hash(subtree_hash(start, start + k, perfect), subtree_hash(start + k, end, perfect))


def inclusion_path(index: int, size: int, mth: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 9162 PATH(index, D[size]); ``mth(start, end)`` gives the hash of leaves ``[start, end)``.

    Every range asked for is a subtree of the RFC's split (``start`` a multiple of the largest power
    of two not above ``end - start``), so a store of perfect subtrees answers most of them directly.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(mth(start + k, end))
            end = start + k
        else:
            proof.append(mth(start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_path(old_size: int, new_size: int, mth: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 9162 PROOF(old_size, D[new_size]), with ``mth`` as in ``inclusion_path``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"old size {old_size} must be between 0 and the new size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end:
        k = _split(end - start)
        if m - start <= k:
            proof.append(mth(start + k, end))
            end = start + k
        else:
            proof.append(mth(start, start + k))
            start += k
            complete = False
    if not complete:
        proof.append(mth(start, end))
    proof.reverse()
    return proof


def ranges_asked(path: Callable[[Callable[[int, int], bytes]], list[bytes]]) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges a proof computation asks ``mth`` for, without hashing anything:
    ``ranges_asked(lambda mth: inclusion_path(5, 100, mth))``. Lets a store fetch them in one go."""
    asked: list[tuple[int, int]] = []

    def record(start: int, end: int) -> bytes:
        asked.append((start, end))
        return EMPTY_ROOT

    path(record)
    return asked


def subtrees(start: int, end: int, min_size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split ``[start, end)`` as the RFC's MTH does into perfect aligned subtrees of at least
    ``min_size`` leaves, returned as ``(level, index)``, and leftover leaf ranges below that size."""
    perfect: list[tuple[int, int]] = []
    loose: list[tuple[int, int]] = []

    def visit(a: int, b: int) -> None:
        count = b - a
        if count <= 0:
            return
        if count >= min_size and count & (count - 1) == 0 and a % count == 0:
            level = count.bit_length() - 1
            perfect.append((level, a >> level))
        elif count <= min_size and a // min_size == (b - 1) // min_size:
            loose.append((a, b))
        else:
            k = _split(count)
            visit(a, a + k)
            visit(a + k, b)

    visit(start, end)
    return perfect, loose


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2 (sizes 0 and equal sizes need an empty proof)."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
