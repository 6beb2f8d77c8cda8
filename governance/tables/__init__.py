"""The tables governance writes: the audit trail, policy decisions and data edits, screening
results and the copyright index. They sit on the shared ORM base, so Alembic sees one metadata;
their foreign keys name the shared tables of :mod:`latentops.core.tables`, imported here so that
the metadata is whole wherever governance is used on its own."""

import latentops.core.tables  # noqa: F401 - the tables this layer's foreign keys refer to
from latentops.governance.tables import identity, witness  # noqa: F401 - their tables join the metadata
from latentops.governance.tables.audit import (
    AuditCheckpoint,
    AuditEntry,
    AuditPending,
    AuditSubjectKey,
    AuditTreeNode,
)
from latentops.governance.tables.policy import PolicyDataEdit, PolicyDecision
from latentops.governance.tables.screening import CopyrightLicence, CopyrightReference, ScreeningResult

__all__ = [
    "AuditCheckpoint", "AuditEntry", "AuditPending", "AuditSubjectKey", "AuditTreeNode", "CopyrightLicence",
    "CopyrightReference", "PolicyDataEdit", "PolicyDecision", "ScreeningResult",
]
