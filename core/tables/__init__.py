"""The shared domain tables, on the one ORM base: read by governance and written by the platform."""

from latentops.core.tables.assets import Asset, Dataset
from latentops.core.tables.catalog import AccessGrant, LoraAdapter, ModelRecord, ModelVersion
from latentops.core.tables.identity import ApiToken, Membership, Role, Team, User
from latentops.core.tables.jobs import Job, JobEvent, JobState

__all__ = [
    "AccessGrant", "ApiToken", "Asset", "Dataset", "Job", "JobEvent", "JobState", "LoraAdapter", "Membership",
    "ModelRecord", "ModelVersion", "Role", "Team", "User",
]
