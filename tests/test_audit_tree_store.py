"""Proofs from stored subtrees: the same proofs as the whole tree gives, in a few queries, checked
against the signed root, and refused when a stored node was altered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import fresh_database

from latentops.core.errors import IntegrityViolation
from latentops.governance import audit, checkpoints, compliance, merkle, merkle_store, verification
from latentops.platform.database import get_engine, session_scope
from latentops.platform.tables import AuditTreeNode


def _append(database_url: str, count: int, start: int = 0) -> None:
    with session_scope(database_url) as db:
        for index in range(start, start + count):
            audit.record(db, actor="alice@example.com", action="job.submit", resource=f"job:{index}", details={"i": index})


def _checkpoint(database_url: str, tmp_path: Path) -> None:
    with session_scope(database_url) as db:
        checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(tmp_path / "key.pem"),
                           sink=checkpoints.FileSink(tmp_path / "sink.jsonl"))


def _grow(database_url: str, tmp_path: Path) -> merkle.MerkleTree:
    """1,000 entries, checkpointed at 700 and at 1,000; returns the whole tree, built in memory."""
    _append(database_url, 700)
    _checkpoint(database_url, tmp_path)
    _append(database_url, 300, start=700)
    _checkpoint(database_url, tmp_path)
    with session_scope(database_url) as db:
        return compliance.load_tree(db, 1000)


@pytest.fixture
def grown(database_url: str, tmp_path: Path) -> merkle.MerkleTree:
    """A database of this test's own with :func:`_grow`'s entries, for a test that alters it."""
    return _grow(database_url, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def read_only(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, merkle.MerkleTree]]:
    """One database per backend with :func:`_grow`'s entries, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("grown")
    database = fresh_database(request.param, folder, request)
    url = next(database)
    yield url, _grow(url, folder)
    next(database, None)


def test_checkpoints_store_every_complete_subtree_of_256_leaves_and_up(read_only: tuple[str, merkle.MerkleTree]) -> None:
    database_url, grown = read_only
    with session_scope(database_url) as db:
        stored = {(n.level, n.idx): n.hash for n in db.scalars(sa.select(AuditTreeNode))}
    # 1,000 leaves: three complete blocks of 256 (768 leaves) and one complete pair of them (512).
    assert sorted(stored) == [(8, 0), (8, 1), (8, 2), (9, 0)]
    for (level, idx), value in stored.items():
        assert value == grown._hash(idx << level, (idx + 1) << level).hex()


@pytest.mark.parametrize("seq", [0, 1, 255, 256, 511, 700, 767, 768, 999])
def test_inclusion_proofs_equal_the_whole_trees_and_take_a_few_queries(read_only: tuple[str, merkle.MerkleTree],
                                                                        seq: int) -> None:
    database_url, grown = read_only
    statements: list[str] = []
    engine = get_engine(database_url)

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(database_url) as db:
            proof = compliance.inclusion(db, seq=seq)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert proof["proof"] == [node.hex() for node in grown.inclusion_proof(seq)]
    assert proof["leaf_hash"] == grown.leaf(seq).hex() and proof["tree_size"] == 1000
    assert merkle.verify_inclusion(seq, 1000, grown.leaf(seq), [bytes.fromhex(n) for n in proof["proof"]], grown.root())
    # Pending check, latest checkpoint, nodes, leaves, the entry (and the session's own bookkeeping):
    # a handful, not one per leaf.
    assert len(statements) <= 8, statements


@pytest.mark.parametrize(("old", "new"), [(0, 1000), (700, 1000), (1, 1000), (300, 700), (256, 512), (999, 1000),
                                          (513, 768), (1000, 1000)])
def test_consistency_proofs_equal_the_whole_trees(read_only: tuple[str, merkle.MerkleTree], old: int, new: int) -> None:
    database_url, grown = read_only
    with session_scope(database_url) as db:
        result = compliance.consistency(db, old=old, new=new)
    assert result["old_root"] == grown.root(old).hex() and result["new_root"] == grown.root(new).hex()
    assert result["proof"] == [node.hex() for node in grown.consistency_proof(old, new)]


def test_entries_not_checkpointed_yet_are_proved_from_their_leaves(database_url: str) -> None:
    _append(database_url, 600)
    with session_scope(database_url) as db:
        whole = compliance.load_tree(db, 600)
        tree = merkle_store.StoredTree(db, 600)
        assert db.scalar(sa.select(sa.func.count()).select_from(AuditTreeNode)) == 0
        assert tree.root() == whole.root()
        assert tree.prepared(lambda mth: merkle.inclusion_path(300, 600, mth)) == whole.inclusion_proof(300)


def test_an_altered_node_is_refused_by_prove_and_reported_by_verify(grown: merkle.MerkleTree, database_url: str,
                                                                    tmp_path: Path) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), session_scope(database_url) as db:
        db.execute(sa.update(AuditTreeNode).where(AuditTreeNode.level == 8, AuditTreeNode.idx == 1)
                   .values(hash="0" * 64))
    # An attacker with the owner's rights goes around the trigger.
    with get_engine(database_url).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE audit_tree_nodes DISABLE TRIGGER audit_tree_nodes_no_update_delete"))
            conn.execute(sa.text("UPDATE audit_tree_nodes SET hash = :h WHERE level = 8 AND idx = 1"), {"h": "0" * 64})
            conn.execute(sa.text("ALTER TABLE audit_tree_nodes ENABLE TRIGGER audit_tree_nodes_no_update_delete"))
        else:
            conn.execute(sa.text("DROP TRIGGER audit_tree_nodes_no_update"))
            conn.execute(sa.text("UPDATE audit_tree_nodes SET hash = :h WHERE level = 8 AND idx = 1"), {"h": "0" * 64})
    # Entry 10's path uses the subtree [256, 512): refused. Entry 300's does not: still proved.
    with pytest.raises(IntegrityViolation, match="does not give the root"), session_scope(database_url) as db:
        compliance.inclusion(db, seq=10)
    with session_scope(database_url) as db:
        assert compliance.inclusion(db, seq=300)["proof"] == [n.hex() for n in grown.inclusion_proof(300)]
    with session_scope(database_url) as db:
        report = verification.verify(db, public_key=checkpoints.load_signing_key(tmp_path / "key.pem").public_key())
    assert not report.ok
    # On SQLite the dropped trigger is named too (PostgreSQL's was enabled again).
    dropped = [("guard_missing", None)] if not database_url.startswith("postgresql") else []
    assert [(d.kind, d.seq) for d in report.damage] == [("tree_node", 256), *dropped]
    assert "level 8 index 1" in report.damage[0].detail
