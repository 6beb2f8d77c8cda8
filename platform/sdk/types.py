"""The shapes of the REST API's answers, as ``TypedDict`` so type checkers follow them.

The SDK returns the API's JSON as plain dictionaries: what a route documents in the OpenAPI spec
is what a caller gets, with no second model to keep in step. These types name the keys callers
rely on; the server may add keys (``total=False`` marks answers whose keys vary by state).
"""

from __future__ import annotations

from typing import Any, TypedDict


class Membership(TypedDict):
    team: str
    role: str


class User(TypedDict):
    id: int
    email: str
    display_name: str
    active: bool
    sso: bool
    locked: bool
    memberships: list[Membership]


class Me(User):
    via: str  # "token" | "session"
    scopes: list[str] | None


class Team(TypedDict):
    id: int
    name: str
    members: int


class Token(TypedDict):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    expires_at: str | None
    revoked: bool
    last_used_at: str | None


class NewToken(Token):
    token: str  # the secret: in this answer only


class Job(TypedDict):
    id: int
    kind: str
    queue: str
    state: str
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    owner_id: int | None
    team_id: int | None
    team: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    hold_reason: str | None
    queue_position: int | None


class JobPage(TypedDict):
    items: list[Job]
    offset: int
    limit: int
    next_offset: int | None


class JobEvent(TypedDict):
    at: str
    kind: str
    message: str
    data: dict[str, Any] | None


class Progress(TypedDict, total=False):
    """One ``progress`` event of the job's Server-Sent Events stream."""

    id: int
    state: str
    progress: dict[str, Any]
    error: str | None
    hold_reason: str | None
    queue_position: int | None
    finished: bool


class ModelVersion(TypedDict, total=False):
    version: int
    content_hash: str
    format: str
    size_bytes: int
    family: str


class Model(TypedDict, total=False):
    name: str
    family: str
    description: str
    sensitivity: str
    licence: str
    owner_team: str | None
    versions: Any  # a count in lists, the list of ModelVersion in ``models.get``
    latest_hash: str
    size_bytes: int


class Grant(TypedDict, total=False):
    id: int
    model: str
    action: str
    team: str | None
    user: str | None
    granted_at: str | None


class Decision(TypedDict, total=False):
    allow: bool
    reasons: list[str]
    rule_ids: list[str]
    revision: str
    decision_id: int | None
    path: str
    recorded: bool


class ProtectedName(TypedDict):
    name: str
    category: str  # trademarked character, celebrity or living artist


class ProtectedNamesPage(TypedDict):
    items: list[ProtectedName]
    total: int
    offset: int
    limit: int
    next_offset: int | None
    revision: str
    categories: list[str]


class ProtectedNamesEdit(TypedDict):
    revision: str  # the new policy revision
    previous_revision: str
    added: list[ProtectedName]
    removed: list[str]
    recategorised: list[ProtectedName]
    total: int


class AuditPage(TypedDict, total=False):
    entries: list[dict[str, Any]]
    next_after: int | None
    identities: dict[str, str | None]  # with reveal: pseudonym -> identity (None once erased)


class VerifyReport(TypedDict, total=False):
    ok: bool
    entries: int
    pending: int
    checkpoints: int
    sink_checkpoints: int
    tree_size: int
    root_hash: str
    damage: list[dict[str, Any]]
    warnings: list[str]
    signed_checkpoints_checked: bool
    latest_checkpoint: dict[str, Any] | None


class PublicKeys(TypedDict):
    key_id: str  # the current signing key's id
    current_pem: str
    keyring_pem: str  # every key that signed checkpoints here, rotated-out ones included
    key_ids: list[str]


class QuarantinedImage(TypedDict, total=False):
    asset_id: int
    status: str
    created_at: str | None
    team_id: int | None
    job_id: int | None
    scores: dict[str, float]
    reasons: list[str]
    matches: list[dict[str, Any]]
    detectors: list[str]
    review_reason: str | None


class Review(TypedDict):
    asset_id: int
    status: str
    review_reason: str | None
    reviewed_at: str | None


class ImportedReference(TypedDict):
    file: str
    reference_id: int


class FailedFile(TypedDict):
    file: str
    reason: str


class ReferenceImport(TypedDict):
    added: list[ImportedReference]
    duplicates: list[ImportedReference]  # already in the index (same bytes)
    failures: list[FailedFile]  # not an image, corrupt, decompression bomb, ...


class Reference(TypedDict):
    id: int
    owner: str
    licence: str
    title: str
    phash: str
    embedded: bool  # has a CLIP embedding
    path: str  # the server file it came from, or upload:<name>
    created_at: str | None


class ReferencePage(TypedDict):
    items: list[Reference]
    offset: int
    limit: int
    next_offset: int | None


class CopyrightMatch(TypedDict):
    reference_id: int
    owner: str
    method: str  # "phash" | "orb" | "clip"
    score: float


class ScreeningVerdict(TypedDict):
    """The same JSON as ``latentops screen IMAGE --json``."""

    verdict: str  # "release" | "quarantine"
    reasons: list[str]
    content: dict[str, Any]  # {"scores": {category: score}, "detector": str}
    copyright: dict[str, list[CopyrightMatch]]  # {"matches": [...]}
