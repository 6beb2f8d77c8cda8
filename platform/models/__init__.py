"""The ORM: SQLAlchemy 2.0 typed models for every table. Import from here."""

from latentops.platform.models.assets import Asset, Dataset
from latentops.platform.models.audit import (
    AuditCheckpoint,
    AuditEntry,
    AuditPending,
    AuditSubjectKey,
    AuditTreeNode,
)
from latentops.platform.models.base import Base, utcnow
from latentops.platform.models.catalog import AccessGrant, LoraAdapter, ModelRecord, ModelVersion
from latentops.platform.models.identity import ApiToken, Membership, Role, Team, User
from latentops.platform.models.jobs import Job, JobEvent, JobState
from latentops.platform.models.policy import PolicyDataEdit, PolicyDecision
from latentops.platform.models.screening import CopyrightLicence, CopyrightReference, ScreeningResult
from latentops.platform.models.sessions import WebSession

__all__ = [
    "AccessGrant", "ApiToken", "Asset", "AuditCheckpoint", "AuditEntry", "AuditPending", "AuditSubjectKey", "AuditTreeNode", "Base", "CopyrightLicence", "CopyrightReference",
    "Dataset", "Job", "JobEvent", "JobState", "LoraAdapter", "Membership", "ModelRecord", "ModelVersion",
    "PolicyDataEdit", "PolicyDecision", "Role", "ScreeningResult", "Team", "User", "WebSession", "utcnow",
]
