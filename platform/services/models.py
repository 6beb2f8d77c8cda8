"""Base models in the catalogue: import, list, show, remove (soft), and the bundled demo model.

The weights themselves live in the content-addressed store (:mod:`latentops.pipelines.store`);
this service keeps the catalogue rows (``base_models``, ``model_versions``) and writes an audit
entry for every change in the same transaction. Importing validates and hashes the source before
anything is copied or written, so bad input changes nothing.

Who may see a model (``resource_of``, ``visible_model``) is decided here for the REST routes, the
portal and the job builders alike: a model owned by a team is visible to that team, to grantees
and to roles that see every team; any other caller gets ``NotFound``, like a missing model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, NotFound
from latentops.governance import access, audit
from latentops.governance.access import Principal
from latentops.pipelines.engine import WeightsRef
from latentops.pipelines.store import ModelStore
from latentops.platform.services import users
from latentops.platform.tables import AccessGrant, ModelRecord, ModelVersion, Team, utcnow

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ModelSummary:
    name: str
    family: str
    versions: int
    latest_hash: str
    size_bytes: int
    removed: bool


def _check_name(name: str) -> str:
    name = name.strip()
    if not NAME_RE.match(name):
        raise InvalidInput(f"name: {name!r} is not a valid model name (lowercase letters, digits, '.', '-', '_'; max 100)")
    return name


def import_model(
    session: Session,
    *,
    source: str | Path,
    name: str,
    actor: audit.Actor | str,
    store_root: Path,
    allow_pickle: bool = False,
    description: str = "",
    licence: str = "",
    sensitivity: str = "internal",
    owner_team: str | None = None,
) -> ModelVersion:
    """Register ``source`` (a local diffusers folder or checkpoint) as model ``name``, version 1.

    ``sensitivity`` must be a label the models policy knows (policy data ``models.sensitivity``);
    ``owner_team`` an existing team. Both are checked before anything is stored.
    """
    name = _check_name(name)
    sensitivity = check_sensitivity(sensitivity)
    owner = users.existing_team(session, owner_team, field="owner_team") if owner_team else None
    existing = session.scalar(sa.select(ModelRecord).where(ModelRecord.name == name))
    if existing is not None:
        state = "a removed model" if existing.removed_at else "a model"
        raise Conflict(f"name: {state} named {name!r} already exists; choose another name")
    store = ModelStore(store_root)
    inspection = store.inspect(source, allow_pickle=allow_pickle)
    path, copied = store.put(inspection)
    record = ModelRecord(
        name=name, family=inspection.family, description=description, licence=licence, sensitivity=sensitivity,
        owner_team_id=owner.id if owner else None,
    )
    session.add(record)
    session.flush()
    version = ModelVersion(
        model_id=record.id, version=1, content_hash=inspection.content_hash, path=str(path),
        size_bytes=inspection.size_bytes,
        config={"format": inspection.format, "family": inspection.family, "source": str(inspection.source),
                "config_sha256": inspection.config_hash, **inspection.details},
        aliases=["latest"],
    )
    session.add(version)
    session.flush()
    audit.record(
        session, actor=actor, action="model.import", resource=f"model:{record.id}",
        details={"name": name, "family": inspection.family, "format": inspection.format, "version": 1,
                 "content_hash": inspection.content_hash, "stored_copy": copied, "allow_pickle": allow_pickle,
                 "sensitivity": sensitivity, "owner_team": owner.name if owner else None},
    )
    return version


def native_resolution(path: Path) -> int:
    """Pixels of a diffusers model's default output (UNet sample size x VAE scale), 0 when unknown."""
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        return 0


def check_sensitivity(label: str) -> str:
    """``label`` if the models policy knows it, else ``InvalidInput`` naming it and the known ones."""
    from latentops.governance import policy

    known = sorted(policy.policy_data("models.sensitivity"))
    value = label.strip().lower()
    if value not in known:
        raise InvalidInput(f"sensitivity: {label!r} is not a label the models policy knows; choose one of {', '.join(known)}")
    return value


def get_model(session: Session, *, name: str, include_removed: bool = False) -> ModelRecord:
    record = session.scalar(sa.select(ModelRecord).where(ModelRecord.name == name.strip()))
    if record is None or (record.removed_at is not None and not include_removed):
        raise NotFound(f"model: no model named {name!r}")
    return record


def versions_of(session: Session, *, model: ModelRecord) -> list[ModelVersion]:
    return list(session.scalars(sa.select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.version)))


def get_version(session: Session, *, name: str, version: int | None = None) -> ModelVersion:
    """A version of a live model (the latest when ``version`` is None)."""
    model = get_model(session, name=name)
    query = sa.select(ModelVersion).where(ModelVersion.model_id == model.id)
    query = query.where(ModelVersion.version == version) if version is not None else query.order_by(ModelVersion.version.desc())
    found = session.scalars(query.limit(1)).first()
    if found is None:
        raise NotFound(f"model: {name!r} has no version {version}")
    return found


def weights_ref(session: Session, *, version: ModelVersion) -> WeightsRef:
    """What the generation engine needs to load ``version``."""
    model = session.get(ModelRecord, version.model_id)
    assert model is not None
    return WeightsRef(
        content_hash=version.content_hash, path=Path(version.path), family=model.family,
        format=str(version.config.get("format", "diffusers")),
    )


def list_models(session: Session, *, include_removed: bool = False) -> list[ModelSummary]:
    query = sa.select(ModelRecord).order_by(ModelRecord.name)
    if not include_removed:
        query = query.where(ModelRecord.removed_at.is_(None))
    summaries = []
    for record in session.scalars(query):
        versions = versions_of(session, model=record)
        latest = versions[-1] if versions else None
        summaries.append(
            ModelSummary(
                name=record.name, family=record.family, versions=len(versions),
                latest_hash=latest.content_hash if latest else "", size_bytes=latest.size_bytes if latest else 0,
                removed=record.removed_at is not None,
            )
        )
    return summaries


def describe(session: Session, *, name: str) -> dict[str, Any]:
    """Everything ``models show`` prints, as plain data."""
    record = get_model(session, name=name, include_removed=True)
    return {
        "name": record.name, "family": record.family, "description": record.description,
        "sensitivity": record.sensitivity, "owner_team": owner_team_name(session, record), "licence": record.licence,
        "created_at": record.created_at,
        "removed_at": record.removed_at,
        "versions": [
            {"version": v.version, "content_hash": v.content_hash, "path": v.path, "size_bytes": v.size_bytes,
             "format": v.config.get("format"), "aliases": v.aliases, "created_at": v.created_at}
            for v in versions_of(session, model=record)
        ],
    }


# --- what a caller may see -------------------------------------------------------------------


def _granted(session: Session, principal: Principal, record: ModelRecord) -> bool:
    team_ids = list(session.scalars(sa.select(Team.id).where(Team.name.in_(principal.teams)))) if principal.teams else []
    query = sa.select(sa.func.count(AccessGrant.id)).where(
        AccessGrant.resource_type == "model", AccessGrant.resource_id == record.id, AccessGrant.revoked_at.is_(None),
        sa.or_(AccessGrant.user_id == principal.user.id, AccessGrant.team_id.in_(team_ids)))
    return bool(session.scalar(query))


def owner_team_name(session: Session, record: ModelRecord) -> str | None:
    """The name of the team that owns ``record``; None for a platform-wide model."""
    owner = session.get(Team, record.owner_team_id) if record.owner_team_id else None
    return owner.name if owner else None


def resource_of(session: Session, principal: Principal, record: ModelRecord) -> dict[str, Any]:
    """The access policy's resource for ``record``: its owning team and whether the caller holds a grant."""
    owner = owner_team_name(session, record)
    if owner is None:  # a platform-wide base model belongs to no team: everyone may see it
        return {"team": None, "granted": True}
    return {"team": owner, "granted": _granted(session, principal, record)}


def visible_model(session: Session, principal: Principal, name: str, action: str = "models.read") -> ModelRecord:
    """The live model ``name`` if the caller may ``action`` it; otherwise NotFound, like a missing one."""
    missing = f"model: no model named {name!r}"
    access.check(session, principal=principal, action=action)
    record = session.scalar(sa.select(ModelRecord).where(ModelRecord.name == name, ModelRecord.removed_at.is_(None)))
    if record is None:
        raise NotFound(missing)
    access.check(session, principal=principal, action=action, resource=resource_of(session, principal, record),
                 not_found=missing)
    return record


def summary_json(session: Session, record: ModelRecord) -> dict[str, Any]:
    """A model as the API and the portal list it: catalogue fields, owner, latest version's hash and size."""
    versions = versions_of(session, model=record)
    latest = versions[-1] if versions else None
    return {"name": record.name, "family": record.family, "description": record.description,
            "sensitivity": record.sensitivity, "licence": record.licence, "owner_team": owner_team_name(session, record),
            "versions": len(versions), "latest_hash": latest.content_hash if latest else "",
            "size_bytes": latest.size_bytes if latest else 0}


def remove_model(session: Session, *, name: str, actor: audit.Actor | str) -> ModelRecord:
    """Soft removal: the model disappears from listings and cannot be used; weights and rows stay."""
    record = get_model(session, name=name)
    record.removed_at = utcnow()
    session.flush()
    audit.record(session, actor=actor, action="model.remove", resource=f"model:{record.id}", details={"name": record.name})
    return record


def bootstrap_demo(session: Session, *, actor: audit.Actor | str, store_root: Path) -> ModelVersion:
    """Register the committed demo model as ``digits-demo``; a no-op when it is already there."""
    from latentops.pipelines.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME

    existing = session.scalar(sa.select(ModelRecord).where(ModelRecord.name == DEMO_MODEL_NAME))
    if existing is not None and existing.removed_at is None:
        store = ModelStore(store_root)
        current = versions_of(session, model=existing)[-1]
        if current.content_hash == store.inspect(DEMO_MODEL_DIR).content_hash:
            return current
        raise Conflict(f"name: a different model named {DEMO_MODEL_NAME!r} already exists")
    return import_model(
        session, source=DEMO_MODEL_DIR, name=DEMO_MODEL_NAME, actor=actor, store_root=store_root,
        description="Tiny text-to-image model of handwritten digits, trained by latentops on scikit-learn's digits.",
        licence="BSD-3-Clause (data: scikit-learn digits)", sensitivity="public",
    )
