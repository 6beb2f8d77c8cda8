"""``/api/v1/copyright/references`` and ``/api/v1/screen``: the copyright reference index and
screening of one image, over HTTP.

* ``POST /copyright/references`` (multipart: ``files``, ``owner``, ``licence``) imports uploaded
  works into the reference index through ``copyright.import_references``, the service behind
  ``latentops copyright add``: a file that is no image, is corrupt or declares too many pixels is
  listed under ``failures`` with its reason while the rest import; a file already indexed is
  listed under ``duplicates``. One ``copyright.reference.add`` audit entry covers the request.
  When every file fails the answer is 422 with one ``{file, reason}`` per file in ``reasons``.
* ``POST /copyright/references/jobs`` (the same form) queues the import as a ``copyright_index``
  job on the ``cpu`` queue instead (``services.cpu_jobs``): the files are staged on the server and
  indexed by a cpu worker with per-file progress; the answer is the job (201). For folders too
  large to index within a request.
* ``GET /copyright/references?owner&offset&limit``: the index in id order, one page at a time
  (``{items, offset, limit, next_offset}`` like ``GET /jobs``).
* ``POST /screen`` (multipart: ``file``, optional ``team``) screens one image exactly as
  ``latentops screen IMAGE --json`` does and answers the same JSON; the result, both policy
  decisions and the ``screening.result`` audit entry are recorded.

Who may call is the access policy's decision (``copyright.read`` and ``copyright.manage``:
compliance officers and admins; ``screen``: every role, since submitters and data scientists
check their images before they train or publish; a ``team`` other than the caller's own is
"not found" unless the caller's role sees every team). Request bodies are bounded by
``LATENTOPS_MAX_UPLOAD_BYTES`` (413) like every upload; the image decoder refuses the rest.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel

from latentops.core.errors import InvalidInput
from latentops.governance import access, copyright, screening
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep

router = APIRouter(tags=["copyright"])


class ImportedReference(BaseModel):
    file: str
    reference_id: int


class FailedFile(BaseModel):
    file: str
    reason: str


class ImportReport(BaseModel):
    added: list[ImportedReference]
    duplicates: list[ImportedReference]
    failures: list[FailedFile]


class Reference(BaseModel):
    id: int
    owner: str
    licence: str
    title: str
    phash: str
    embedded: bool
    path: str
    created_at: str | None


class ReferencePage(BaseModel):
    items: list[Reference]
    offset: int
    limit: int
    next_offset: int | None


class Match(BaseModel):
    reference_id: int
    owner: str
    method: str
    score: float


class ContentScores(BaseModel):
    scores: dict[str, float]
    detector: str


class CopyrightMatches(BaseModel):
    matches: list[Match]


class ScreeningVerdict(BaseModel):
    verdict: str
    reasons: list[str]
    content: ContentScores
    copyright: CopyrightMatches


def _label(upload: UploadFile, index: int) -> str:
    """The upload's name as a label in reports and audit entries, never used as a path (the remote
    CLI sends a file's path under the folder it imports); ``files[i]`` when it has none."""
    return (upload.filename or "").strip()[:200] or f"files[{index}]"


def _read(upload: UploadFile) -> bytes:
    return upload.file.read()


def _items(files: list[UploadFile]) -> list[tuple[str, bytes]]:
    """Each upload's label and bytes."""
    return [(_label(upload, i), _read(upload)) for i, upload in enumerate(files)]


# The form of an upload of protected works (direct import and queued job alike).
WorkFiles = Annotated[list[UploadFile], File(description="Images of the protected works.")]
Owner = Annotated[str, Form(min_length=1, max_length=200, description="The rights holder.")]
Licence = Annotated[str, Form(min_length=1, max_length=200, description="Licence under which the works are held.")]


@router.post("/copyright/references", status_code=201, response_model=ImportReport)
def add_references(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                   files: WorkFiles, owner: Owner, licence: Licence) -> dict[str, Any]:
    """Add uploaded works to the reference index; files that fail are listed with their reasons (audited)."""
    access.check(session, principal=principal, action="copyright.manage")
    if len(files) > copyright.MAX_FILES:
        raise InvalidInput(f"files: at most {copyright.MAX_FILES} files per request (got {len(files)})")
    items = _items(files)
    report = copyright.import_references(session, settings=settings, files=items, owner=owner, licence=licence,
                                         actor=principal.email, source="upload")
    if report.failures and not report.added and not report.duplicates:
        session.commit()  # the audit entry of the failed import is evidence too
        raise InvalidInput(f"files: none of the {len(items)} files could be indexed", reasons=report.failures)
    return report.to_json()


@router.post("/copyright/references/jobs", status_code=201)
def queue_references(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                     files: WorkFiles, owner: Owner, licence: Licence) -> dict[str, Any]:
    """Queue the import of uploaded works as a ``copyright_index`` job (cpu queue; audited)."""
    from latentops.platform.services import cpu_jobs
    from latentops.platform.services.jobs.views import submitted_json

    access.check(session, principal=principal, action="copyright.manage")
    folder = cpu_jobs.stage_uploads(settings, _items(files))
    try:
        job = cpu_jobs.submit_copyright_index(session, settings, actor=principal.email, folder=folder, owner=owner,
                                              licence=licence, source="upload")
    except Exception:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # nothing was queued: the staged files go
        raise
    return submitted_json(session, job)


@router.get("/copyright/references", response_model=ReferencePage)
def list_references(session: SessionDep, principal: PrincipalDep,
                    owner: str | None = Query(default=None, max_length=200, description="Only this rights holder."),
                    offset: int = Query(default=0, ge=0, le=1_000_000),
                    limit: int = Query(default=100, ge=1, le=500)) -> dict[str, Any]:
    """The reference index in id order, ``limit`` at a time from ``offset``."""
    access.check(session, principal=principal, action="copyright.read")
    rows = copyright.list_references(session, owner=owner or None, offset=offset, limit=limit + 1)
    return {"items": rows[:limit], "offset": offset, "limit": limit,
            "next_offset": offset + limit if len(rows) > limit else None}


@router.post("/screen", response_model=ScreeningVerdict)
def screen(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
           file: Annotated[UploadFile, File(description="The image to screen.")],
           team: Annotated[str | None, Form(max_length=100, description="Team whose licence grants apply.")] = None
           ) -> dict[str, Any]:
    """Screen one image: content scores, copyright matches, verdict (recorded and audited)."""
    team = (team or "").strip() or None
    access.check(session, principal=principal, action="screen",
                 resource={"team": team} if team else None, not_found=f"team: no team {team!r}")
    outcome = screening.screen(session, settings=settings, image=_read(file), name=_label(file, 0),
                               actor=principal.email, team=team)
    return outcome.to_json()
