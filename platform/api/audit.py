"""``/api/v1/audit``: query the trail, verify it, sign checkpoints, prove entries, export evidence.

Verification (``services.audit_trail``, shared with the portal) and export are themselves
audited. ``POST /audit/export`` (a POST because it signs a checkpoint and writes an entry: cookie
sessions must send the CSRF token; a GET answers 405) signs a fresh checkpoint first, then streams
a zip holding the entries (JSON lines or CSV, each with its inclusion proof) and
``<file>.proofs.json`` (the signed checkpoint, the public key, consistency proofs): the
standalone verifier checks both without the database. ``name`` names ``<file>`` (the remote CLI
passes its ``--out`` name, so the proofs file refers to the file the user keeps).
``POST /audit/exports`` (same query) queues the same export as an ``audit_export`` job on the
``cpu`` queue and answers the job (201); ``GET /audit/exports/{job_id}`` downloads its zip once it
succeeded (audited). Both are for the roles that may export (compliance officers and admins).
``GET /audit/proofs/later?from_size=N`` gives the consistency proofs from an export's tree size to
every later checkpoint. ``GET /audit/public-keys`` hands auditors the checkpoint keyring, as
``latentops audit public-key`` does on the server's machine.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.core.settings import Settings
from latentops.governance import access, audit, checkpoints, compliance, evidence
from latentops.governance.access import Principal
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.services.audit_trail import (
    MAX_EXPORT_NAME_BYTES,
    download_name,
    export_name,
    filters_of,
    signing_key_path,
    verify_report,
)

router = APIRouter(tags=["audit"])

# The entries file and ``<name>.proofs.json`` must fit a file name on every filesystem (255 bytes).
def _text(description: str) -> Any:
    return Query(default=None, max_length=400, description=description)


@dataclasses.dataclass(frozen=True)
class EntryFilterText:
    """The entry filters of a query, reveal or export, as the client sent them."""

    since: str | None
    until: str | None
    actor: str | None
    action: str | None
    resource: str | None
    outcome: str | None

    def parsed(self) -> compliance.Filters:
        return filters_of(self.since, self.until, self.actor, self.action, self.resource, self.outcome)


def _entry_filter_text(since: str | None = _text("At or after this ISO 8601 time (UTC when no zone)."),
                       until: str | None = _text("Before this ISO 8601 time."),
                       actor: str | None = _text("Exact, or a prefix ending in *."),
                       action: str | None = _text("Exact (job.submit), or a prefix ending in * (job.*)."),
                       resource: str | None = _text("Exact (job:12), or a prefix ending in *."),
                       outcome: str | None = _text("success, failure, deny, ...")) -> EntryFilterText:
    return EntryFilterText(since, until, actor, action, resource, outcome)


FiltersDep = Annotated[EntryFilterText, Depends(_entry_filter_text)]


@router.get("/audit/entries")
def query(session: SessionDep, principal: PrincipalDep,
          filters: FiltersDep,
          after: int | None = Query(default=None, ge=-1, description="The last seq of the previous page."),
          limit: int = Query(default=50, ge=1, le=compliance.MAX_PAGE)) -> dict[str, Any]:
    """One page of entries in sequence order; pass ``next_after`` back as ``after`` for the next."""
    access.check(session, principal=principal, action="audit.read")
    page = compliance.query(session, filters=filters.parsed(), after=after, limit=limit)
    return {"entries": page.entries, "next_after": page.next_after}


@router.post("/audit/entries/reveal")
def reveal(session: SessionDep, principal: PrincipalDep,
           filters: FiltersDep,
           after: int | None = Query(default=None, ge=-1, description="The last seq of the previous page."),
           limit: int = Query(default=50, ge=1, le=compliance.MAX_PAGE)) -> dict[str, Any]:
    """The page ``GET /audit/entries`` gives, with the identities behind its pseudonyms (each
    entry's ``identity``; ``identities``: pseudonym -> identity, null once erased). Compliance
    officers and admins only (``audit.reveal``); a POST because every reveal is recorded in the trail
    (who revealed which entries and pseudonyms). Sealed personal data stays sealed here."""
    from latentops.governance import erasure

    access.check(session, principal=principal, action="audit.reveal")
    page = compliance.query(session, filters=filters.parsed(), after=after, limit=limit)
    identities = erasure.reveal_identities(session, page.entries, actor=principal.email)
    return {"entries": page.entries, "next_after": page.next_after, "identities": identities}


@router.post("/audit/verify")
def verify(session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Recompute the hash chain and Merkle tree and check every signed checkpoint."""
    access.check(session, principal=principal, action="audit.verify")
    return verify_report(session, settings, principal)


@router.post("/audit/checkpoints", status_code=201)
def checkpoint(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
               force: bool = Query(default=False, description="Sign even if no entry was added since the last one.")
               ) -> dict[str, Any]:
    """Sign the current tree (returns the latest checkpoint when nothing was added since, unless ``force``)."""
    access.check(session, principal=principal, action="audit.verify")
    key = checkpoints.load_or_create_signing_key(signing_key_path(settings))
    made = checkpoints.create(session, signing_key=key, sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)),
                              force=force, keyring=checkpoints.signing_keyring(signing_key_path(settings)))
    return {"id": made.id, **checkpoints.statement(made)}


@router.get("/audit/public-keys")
def public_keys(session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """The checkpoint public keys: the current signing key and the keyring (rotated-out keys too), as PEM."""
    access.check(session, principal=principal, action="audit.read")
    path = signing_key_path(settings)
    if not path.exists():  # reading never creates the key: the first checkpoint does
        raise NotFound("audit signing key: none yet on this server (the first checkpoint or export creates it)")
    current = checkpoints.load_signing_key(path).public_key()
    keyring = checkpoints.signing_keyring(path)
    return {"key_id": checkpoints.key_id(current), "current_pem": checkpoints.public_key_pem(current),
            "keyring_pem": checkpoints.keyring_pem(keyring), "key_ids": list(keyring)}


@router.get("/audit/proofs/inclusion")
def inclusion(session: SessionDep, principal: PrincipalDep, seq: int = Query(ge=0, le=2**62)) -> dict[str, Any]:
    """An RFC 9162 inclusion proof of entry ``seq`` against the latest signed checkpoint."""
    access.check(session, principal=principal, action="audit.read")
    return compliance.inclusion(session, seq=seq)


@router.get("/audit/proofs/consistency")
def consistency(session: SessionDep, principal: PrincipalDep, old: int = Query(ge=0, le=2**62),
                new: int = Query(ge=0, le=2**62)) -> dict[str, Any]:
    """A consistency proof that the tree of size ``new`` extends the tree of size ``old``."""
    access.check(session, principal=principal, action="audit.read")
    return compliance.consistency(session, old=old, new=new)


@router.get("/audit/proofs/later")
def later(session: SessionDep, principal: PrincipalDep, from_size: int = Query(ge=0, le=2**62)) -> dict[str, Any]:
    """Consistency proofs from tree size ``from_size`` (an export's) to every later signed checkpoint:
    what the standalone verifier needs to accept a larger checkpoint an auditor holds as growth."""
    access.check(session, principal=principal, action="audit.read")
    return compliance.consistency_bundle(session, from_size=from_size)


def export_zip(session: Session, settings: Settings, principal: Principal, *, fmt: Literal["jsonl", "csv"],
               filters: compliance.Filters, name: str | None = None) -> bytes:
    entries_name = export_name(name, fmt)
    key = checkpoints.load_or_create_signing_key(signing_key_path(settings))
    keyring = checkpoints.signing_keyring(signing_key_path(settings))
    checkpoints.create(session, signing_key=key, sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)),
                       keyring=keyring)
    session.flush()
    with tempfile.TemporaryDirectory(prefix="latentops-export-") as folder:
        path = Path(folder) / entries_name
        summary = compliance.export(session, path=path, fmt=fmt, filters=filters,
                                    public_key_pem=checkpoints.public_key_pem(key.public_key()),
                                    keyring_pem=checkpoints.keyring_pem(keyring))
        audit.record(session, actor=principal.email, action="audit.export", resource="audit:log",
                     details=compliance.summary_details(summary, filters, fmt))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(summary.path, summary.path.name)
            archive.write(summary.proofs_path, summary.proofs_path.name)
    return buffer.getvalue()


@router.post("/audit/export", response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "entries and proofs"}})
def export(session: SessionDep, settings: SettingsDep, principal: PrincipalDep, text: FiltersDep,
           format: Literal["jsonl", "csv"] = Query(default="jsonl"),
           name: str | None = Query(default=None, max_length=MAX_EXPORT_NAME_BYTES,
                                    description="File name of the entries inside the zip (default audit.<format>); "
                                                "the proofs file is <name>.proofs.json.")
           ) -> StreamingResponse:
    """Export matching entries with inclusion proofs and the signed checkpoint, as a zip (audited)."""
    access.check(session, principal=principal, action="audit.export")
    filters = text.parsed()
    data = export_zip(session, settings, principal, fmt=format, filters=filters, name=name)
    return StreamingResponse(iter([data]), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{download_name(format, filters)}"'})


@router.post("/audit/exports", status_code=201)
def queue_export(session: SessionDep, settings: SettingsDep, principal: PrincipalDep, text: FiltersDep,
                 format: Literal["jsonl", "csv"] = Query(default="jsonl"),
                 name: str | None = Query(default=None, max_length=MAX_EXPORT_NAME_BYTES,
                                          description="File name of the entries inside the zip.")
                 ) -> dict[str, Any]:
    """Queue the export as an ``audit_export`` job (cpu queue); fetch the zip from ``GET /audit/exports/{job_id}``."""
    from latentops.platform.services import cpu_jobs
    from latentops.platform.services.jobs.views import submitted_json

    access.check(session, principal=principal, action="audit.export")
    job = cpu_jobs.submit_audit_export(session, settings, actor=principal.email, fmt=format, name=name, filters=dataclasses.asdict(text))
    return submitted_json(session, job)


@router.get("/audit/exports/{job_id}", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "entries and proofs"}})
def download_export(job_id: int, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> FileResponse:
    """The zip of a finished ``audit_export`` job (409 while it runs; audited)."""
    from latentops.platform.services import cpu_jobs
    from latentops.platform.services.jobs.views import visible_job

    access.check(session, principal=principal, action="audit.export")
    job = visible_job(session, principal, job_id)
    path = cpu_jobs.result_file(settings, job, kind="audit_export")
    cpu_jobs.record_download(session, actor=principal.email, job=job, path=path, action="audit.export.download",
                             resource="audit:log")
    return FileResponse(path, media_type="application/zip", filename=path.name)


# --- the evidence pack -------------------------------------------------------------------------


def _bound(description: str) -> Any:
    return Query(default=None, alias=description.split(":")[0], max_length=64, description=description)


@router.post("/audit/evidence", response_class=StreamingResponse,
             responses={200: {"content": {"application/zip": {}}, "description": "the evidence pack"}})
def evidence_pack(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                  start: str | None = _bound("from: window start, an ISO 8601 date or time (UTC when no zone)."),
                  end: str | None = _bound("to: window end, exclusive; a date alone includes that whole day."),
                  start_field: Annotated[str | None, Form(alias="from", max_length=64)] = None,
                  end_field: Annotated[str | None, Form(alias="to", max_length=64)] = None) -> StreamingResponse:
    """The evidence pack of a window as a zip: entries, inclusion and consistency proofs, signed
    checkpoints (a fresh one included), policy revisions, public keys and a standalone ``verify.py``.
    ``from`` and ``to`` come as query parameters or form fields (the portal's form); audited."""
    access.check(session, principal=principal, action="audit.export")
    window = evidence.parse_window(start or start_field, end or end_field)
    pack = evidence.make(session, window=window, key_path=signing_key_path(settings),
                         sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)), actor=principal.email)
    return StreamingResponse(iter([pack.data]), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{evidence.file_name(window)}"'})
