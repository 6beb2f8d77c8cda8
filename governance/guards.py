"""The database's own guards of the audit tables, checked by ``latentops audit verify``.

The chain's integrity does not rest on them (hashes, MACs and signed checkpoints show any change),
but they stop the change from happening: migrations 0001, 0002, 0010 and 0012 install triggers
that reject UPDATE, DELETE and (PostgreSQL) TRUNCATE of the audit tables, and on PostgreSQL limit
the application role (``latentops_app``, when it exists) to SELECT and INSERT (plus the guarded
DELETE of integrated pending rows). Someone who drops a trigger or grants the role more can then
rewrite the trail's tail unseen until the next checkpoint; ``missing`` names what is gone.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.governance.damage import Damage

APP_ROLE = "latentops_app"

# table -> triggers, per dialect (names from the migrations).
SQLITE_TRIGGERS = {
    "audit_entries": ("audit_entries_no_update", "audit_entries_no_delete"),
    "audit_checkpoints": ("audit_checkpoints_no_update", "audit_checkpoints_no_delete"),
    "audit_tree_nodes": ("audit_tree_nodes_no_update", "audit_tree_nodes_no_delete"),
    "audit_pending": ("audit_pending_no_update", "audit_pending_no_delete"),
}
POSTGRES_TRIGGERS = {
    "audit_entries": ("audit_entries_no_update_delete", "audit_entries_no_truncate"),
    "audit_checkpoints": ("audit_checkpoints_no_update_delete", "audit_checkpoints_no_truncate"),
    "audit_tree_nodes": ("audit_tree_nodes_no_update_delete", "audit_tree_nodes_no_truncate"),
    "audit_pending": ("audit_pending_guard", "audit_pending_no_truncate"),
}
# Privileges the application role must not hold.
FORBIDDEN = {
    "audit_entries": ("UPDATE", "DELETE", "TRUNCATE"),
    "audit_checkpoints": ("UPDATE", "DELETE", "TRUNCATE"),
    "audit_tree_nodes": ("UPDATE", "DELETE", "TRUNCATE"),
    "audit_pending": ("UPDATE", "TRUNCATE"),
}


def missing(session: Session) -> list[Damage]:
    """One ``Damage`` (kind ``guard_missing``) per trigger or privilege limit that is gone."""
    problems = _missing_sqlite(session) if session.get_bind().dialect.name == "sqlite" else _missing_postgres(session)
    return [Damage("guard_missing", None, problem) for problem in problems]


def _missing_sqlite(session: Session) -> list[str]:
    present = set(session.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
    return [f"trigger {name} on {table} is missing: {table} can be changed in place"
            for table, names in SQLITE_TRIGGERS.items() for name in names if name not in present]


def _missing_postgres(session: Session) -> list[str]:
    rows = session.execute(sa.text(
        "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables)"), {"tables": list(POSTGRES_TRIGGERS)}).all()
    present = {(row.relname, row.tgname): row.tgenabled for row in rows}
    problems = []
    for table, names in POSTGRES_TRIGGERS.items():
        for name in names:
            state = present.get((table, name))
            if state is None:
                problems.append(f"trigger {name} on {table} is missing: {table} can be changed in place")
            elif state == "D":
                problems.append(f"trigger {name} on {table} is disabled: {table} can be changed in place")
    role = session.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": APP_ROLE}).first()
    if role is not None:
        for table, privileges in FORBIDDEN.items():
            for privilege in privileges:
                held = session.execute(sa.text("SELECT has_table_privilege(:role, :table, :privilege)"),
                                       {"role": APP_ROLE, "table": table, "privilege": privilege}).scalar()
                if held:
                    problems.append(f"privilege {privilege} on {table} is granted to {APP_ROLE}: the application "
                                    "role may change the trail")
    return problems
