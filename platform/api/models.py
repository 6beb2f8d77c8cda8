"""``/api/v1/models``: the base model catalogue, imports, weight grants and streamed downloads.

A model owned by a team is visible to that team, to grantees and to roles that see every team;
any other caller gets 404 (``services.models.visible_model``). Downloading needs a ``download`` grant (the models policy decides,
and the decision is recorded) and writes a ``model.download`` audit entry that commits before
the first byte is sent. A model folder streams as an uncompressed tar, a single checkpoint file
as itself.

Imports read from the server's import folder (``LATENTOPS_HOME/imports``): the request names a
path relative to it, never an arbitrary server path.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from latentops.core.errors import InvalidInput, NotFound
from latentops.core.settings import Settings
from latentops.governance import access, audit
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.services import grants as grants_service
from latentops.platform.services import models as models_service
from latentops.platform.services.models import resource_of, summary_json, visible_model
from latentops.platform.tables import ModelRecord

router = APIRouter(tags=["models"])
CHUNK = 1024 * 1024


class ImportRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    source: str = Field(min_length=1, max_length=500, description="Path relative to the server's import folder.")
    description: str = Field(default="", max_length=2000)
    licence: str = Field(default="", max_length=200)
    sensitivity: str = Field(default="internal", max_length=32, description="A label of policy data models.sensitivity.")
    owner_team: str | None = Field(default=None, max_length=100, description="The team that owns the model (an existing one).")


class GrantRequest(BaseModel):
    action: str = Field(min_length=1, max_length=32, description="use, download or manage")
    team: str | None = Field(default=None, max_length=100)
    user: str | None = Field(default=None, max_length=320)


def import_dir(settings: Settings) -> Path:
    return settings.home / "imports"


def resolve_import(settings: Settings, source: str) -> Path:
    """``source`` inside the import folder; anything that escapes it is refused."""
    root = import_dir(settings).resolve()
    if Path(source).is_absolute() or "\x00" in source:
        raise InvalidInput(f"source: must be a path relative to the import folder, got {source!r}")
    path = (root / source).resolve()
    if not path.is_relative_to(root):
        raise InvalidInput(f"source: {source!r} leaves the import folder")
    if not path.exists():
        raise InvalidInput(f"source: {source!r} does not exist in the import folder")
    return path


@router.get("/models")
def list_models(session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """Base models the caller may see."""
    access.check(session, principal=principal, action="models.read")
    rows = session.scalars(sa.select(ModelRecord).where(ModelRecord.removed_at.is_(None)).order_by(ModelRecord.name))
    return [summary_json(session, r) for r in rows
            if access.allowed(session, principal=principal, action="models.read", resource=resource_of(session, principal, r))]


@router.get("/models/{name}")
def show_model(name: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """One model with its versions."""
    record = visible_model(session, principal, name)
    described = models_service.describe(session, name=record.name)
    for version in described["versions"]:
        version.pop("path", None)  # server paths are not the caller's business
    return {**summary_json(session, record), "versions": described["versions"]}


@router.post("/models", status_code=201)
def import_model(body: ImportRequest, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Import a model from the server's import folder (admins)."""
    access.check(session, principal=principal, action="models.import")
    source = resolve_import(settings, body.source)
    assert settings.model_store is not None
    version = models_service.import_model(session, source=source, name=body.name, actor=principal.email,
                                          store_root=settings.model_store, description=body.description,
                                          licence=body.licence, sensitivity=body.sensitivity, owner_team=body.owner_team)
    record = session.get(ModelRecord, version.model_id)
    assert record is not None
    return summary_json(session, record)


@router.get("/models/{name}/grants")
def list_grants(name: str, session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """Active grants on a model."""
    record = visible_model(session, principal, name, "grants.read")
    return [{**g, "granted_at": g["granted_at"].isoformat() if g["granted_at"] else None}
            for g in grants_service.list_grants(session, model=record.name)]


@router.post("/models/{name}/grants", status_code=201)
def grant(name: str, body: GrantRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Grant use, download or manage to a team or a user (admins or holders of a manage grant)."""
    record = visible_model(session, principal, name, "grants.manage")
    row = grants_service.grant(session, model=record.name, action=body.action, actor=principal.user,
                               team=body.team, user=body.user)
    return {"id": row.id, "model": record.name, "action": row.action, "team": body.team, "user": body.user}


@router.delete("/models/{name}/grants")
def revoke(name: str, session: SessionDep, principal: PrincipalDep, action: str = Query(max_length=32),
           team: str | None = Query(default=None, max_length=100),
           user: str | None = Query(default=None, max_length=320)) -> dict[str, Any]:
    """Revoke the grant of ``action`` to a team or a user."""
    record = visible_model(session, principal, name, "grants.manage")
    count = grants_service.revoke(session, model=record.name, action=action, actor=principal.user, team=team, user=user)
    return {"model": record.name, "action": action, "revoked": count}


class _Pipe(io.RawIOBase):
    """A write-only file whose bytes are collected for a streaming response."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def tar_stream(folder: Path, arcname: str) -> Iterator[bytes]:
    pipe = _Pipe()
    with tarfile.open(fileobj=pipe, mode="w|") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                info = archive.gettarinfo(str(path), arcname=f"{arcname}/{path.relative_to(folder).as_posix()}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
                yield pipe.drain()
    yield pipe.drain()


def file_stream(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


@router.get("/models/{name}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}, "application/octet-stream": {}}}})
def download(name: str, session: SessionDep, principal: PrincipalDep,
             version: int | None = Query(default=None, ge=1)) -> StreamingResponse:
    """Stream a model's weights; needs a ``download`` grant; audited."""
    record = visible_model(session, principal, name, "models.download")
    grants_service.check_access(session, model=record.name, action="download", actor=principal.user)
    found = models_service.get_version(session, name=record.name, version=version)
    path = Path(found.path)
    if not path.exists():
        raise NotFound(f"model: the weights of {record.name} v{found.version} are missing from the store")
    audit.record(session, actor=principal.email, action="model.download", resource=f"model:{record.id}",
                 details={"name": record.name, "version": found.version, "content_hash": found.content_hash,
                          "via": principal.via})
    stem = f"{record.name}-v{found.version}"
    if path.is_dir():
        return StreamingResponse(tar_stream(path, stem), media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{stem}.tar"'})
    return StreamingResponse(file_stream(path), media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{stem}{path.suffix}"'})
