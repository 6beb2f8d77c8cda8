"""The ``cpu`` queue's job kinds: copyright indexing of a folder, audit exports, dataset packages.

Each is work that needs no accelerator but can take minutes (a folder of thousands of works to
hash, embed and store; an audit trail of millions of entries to prove; a dataset of many
thousand images to archive), so it runs on a ``cpu`` worker beside the ``gpu`` ones instead of in
the request or the console. Each kind has:

* a **submit** function that refuses bad input before anything is queued, with one line naming
  the field (a missing folder, a folder without images, an unknown format, a dataset that is not
  ready), and that the caller's role was checked for (the routes ask the access policy; the local
  console acts as its operator, as its in-process commands do);
* a **handler** run by the worker (``JOB_KINDS``), reporting progress through the job like the
  ``gpu`` kinds do, so ``latentops jobs status|watch``, ``GET /jobs/{id}/progress`` and the portal's
  job page show it;
* where it makes a file, the file under ``ARTIFACTS/job-results/<job id>/``, named in the job's
  result (``file``, ``bytes``, ``sha256``) and served by the kind's download route.

The worker checks the stored params again before the handler runs (``services.job_params.verify``
calls the kind's validator), and the handler checks what ties them to the job: the actor is the
job's owner, and a job submitted through the API indexes only the folder its uploads were staged in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, NotFound
from latentops.core.settings import Settings
from latentops.governance import audit
from latentops.governance.image_formats import IMAGE_SUFFIXES
from latentops.platform.database import session_scope
from latentops.platform.services import users
from latentops.platform.tables import Dataset, Job, JobState, Team, User

RESULTS_DIR = "job-results"  # ARTIFACTS/job-results/<job id>/<file>
UPLOADS_DIR = "copyright-uploads"  # ARTIFACTS/copyright-uploads/<token>/: files sent to POST .../references/jobs
MAX_INDEX_FILES = 100_000  # files per queued folder
INDEX_BATCH = 25  # files per transaction (and per copyright.reference.add entry); progress after each
STATE_FILE = "index-state.json"  # in the job's work folder: how far an interrupted index got


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CopyrightIndexParams(_Stored):
    folder: str = Field(min_length=1, max_length=4096)
    source: Literal["folder", "upload"]
    owner: str = Field(min_length=1, max_length=200)
    licence: str = Field(min_length=1, max_length=200)
    actor: str = Field(min_length=1, max_length=320)


class AuditFiltersParams(_Stored):
    since: str | None = Field(default=None, max_length=64)
    until: str | None = Field(default=None, max_length=64)
    actor: str | None = Field(default=None, max_length=400)
    action: str | None = Field(default=None, max_length=400)
    resource: str | None = Field(default=None, max_length=400)
    outcome: str | None = Field(default=None, max_length=400)


class AuditExportParams(_Stored):
    format: Literal["jsonl", "csv"]
    filters: AuditFiltersParams = Field(default_factory=AuditFiltersParams)
    name: str | None = Field(default=None, max_length=200)
    actor: str = Field(min_length=1, max_length=320)


class DatasetPackageParams(_Stored):
    dataset_id: int = Field(ge=1, le=2**62)
    actor: str = Field(min_length=1, max_length=320)


def _parse(schema: type[_Stored], params: Any) -> Any:
    """``schema`` applied to ``params``; ``InvalidInput`` naming ``params.FIELD``."""
    if not isinstance(params, dict):
        raise InvalidInput("params: must be an object")
    try:
        return schema.model_validate(params)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(p) for p in ("params", *item.get("loc", ())))
            message = "unknown field" if item.get("type") == "extra_forbidden" else item.get("msg", "invalid")
            problems.append(f"{where}: {message}")
        raise InvalidInput("; ".join(problems), reasons=problems) from None


# The kinds' validators (``JOB_KINDS``): checked when the job is written and again on the worker.
def validate_copyright_index(params: dict[str, Any]) -> None:
    _parse(CopyrightIndexParams, params)


def validate_audit_export(params: dict[str, Any]) -> None:
    parsed = _parse(AuditExportParams, params)
    _filters(parsed.filters)  # times that do not parse are refused here, not on the worker
    if parsed.name is not None:
        from latentops.platform.services.audit_trail import export_name

        export_name(parsed.name, parsed.format)


def validate_dataset_package(params: dict[str, Any]) -> None:
    _parse(DatasetPackageParams, params)


# --- shared -------------------------------------------------------------------------------------


def results_dir(settings: Settings, job_id: int) -> Path:
    return settings.artifacts_dir / RESULTS_DIR / str(job_id)


def _check_owner(ctx: Any, actor: str) -> None:
    """The params' actor is the job's owner (a console job has none): checked on the worker."""
    with session_scope(ctx.settings.database_url) as session:
        owner_id = session.scalar(sa.select(Job.owner_id).where(Job.id == ctx.job_id))
        email = session.scalar(sa.select(User.email).where(User.id == owner_id)) if owner_id else None
    if email is not None and email != actor:
        raise InvalidInput("params.actor: is not the job's owner")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_result(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def result_file(settings: Settings, job: Job, *, kind: str) -> Path:
    """The file a finished job of ``kind`` made; ``NotFound`` for another kind's job, ``Conflict``
    while it has not succeeded."""
    if job.kind != kind:
        raise NotFound(f"job: no {kind} job with id {job.id}")
    if job.state != JobState.SUCCEEDED:
        detail = f": {job.error}" if job.error else ""
        raise Conflict(f"job {job.id} is {job.state.value}{detail}; its file can be downloaded once it succeeded")
    name = str((job.result or {}).get("file") or "")
    path = results_dir(settings, job.id) / name
    if not name or "/" in name or not path.is_file():
        raise NotFound(f"job: the file of job {job.id} is gone from the server")
    return path


# --- 1. copyright indexing of a folder --------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    """The files a folder index reads (``copyright.reference_files``: below ``folder`` outside hidden
    folders, sorted); ``InvalidInput`` naming ``folder`` when it is missing, holds no image or too many."""
    if not folder.exists():
        raise InvalidInput(f"folder: {folder} does not exist")
    if not folder.is_dir():
        raise InvalidInput(f"folder: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        raise InvalidInput(f"folder: {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) > MAX_INDEX_FILES:
        raise InvalidInput(f"folder: {folder} holds {len(files)} files; at most {MAX_INDEX_FILES} per job")
    return files


def submit_copyright_index(session: Session, settings: Settings, *, actor: audit.Actor | str, folder: Path,
                           owner: str, licence: str, source: Literal["folder", "upload"] = "folder") -> Job:
    """Queue the indexing of every image under ``folder`` (on the ``cpu`` queue), in the caller's
    transaction. The folder must be readable by the ``cpu`` workers (the same machine, or the shared
    home); its files are read when the job runs."""
    from latentops.platform.services import jobs

    owner, licence = owner.strip(), licence.strip()
    for field_name, value in (("owner", owner), ("licence", licence)):
        if not value or len(value) > 200:
            raise InvalidInput(f"{field_name}: must be 1 to 200 characters")
    folder = Path(folder).expanduser().resolve()
    files = image_files(folder)
    job = jobs.submit(session, settings, kind="copyright_index", actor=actor, owner=users.actor_user(session, actor),
                      params={"folder": str(folder), "source": source, "owner": owner, "licence": licence,
                              "actor": audit.actor_name(actor)})
    audit.record(session, actor=actor, action="copyright.index.queue", resource=f"copyright_owner:{owner[:300]}",
                 details={"job_id": job.id, "files": len(files), "source": source,
                          "folder": folder.name if source == "upload" else str(folder)})
    return job


def stage_uploads(settings: Settings, files: Sequence[tuple[str, bytes]]) -> Path:
    """Write uploaded works to a folder of their own under ``ARTIFACTS/copyright-uploads`` for a
    queued index; their names are labels only (``NNNNN-<name>``, never a path)."""
    if not files:
        raise InvalidInput("files: give at least one file to index")
    folder = settings.artifacts_dir / UPLOADS_DIR / uuid.uuid4().hex
    folder.mkdir(parents=True)
    for index, (name, data) in enumerate(files):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip(".")[:120] or "file"
        (folder / f"{index:05d}-{safe}").write_bytes(data)
    return folder


def _check_index_folder(ctx: Any, params: CopyrightIndexParams) -> Path:
    folder = Path(params.folder).resolve()
    uploads = (ctx.settings.artifacts_dir / UPLOADS_DIR).resolve()
    with session_scope(ctx.settings.database_url) as session:
        owned = session.scalar(sa.select(Job.owner_id).where(Job.id == ctx.job_id)) is not None
    # A job submitted through the API (it has an owner) indexes only the folder its uploads went to.
    if (params.source == "upload" or owned) and (params.source != "upload" or not folder.is_relative_to(uploads)):
        raise InvalidInput("params.folder: is not a staged upload folder")
    return folder


def _load_index_state(path: Path, folder: Path, total: int) -> dict[str, Any]:
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("folder") == str(folder) and state.get("total") == total:
            return dict(state)
    return {"folder": str(folder), "total": total, "done": 0, "added": 0, "duplicates": 0, "failed": 0,
            "failures": []}


def run_copyright_index(ctx: Any) -> dict[str, Any]:
    """The ``copyright_index`` handler: index the folder ``INDEX_BATCH`` files per transaction.

    Progress counts files. After each batch commits, how far the job got is written to its work
    folder, so a retried job (a lost worker) goes on from there instead of reading every file again.
    """
    from latentops.governance import copyright

    params = _parse(CopyrightIndexParams, ctx.params)
    _check_owner(ctx, params.actor)
    folder = _check_index_folder(ctx, params)
    files = image_files(folder)
    state_path = ctx.workdir / STATE_FILE
    state = _load_index_state(state_path, folder, len(files))
    label = (lambda p: p.relative_to(folder).as_posix()) if params.source == "upload" else str
    ctx.progress(state["done"], len(files), added=state["added"], duplicates=state["duplicates"])
    while state["done"] < len(files):
        ctx.check_cancelled()
        batch = files[state["done"]:state["done"] + INDEX_BATCH]
        with session_scope(ctx.settings.database_url) as session:
            report = copyright.import_references(
                session, settings=ctx.settings, files=[(label(p), p) for p in batch], owner=params.owner,
                licence=params.licence, actor=params.actor, source=f"job:{ctx.job_id}")
        state["done"] += len(batch)
        state["added"] += len(report.added)
        state["duplicates"] += len(report.duplicates)
        state["failed"] += len(report.failures)
        state["failures"] = (state["failures"] + report.failures)[:100]
        temporary = state_path.with_name(state_path.name + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, state_path)
        ctx.progress(state["done"], len(files), added=state["added"], duplicates=state["duplicates"])
    return {"files": len(files), "added": state["added"], "duplicates": state["duplicates"],
            "failed": state["failed"], "failures": state["failures"], "owner": params.owner}


# --- 2. audit exports -----------------------------------------------------------------------------


def _filters(params: AuditFiltersParams) -> Any:
    from latentops.platform.services.audit_trail import filters_of

    return filters_of(params.since, params.until, params.actor, params.action, params.resource, params.outcome)


def submit_audit_export(session: Session, settings: Settings, *, actor: audit.Actor | str, fmt: str,
                        filters: dict[str, str | None], name: str | None = None) -> Job:
    """Queue an audit export (``cpu``): the same zip as ``POST /audit/export``, kept for download.

    The caller's role was checked (``audit.export``: compliance officers and admins). A bad format,
    time or file name is refused here, before anything is queued.
    """
    from latentops.platform.services import jobs

    if fmt not in ("jsonl", "csv"):
        raise InvalidInput(f"format: must be jsonl or csv (got {fmt!r})")
    chosen = {key: value for key, value in filters.items() if value}
    params = {"format": fmt, "filters": chosen, "name": name, "actor": audit.actor_name(actor)}
    validate_audit_export(params)
    return jobs.submit(session, settings, kind="audit_export", actor=actor, owner=users.actor_user(session, actor),
                       params=params)


def run_audit_export(ctx: Any) -> dict[str, Any]:
    """The ``audit_export`` handler: sign a checkpoint, write the entries with their proofs, zip them.

    Progress counts the three steps (checkpoint, entries, zip); the entries written so far are in
    the step's ``entries``.
    """
    import tempfile

    from latentops.governance import checkpoints, compliance
    from latentops.platform.services.audit_trail import download_name, export_name, signing_key_path

    params = _parse(AuditExportParams, ctx.params)
    _check_owner(ctx, params.actor)
    filters = _filters(params.filters)
    entries_name = export_name(params.name, params.format)
    settings = ctx.settings
    key_path = signing_key_path(settings)
    key = checkpoints.load_or_create_signing_key(key_path)
    keyring = checkpoints.signing_keyring(key_path)
    ctx.progress(0, 3)
    with session_scope(settings.database_url) as session:
        checkpoints.create(session, signing_key=key, sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)),
                           keyring=keyring)
    ctx.progress(1, 3)
    ctx.check_cancelled()
    out = results_dir(settings, ctx.job_id)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=ctx.workdir) as folder:
        with session_scope(settings.database_url) as session:
            summary = compliance.export(session, path=Path(folder) / entries_name, fmt=params.format, filters=filters,
                                        public_key_pem=checkpoints.public_key_pem(key.public_key()),
                                        keyring_pem=checkpoints.keyring_pem(keyring))
            audit.record(session, actor=params.actor, action="audit.export", resource="audit:log",
                         details={**compliance.summary_details(summary, filters, params.format), "job_id": ctx.job_id})
        ctx.progress(2, 3, entries=summary.entries)
        target = out / download_name(params.format, filters)
        temporary = target.with_name(target.name + ".part")
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(summary.path, summary.path.name)
            archive.write(summary.proofs_path, summary.proofs_path.name)
        os.replace(temporary, target)
    ctx.progress(3, 3, entries=summary.entries)
    return {**_file_result(target), "entries": summary.entries, "tree_size": summary.tree_size,
            "root_hash": summary.root_hash, "format": params.format}


def record_download(session: Session, *, actor: audit.Actor | str, job: Job, path: Path, action: str,
                    resource: str) -> None:
    """The audit entry of a result file handed out."""
    audit.record(session, actor=actor, action=action, resource=resource,
                 details={"job_id": job.id, "file": path.name, "bytes": path.stat().st_size,
                          "sha256": (job.result or {}).get("sha256")})


# --- 3. dataset packages ------------------------------------------------------------------------------


def _package_decision(session: Session, row: Dataset, actor: audit.Actor | str) -> None:
    """The datasets policy's ``export`` decision for ``row`` (members of the owning team), as the
    zip download asks it; a denial raises ``PolicyDenied`` with its decision recorded."""
    from latentops.governance import policy

    team = session.get(Team, row.team_id) if row.team_id else None
    policy.require("datasets", {"action": "export", "team": team.name if team else "",
                                "dataset": {"images": int(row.stats.get("images", 0)), "team": team.name if team else ""}},
                   session=session, actor=actor)


def check_package_download(session: Session, row: Dataset, actor: Any) -> None:
    """The ``export`` decision again for who downloads a package (``PolicyDenied`` when denied)."""
    _package_decision(session, row, actor)


def submit_dataset_package(session: Session, settings: Settings, *, actor: audit.Actor | str, dataset_id: int,
                           policy_actor: Any = None) -> Job:
    """Queue the packaging of a ready dataset (``cpu``) for its team, after the datasets policy's
    ``export`` decision. ``policy_actor``: who the policy decides for when it is not ``actor`` (an
    API caller's user row)."""
    from latentops.platform.services import jobs

    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound(f"dataset: no dataset with id {dataset_id}")
    if row.state != "ready" or not row.path or not Path(row.path).is_dir():
        raise Conflict(f"dataset {row.id} is {row.state}; it can be packaged when it is ready")
    _package_decision(session, row, policy_actor if policy_actor is not None else actor)
    team = session.get(Team, row.team_id) if row.team_id else None
    return jobs.submit(session, settings, kind="dataset_package", actor=actor, owner=users.actor_user(session, actor), team=team,
                       params={"dataset_id": row.id, "actor": audit.actor_name(actor)}, admitted=True)


def package_files(root: Path) -> list[Path]:
    """The files a package holds: the dataset folder without the run's working files, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and ".latentops" not in p.relative_to(root).parts)


def run_dataset_package(ctx: Any) -> dict[str, Any]:
    """The ``dataset_package`` handler: the dataset folder as one zip, its files at the zip's root.

    The zip holds the splits (or shards), ``croissant.json`` and the card ``README.md``, as written
    by the dataset job, so it loads in one line of Hugging Face ``datasets`` without unpacking
    (``load_dataset("imagefolder", data_files={"train": "zip://train/**::PKG.zip", ...})``) or,
    unpacked, with ``data_dir``. Progress counts files.
    """
    params = _parse(DatasetPackageParams, ctx.params)
    _check_owner(ctx, params.actor)
    with session_scope(ctx.settings.database_url) as session:
        row = session.get(Dataset, params.dataset_id)
        job_team = session.scalar(sa.select(Job.team_id).where(Job.id == ctx.job_id))
        if row is None or row.team_id != job_team:
            raise InvalidInput("params.dataset_id: is not a dataset of the job's team")
        if row.state != "ready":
            raise Conflict(f"dataset {row.id} is {row.state}; it can be packaged when it is ready")
        root, name, fmt = Path(row.path), row.name, row.format
    if not root.resolve().is_relative_to((ctx.settings.artifacts_dir / "datasets").resolve()):
        raise InvalidInput("params.dataset_id: the dataset's folder is not under the datasets folder")
    files = package_files(root)
    out = results_dir(ctx.settings, ctx.job_id)
    out.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:80] or "dataset"
    target = out / f"{safe}-{params.dataset_id}.zip"
    temporary = target.with_name(target.name + ".part")
    ctx.progress(0, len(files))
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs and tars are packed already
        for done, path in enumerate(files, start=1):
            archive.write(path, arcname=path.relative_to(root).as_posix())
            if done % 50 == 0:
                ctx.check_cancelled()
            ctx.progress(done, len(files))
    os.replace(temporary, target)
    with session_scope(ctx.settings.database_url) as session:
        audit.record(session, actor=params.actor, action="dataset.package", resource=f"dataset:{params.dataset_id}",
                     details={"job_id": ctx.job_id, "files": len(files), "bytes": target.stat().st_size})
    return {**_file_result(target), "files": len(files), "dataset_id": params.dataset_id, "format": fmt}
