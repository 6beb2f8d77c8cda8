"""``RemoteBackend``: the CLI's ``Backend`` over the REST API, through the SDK.

``latentops --server URL --token T ...`` (or ``LATENTOPS_SERVER`` / ``LATENTOPS_TOKEN``) runs a
command as the token's user: the server's access policy decides and audits, team isolation
applies (another team's job is "not found"), and errors come back as the same ``LatentopsError``
classes, so the CLI prints the same single line for an expired token as for any other failure.

Answers are reshaped into what ``LocalBackend`` returns, so tables and ``--json`` lines keep their
keys; remote answers may carry a few more keys (a job's ``team`` and ``queue_position``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from latentops.client import Client
from latentops.core.errors import IntegrityViolation, InvalidInput, ServiceUnavailable
from latentops.governance.image_formats import IMAGE_SUFFIXES
from latentops.platform.cli.backends.base import AuditFilters, GenerateOptions, unpack_export
from latentops.platform.services.finetune_request import Request as FinetuneRequest


def _unsupported(option: str, why: str) -> InvalidInput:
    return InvalidInput(f"{option}: not available with --server ({why})")


def _server_keys_only(key: Path | None, sink: str | None) -> None:
    """Checkpoints made through the server are signed with its key and written to its sink."""
    if key is not None:
        raise _unsupported("--key", "the server signs with its own audit signing key")
    if sink:
        raise _unsupported("--sink", "the server writes its own checkpoint sink")


def _dataset_row(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset as a local listing shows it: the server keeps its folder to itself, the job is ``job_id``."""
    return {**{key: value for key, value in row.items() if key != "job"}, "path": None}


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


class RemoteBackend:
    """Every call is one or two REST requests as the token's user."""

    def __init__(self, server: str, token: str) -> None:
        self.api = Client(server, token)

    # --- users and tokens ---------------------------------------------------------------------

    def create_user(self, *, email: str, role: str, team: str, password: str | None, new_team: bool) -> dict[str, Any]:
        if new_team and team.strip().lower() not in {t["name"] for t in self.api.users.teams()}:
            self.api.users.create_team(team)
        user = self.api.users.create(email, role=role, team=team, password=password)
        return {"id": user["id"], "email": user["email"], "team": team.strip().lower(), "role": role}

    def list_users(self, *, offset: int, limit: int) -> list[dict[str, Any]]:
        return [{"id": u["id"], "email": u["email"],
                 "teams": ", ".join(f"{m['team']}:{m['role']}" for m in u["memberships"]),
                 "active": "yes" if u["active"] else "no"} for u in self.api.users.list(offset=offset, limit=limit)]

    def create_token(self, *, email: str | None, name: str, scopes: list[str], expires_days: int) -> dict[str, Any]:
        if email:
            me = self.api.auth.me()["email"]
            if email.strip().lower() != me.lower():
                raise _unsupported("email", f"the server issues tokens to the signed-in user only ({me})")
        token = self.api.tokens.create(name, scopes=scopes, expires_in_days=expires_days)
        return {"id": token["id"], "token": token["token"], "expires_at": token["expires_at"],
                "scopes": ",".join(token["scopes"])}

    def revoke_token(self, token_id: int) -> None:
        self.api.tokens.revoke(token_id)

    # --- jobs ---------------------------------------------------------------------------------

    def list_jobs(self, *, state: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
        return [dict(job) for job in self.api.jobs.list(state=state, offset=offset, limit=limit)["items"]]

    def show_job(self, job_id: int) -> dict[str, Any]:
        return dict(self.api.jobs.get(job_id))

    def cancel_job(self, job_id: int) -> str:
        return self.api.jobs.cancel(job_id)["state"]

    def retry_job(self, job_id: int) -> None:
        self.api.jobs.retry(job_id)

    def job_logs(self, job_id: int) -> list[dict[str, Any]]:
        return [{**event, "at": _time(event["at"])} for event in self.api.jobs.logs(job_id)]

    def follow_job(self, job_id: int) -> Iterator[dict[str, Any]]:
        for snapshot in self.api.jobs.progress(job_id):
            yield dict(snapshot)

    def submit_finetune(self, submission: FinetuneRequest) -> int:
        if submission.class_dir is not None:
            raise _unsupported("class_dir", "DreamBooth class images are generated on the server")
        if submission.model_version is not None:
            raise _unsupported("model_version", "the server trains on the model's current version")
        images, captions = instance_files(submission.instance_dir)
        values = dict(submission.values)
        instance_prompt = str(values.pop("instance_prompt", "") or "")
        job = self.api.finetune.submit(
            model=submission.model, images=images, captions=captions if any(captions) else None,
            instance_prompt=instance_prompt, params=values, team=submission.team,
            adapter_name=submission.adapter_name, attest_licence=submission.attest_licence,
            attest_consent=submission.attest_consent, priority=submission.priority)
        return int(job["id"])

    # --- models and grants --------------------------------------------------------------------

    def list_models(self, *, include_removed: bool) -> list[dict[str, Any]]:
        if include_removed:
            raise _unsupported("--all", "the server lists models in use only")
        return [{"name": m["name"], "family": m["family"], "versions": m["versions"], "latest_hash": m["latest_hash"],
                 "size_bytes": m["size_bytes"], "removed": False} for m in self.api.models.list()]

    def show_model(self, name: str) -> dict[str, Any]:
        found = self.api.models.get(name)
        return {"name": found["name"], "family": found["family"], "description": found.get("description", ""),
                "sensitivity": found.get("sensitivity", ""), "licence": found.get("licence", ""),
                "created_at": None, "removed_at": None,
                "versions": [{"path": "", **version} for version in found["versions"]]}

    def grant(self, *, model: str, action: str, team: str | None, user: str | None) -> dict[str, Any]:
        row = self.api.models.grant(model, action=action, team=team, user=user)
        return {"grant_id": row["id"], "model": model, "action": action, "team": team, "user": user}

    def revoke(self, *, model: str, action: str, team: str | None, user: str | None) -> int:
        return int(self.api.models.revoke(model, action=action, team=team, user=user)["revoked"])

    def list_grants(self, model: str) -> list[dict[str, Any]]:
        return [dict(g) for g in self.api.models.grants(model)]

    def import_model(self, *, source: str, name: str, allow_pickle: bool, description: str, sensitivity: str,
                     owner_team: str | None) -> dict[str, Any]:
        if allow_pickle:
            raise _unsupported("--allow-pickle", "the server imports safetensors files and diffusers folders only")
        self.api.models.import_(name, source=source, description=description, sensitivity=sensitivity, owner_team=owner_team)
        found = self.api.models.get(name)
        latest = max(found["versions"], key=lambda v: int(v["version"]))
        return {"name": found["name"], "version": latest["version"], "family": found["family"],
                "content_hash": latest["content_hash"], "path": None, "format": latest["format"]}

    # --- generation and datasets --------------------------------------------------------------

    def generate(self, request: GenerateOptions) -> tuple[dict[str, Any], dict[int, bytes]]:
        """Queue the generation, follow the job to its end, then fetch the released images."""
        if request.as_user:
            raise _unsupported("--as", "the server acts as the token's user")
        job = self.api.generations.create(model=request.model, prompt=request.prompt, lora=request.lora,
                                          negative_prompt=request.negative_prompt, n=request.count, seed=request.seed,
                                          steps=request.steps, guidance=request.guidance, team=request.team)
        finished = self.api.jobs.wait(job["id"])
        if finished["state"] != "succeeded" or not finished.get("result"):
            raise ServiceUnavailable(f"generation job {job['id']} {finished['state']}: {finished.get('error')}")
        images = self.api.generations.get(job["id"])["images"]
        pngs = {int(i["asset_id"]): self.api.assets.image(i["asset_id"]) for i in images if i["status"] == "released"}
        return dict(finished["result"] or {}), pngs

    def submit_dataset(self, *, spec: Any, as_user: str | None) -> dict[str, Any]:
        if as_user:
            raise _unsupported("--as", "the server acts as the token's user")
        found = self.api.datasets.create(spec.model_dump(mode="json", exclude_unset=True))
        return {"dataset_id": found["dataset_id"], "job_id": found["job_id"]}

    def list_datasets(self) -> list[dict[str, Any]]:
        return [_dataset_row(row) for row in self.api.datasets.list()]

    def package_dataset(self, dataset_id: int) -> dict[str, Any]:
        return dict(self.api.datasets.package(dataset_id))

    def fetch_dataset_package(self, dataset_id: int, job_id: int, out: Path) -> Path:
        return self.api.datasets.download_package(dataset_id, job_id, out)

    def show_dataset(self, dataset_id: int) -> dict[str, Any]:
        return _dataset_row(self.api.datasets.get(dataset_id))

    # --- policies -----------------------------------------------------------------------------

    def decide(self, path: str, value: dict[str, Any]) -> dict[str, Any]:
        found = dict(self.api.policies.evaluate(path, value))
        found.pop("path", None)
        return found

    def check_prompt(self, text: str) -> dict[str, Any]:
        # The live check every role may call (evaluated on the server, not recorded); recorded
        # evaluation is ``policy eval --path prompt`` for roles allowed policies.evaluate.
        found = dict(self.api.policies.check_prompt(text))
        found.pop("recorded", None)
        return found

    def policy_status(self) -> dict[str, Any]:
        return self.api.policies.status()

    def policy_set_data(self, key: str, value: Any, *, note: str) -> dict[str, Any]:
        return dict(self.api.policies.set_data(key, value, note=note))

    def policy_history(self, *, key: str | None, offset: int, limit: int) -> dict[str, Any]:
        return dict(self.api.policies.data_history(key=key, offset=offset, limit=limit))

    def policy_diff(self, to: int, *, since: int | None) -> dict[str, Any]:
        return dict(self.api.policies.data_diff(to, since=since))

    def policy_rollback(self, to: int, *, note: str) -> dict[str, Any]:
        return dict(self.api.policies.rollback(to, note=note))

    # --- audit --------------------------------------------------------------------------------

    def audit_query(self, filters: AuditFilters, *, after: int | None, limit: int, reveal: bool) -> dict[str, Any]:
        # --reveal shows identities (the server checks audit.reveal and records it); sealed personal
        # data is revealed on the server's console only.
        return dict(self.api.audit.query(since=filters.since, until=filters.until, actor=filters.actor,
                                         action=filters.action, resource=filters.resource, outcome=filters.outcome,
                                         after=after, limit=limit, reveal=reveal))

    def audit_verify(self, *, public_keys: list[Path], sink: str | None) -> dict[str, Any]:
        if public_keys:
            raise _unsupported("--public-key", "the server checks its checkpoints with its own keyring; to check them "
                               "with keys you hold, run `audit export` and the standalone verifier with --public-key")
        if sink:
            raise _unsupported("--sink", "the server reads its own checkpoint sink")
        from latentops.governance.verification import Report

        report: dict[str, Any] = dict(self.api.audit.verify())
        return {key: report[key] for key in Report().to_json()}  # the local report's keys, not the extra ones

    def audit_checkpoint(self, *, key: Path | None, sink: str | None, force: bool) -> dict[str, Any]:
        _server_keys_only(key, sink)
        return self.api.audit.checkpoint(force=force)

    def audit_prove(self, seq: int) -> dict[str, Any]:
        return self.api.audit.inclusion(seq)

    def audit_consistency(self, old: int, new: int) -> dict[str, Any]:
        return self.api.audit.consistency(old, new)

    def audit_consistency_from(self, from_size: int) -> dict[str, Any]:
        return self.api.audit.consistency_from(from_size)

    def audit_export(self, out: Path, *, fmt: str, filters: AuditFilters, key: Path | None,
                     sink: str | None) -> dict[str, Any]:
        """The server's evidence zip, unpacked into ``OUT`` and ``OUT.proofs.json`` as a local export writes them."""
        _server_keys_only(key, sink)
        proofs_path = out.with_name(out.name + ".proofs.json")
        with tempfile.TemporaryDirectory(prefix="latentops-export-") as folder:
            archive_path = self.api.audit.export(Path(folder) / "export.zip", format=fmt, name=out.name,
                                                 **dataclasses.asdict(filters))
            with zipfile.ZipFile(archive_path) as archive:
                found = sorted(archive.namelist())
                if found != sorted([out.name, proofs_path.name]):
                    raise IntegrityViolation(f"export: the server's archive holds {', '.join(found) or 'nothing'}, "
                                         f"not {out.name} and {proofs_path.name}")
                proofs = json.loads(archive.read(proofs_path.name))
                out.parent.mkdir(parents=True, exist_ok=True)
                for target in (out, proofs_path):
                    partial = target.with_name(target.name + ".part")
                    try:
                        with archive.open(target.name) as source, partial.open("wb") as handle:
                            shutil.copyfileobj(source, handle)
                        partial.replace(target)
                    finally:
                        partial.unlink(missing_ok=True)
        return {"path": out, "proofs_path": proofs_path, "entries": proofs["entries"],
                "tree_size": proofs["checkpoint"]["tree_size"], "root_hash": proofs["checkpoint"]["root_hash"]}

    def audit_export_queue(self, *, name: str, fmt: str, filters: AuditFilters) -> dict[str, Any]:
        return dict(self.api.audit.queue_export(format=fmt, name=name, **dataclasses.asdict(filters)))

    def audit_export_fetch(self, job_id: int, out: Path) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="latentops-export-") as folder:
            return unpack_export(self.api.audit.download_export(job_id, Path(folder) / "export.zip"), out)

    def audit_public_keys(self, *, key: Path | None, current: bool) -> str:
        _server_keys_only(key, None)
        keys = self.api.audit.public_keys()
        return keys["current_pem"] if current else keys["keyring_pem"]

    def audit_evidence(self, out: Path, *, window: Any, key: Path | None, sink: str | None) -> dict[str, Any]:
        """The server's evidence pack, written to ``out`` as it came; the summary read from its manifest."""
        _server_keys_only(key, sink)
        bounds = window.to_json()
        path = self.api.audit.evidence(out, start=bounds["from"], end=bounds["to"])
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
        return {"path": path, "window": manifest["window"], "entries": manifest["entries"]["in_window"],
                "tree_size": manifest["checkpoint"]["tree_size"], "root_hash": manifest["checkpoint"]["root_hash"],
                "policy_revisions": len(manifest["policy"]["revisions"]),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    # --- quarantine ---------------------------------------------------------------------------

    def quarantine_list(self, status: str) -> list[dict[str, Any]]:
        return [dict(row) for row in self.api.quarantine.list(status=status)]

    def quarantine_release(self, asset_id: int, reason: str) -> dict[str, Any]:
        return {**self.api.quarantine.release(asset_id, reason=reason), "path": None}

    def quarantine_reject(self, asset_id: int, reason: str) -> dict[str, Any]:
        return {**self.api.quarantine.reject(asset_id, reason=reason), "path": None}

    # --- copyright reference index and screening ----------------------------------------------

    def copyright_add(self, *, directory: Path, owner: str, licence: str) -> dict[str, Any]:
        """Upload the folder's files in batches; each batch is one import (and audit entry) on the server."""
        report: dict[str, list[dict[str, Any]]] = {"added": [], "duplicates": [], "failures": []}
        for batch in upload_batches(directory, report["failures"]):
            try:
                found: dict[str, Any] = dict(self.api.copyright.add(batch, owner=owner, licence=licence))
            except InvalidInput as error:
                listed = [r for r in error.reasons if isinstance(r, dict) and {"file", "reason"} <= set(r)]
                too_large = any(isinstance(r, dict) and "limit_bytes" in r for r in error.reasons)
                if listed:  # every file of the batch failed; the server names each
                    report["failures"] += listed
                elif too_large and len(batch) == 1:
                    report["failures"].append({"file": batch[0][0], "reason": error.detail})
                else:
                    raise
                continue
            for key, rows in report.items():
                rows += found[key]
        # File names as a local import reports them: the path under the folder given.
        return {key: [{**row, "file": str(directory / row["file"])} for row in rows] for key, rows in report.items()}

    def copyright_queue(self, *, directory: Path, owner: str, licence: str) -> list[dict[str, Any]]:
        """Upload the folder's files in batches; each batch is one ``copyright_index`` job on the server."""
        failures: list[dict[str, Any]] = []
        queued = [dict(self.api.copyright.queue(batch, owner=owner, licence=licence))
                  for batch in upload_batches(directory, failures)]
        if not queued:
            raise InvalidInput(f"folder: {directory} holds no file that could be read: "
                               + "; ".join(f"{f['file']}: {f['reason']}" for f in failures[:3]))
        return queued

    def copyright_list(self, *, owner: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while len(rows) < limit:
            page = self.api.copyright.list(owner=owner, offset=offset + len(rows), limit=min(500, limit - len(rows)))
            rows += [dict(r) for r in page["items"]]
            if page["next_offset"] is None:
                break
        return rows

    def screening_status(self) -> dict[str, Any]:
        report = dict(self.api.screening.status())
        report.pop("categories", None)  # the local report's keys (coverage and thresholds say the same)
        return report

    def screening_calibrate(self, *, images: Path, labels: Path, target_fpr: float) -> dict[str, Any]:
        """Upload ``labels`` as it is and the images it names (read here, as a local calibration would
        read them); the server fits and stores the thresholds. Named files that are missing here are
        left for the server to report under ``failures``, as the local calibration does."""
        from latentops.governance.labelled_sets import read_label_columns, read_label_file

        text = read_label_file(labels)
        _, table = read_label_columns(str(labels), text)  # refused here, by line, before any upload
        named = [images / name for name in sorted(table)]
        found = [path for path in named if path.is_file()]
        return dict(self.api.screening.calibrate((labels.name, text.encode("utf-8")), found, target_fpr=target_fpr))

    def screen(self, image: Path, *, team: str | None) -> dict[str, Any]:
        from latentops.governance.imagefile import read_bytes  # the size limit and messages of a local screen

        return dict(self.api.screening.screen((str(image), read_bytes(image)), team=team))


UPLOAD_BATCH_FILES = 50
UPLOAD_BATCH_BYTES = 8 * 1024 * 1024  # well under the server's default body limit (20 MiB)


def upload_batches(directory: Path, failures: list[dict[str, Any]]) -> Iterator[list[tuple[str, bytes]]]:
    """The folder's files as ``(path under the folder, bytes)`` batches, selected as a local import
    selects them; a file that cannot be read here is added to ``failures`` instead."""
    from latentops.governance.copyright import reference_files
    from latentops.governance.imagefile import read_bytes

    files = reference_files(directory)
    batch: list[tuple[str, bytes]] = []
    size = 0
    for path in files:
        name = path.relative_to(directory).as_posix()
        try:
            data = read_bytes(path)
        except InvalidInput as error:
            failures.append({"file": name, "reason": error.detail})
            continue
        if batch and (len(batch) >= UPLOAD_BATCH_FILES or size + len(data) > UPLOAD_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((name, data))
        size += len(data)
    if batch:
        yield batch


def instance_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The images of an instance folder and their captions (``NAME.txt`` sidecar, else ``metadata.jsonl``)."""
    if not folder.is_dir():
        raise InvalidInput(f"instance_dir: {folder} is not a folder")
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InvalidInput(f"instance_dir: no images in {folder} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    listed: dict[str, str] = {}
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                listed[str(row["file_name"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise InvalidInput(f"metadata.jsonl: line {number} is not {{\"file_name\", \"text\"}} ({error})") from None
    captions = []
    for image in images:
        sidecar = image.with_suffix(".txt")
        captions.append(sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else listed.get(image.name, ""))
    return images, captions
