"""Every table of the deployment, for the platform's code and Alembic: one metadata.

The tables live with the layer that owns them: the shared domain tables in
:mod:`latentops.core.tables`, the audit, policy and screening tables in
:mod:`latentops.governance.tables`, and the portal's sign-in sessions here.
"""

from latentops.core.orm import Base, utcnow
from latentops.core.tables import (
    AccessGrant,
    ApiToken,
    Asset,
    Dataset,
    Job,
    JobEvent,
    JobState,
    LoraAdapter,
    Membership,
    ModelRecord,
    ModelVersion,
    Role,
    Team,
    User,
)
from latentops.governance.tables import (
    AuditCheckpoint,
    AuditEntry,
    AuditPending,
    AuditSubjectKey,
    AuditTreeNode,
    CopyrightLicence,
    CopyrightReference,
    PolicyDataEdit,
    PolicyDecision,
    ScreeningResult,
)
from latentops.platform.tables.sessions import WebSession

__all__ = [
    "AccessGrant", "ApiToken", "Asset", "AuditCheckpoint", "AuditEntry", "AuditPending", "AuditSubjectKey", "AuditTreeNode", "Base", "CopyrightLicence", "CopyrightReference",
    "Dataset", "Job", "JobEvent", "JobState", "LoraAdapter", "Membership", "ModelRecord", "ModelVersion",
    "PolicyDataEdit", "PolicyDecision", "Role", "ScreeningResult", "Team", "User", "WebSession", "utcnow",
]
