"""Copyright screening: an index of protected works and matching that survives ordinary edits.

References are added from a folder (``add_references``, ``latentops copyright add DIR --owner
NAME --licence L``) or from uploaded files (``import_references``, ``POST /api/v1/copyright/references``);
each unreadable file is listed with its reason while the rest import.

Matching (``copyright_match``) uses three methods: a perceptual hash of the reference and its
stored crops and mirror, ORB keypoints with geometric verification, and CLIP embeddings with FAISS
when CLIP weights are imported. The thresholds that decide match or no match are policy data
(``copyright.thresholds``), read per lookup.

Whether a match blocks anything is policy (``governance/policies/copyright``): an output image
that matches is quarantined, and a training upload that matches is refused, unless the team
holds a licence grant for the work's owner or the reference itself (``grant_licence``).
``screen_training_upload`` is the entry point the fine-tuning engine calls.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound, PolicyDenied
from latentops.core.orm import utcnow
from latentops.core.settings import Settings
from latentops.core.tables import Team
from latentops.governance import audit, policy
from latentops.governance.clip import load_clip
from latentops.governance.copyright_match import (
    CROPS,
    EXHAUSTIVE_MAX,
    PHASH_CANDIDATE,
    PHASH_CANDIDATES,
    MatchThresholds,
    OrbFeatures,
    ReferenceIndex,
    load_index,
    match_in_index,
    orb_features,
    orb_inliers,
    phash,
    phash_variants,
)
from latentops.governance.imagefile import load_image, read_bytes
from latentops.governance.tables import CopyrightLicence, CopyrightReference

log = logging.getLogger(__name__)

# Matching (``copyright_match``) is part of this module's API too.
__all__ = [
    "CROPS", "EXHAUSTIVE_MAX", "MAX_FILES", "PHASH_CANDIDATE", "PHASH_CANDIDATES", "UPLOAD_PREFIX",
    "AddReport", "MatchThresholds", "OrbFeatures", "ReferenceIndex", "add_references", "decide",
    "find_matches", "grant_licence", "import_references", "licences_of", "list_references", "load_index",
    "match_in_index", "orb_features", "orb_inliers", "phash", "phash_variants", "reference_files",
    "reference_json", "revoke_licence", "screen_training_upload",
]

UPLOAD_PREFIX = "upload:"  # ``path`` of a reference imported from an uploaded file, not from a folder
MAX_FILES = 200  # files per import request


# --- adding references ---------------------------------------------------------------------------


@dataclass
class AddReport:
    added: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates, "failures": self.failures}


def _clip(settings: Settings) -> Any:
    return load_clip(settings)


def _check_owner_licence(owner: str, licence: str) -> tuple[str, str]:
    owner, licence = owner.strip(), licence.strip()
    if not owner or len(owner) > 200:
        raise InvalidInput("owner: must be 1 to 200 characters")
    if not licence or len(licence) > 200:
        raise InvalidInput("licence: must be 1 to 200 characters")
    return owner, licence


def reference_files(directory: Path) -> list[Path]:
    """The files a folder import reads: every file below ``directory`` outside hidden folders, sorted."""
    if not directory.is_dir():
        raise InvalidInput(f"directory: {directory} is not a folder")
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise InvalidInput(f"directory: {directory} holds no files")
    return files


def add_references(session: Session, *, settings: Settings, directory: Path, owner: str, licence: str,
                   actor: audit.Actor | str) -> AddReport:
    """Index every image under ``directory``; files that fail are listed, the rest are added."""
    owner, licence = _check_owner_licence(owner, licence)
    files = reference_files(directory)
    return import_references(session, settings=settings, files=[(str(p), p) for p in files], owner=owner,
                             licence=licence, actor=actor, source=str(directory))


def import_references(session: Session, *, settings: Settings, files: Sequence[tuple[str, Path | bytes]], owner: str,
                      licence: str, actor: audit.Actor | str, source: str) -> AddReport:
    """Index ``(name, path or bytes)`` files; each that fails is listed with its reason, the rest are added.

    ``name`` labels the file in the report and the audit entry; ``source`` says where the files came
    from (a folder, or ``upload`` for files sent to the API, whose references keep ``upload:<name>``
    as their path). One ``copyright.reference.add`` audit entry covers the whole import.
    """
    owner, licence = _check_owner_licence(owner, licence)
    if not files:
        raise InvalidInput("files: give at least one file to import")
    if len(files) > MAX_FILES:
        raise InvalidInput(f"files: at most {MAX_FILES} files per import (got {len(files)})")
    clip = _clip(settings)
    report = AddReport()
    for name, item in files:
        try:
            data = read_bytes(item) if isinstance(item, Path) else item
            image = load_image(data, name=name)
        except InvalidInput as error:
            report.failures.append({"file": name, "reason": error.detail})
            continue
        content_hash = hashlib.sha256(data).hexdigest()
        existing = session.scalar(sa.select(CopyrightReference.id).where(CopyrightReference.content_hash == content_hash))
        if existing is not None:
            report.duplicates.append({"file": name, "reference_id": existing})
            continue
        hashes = phash_variants(image)
        features: dict[str, Any] = {"phashes": [f"{h:016x}" for h in hashes], "orb": orb_features(image).to_json(),
                                    "size": list(image.size)}
        if clip is not None:
            features["embedding"] = base64.b64encode(clip.encode_images([image])[0].tobytes()).decode()
            features["embedding_sha"] = clip.sha256
        where = str(item.resolve()) if isinstance(item, Path) else UPLOAD_PREFIX + name
        reference = CopyrightReference(owner=owner, licence=licence, title=Path(name).stem[:400], content_hash=content_hash,
                                       path=where[:1000], phash=f"{hashes[0]:016x}",
                                       phash_mirror=f"{hashes[len(CROPS)]:016x}", features=features)
        session.add(reference)
        session.flush()
        report.added.append({"file": name, "reference_id": reference.id})
    audit.record(session, actor=actor, action="copyright.reference.add", resource=f"copyright_owner:{owner[:300]}",
                 outcome="success" if not report.failures else "partial", details={
                     "owner": owner, "licence": licence, "directory": source,
                     "added": [a["reference_id"] for a in report.added], "duplicates": len(report.duplicates),
                     "failures": report.failures[:100],
                 })
    return report


def reference_json(reference: CopyrightReference) -> dict[str, Any]:
    return {"id": reference.id, "owner": reference.owner, "licence": reference.licence, "title": reference.title,
            "phash": reference.phash, "embedded": bool(reference.features.get("embedding")), "path": reference.path,
            "created_at": reference.created_at.isoformat() if reference.created_at else None}


def list_references(session: Session, *, owner: str | None = None, offset: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """References in id order, ``limit`` at a time from ``offset``; only ``owner``'s when given."""
    query = sa.select(CopyrightReference).order_by(CopyrightReference.id).offset(offset).limit(limit)
    if owner:
        query = query.where(CopyrightReference.owner == owner)
    return [reference_json(r) for r in session.scalars(query)]


# --- matching --------------------------------------------------------------------------------------


def find_matches(session: Session, *, settings: Settings, image: Image.Image) -> list[dict[str, Any]]:
    """References ``image`` copies: ``[{reference_id, owner, method, score}]``, strongest first.

    Decided with the thresholds in force (policy data ``copyright.thresholds``).
    """
    clip = _clip(settings)
    index = load_index(session, clip_sha=clip.sha256 if clip is not None else "")
    if len(index.ids) == 0:
        return []
    embedding = clip.encode_images([image])[0] if clip is not None and index.faiss_index is not None else None
    return match_in_index(index, image, embedding=embedding, orb_loader=lambda ids: _orb_for(session, ids),
                          thresholds=MatchThresholds.in_force(session))


def _orb_for(session: Session, ids: Iterable[int]) -> dict[int, OrbFeatures]:
    rows = session.execute(sa.select(CopyrightReference.id, CopyrightReference.features)
                           .where(CopyrightReference.id.in_(list(ids))))
    return {rid: OrbFeatures.from_json(features["orb"]) for rid, features in rows if features.get("orb")}


# --- licences and decisions ------------------------------------------------------------------------


def _team(session: Session, name: str) -> Team:
    team = session.scalar(sa.select(Team).where(Team.name == name))
    if team is None:
        raise NotFound(f"team: no team {name!r}")
    return team


def grant_licence(session: Session, *, team: str, owner: str, actor: audit.Actor | str, reference_id: int | None = None,
                  note: str = "") -> CopyrightLicence:
    """Record that ``team`` may use the works of ``owner`` (or one reference); audited."""
    target = _team(session, team)
    if reference_id is not None and session.get(CopyrightReference, reference_id) is None:
        raise NotFound(f"reference_id: no copyright reference {reference_id}")
    licence = CopyrightLicence(team_id=target.id, owner=owner.strip(), reference_id=reference_id, note=note,
                               granted_by=actor if isinstance(actor, str) else actor.name)
    session.add(licence)
    session.flush()
    audit.record(session, actor=actor, action="copyright.licence.grant", resource=f"copyright_licence:{licence.id}",
                 details={"team": team, "owner": licence.owner, "reference_id": reference_id, "note": note})
    return licence


def revoke_licence(session: Session, *, licence_id: int, actor: audit.Actor | str) -> None:
    licence = session.get(CopyrightLicence, licence_id)
    if licence is None or licence.revoked_at is not None:
        raise NotFound(f"licence_id: no active licence {licence_id}")
    licence.revoked_at = utcnow()
    audit.record(session, actor=actor, action="copyright.licence.revoke", resource=f"copyright_licence:{licence.id}",
                 details={"owner": licence.owner, "reference_id": licence.reference_id})


def licences_of(session: Session, team: str | None) -> list[dict[str, Any]]:
    if not team:
        return []
    rows = session.execute(sa.select(CopyrightLicence.owner, CopyrightLicence.reference_id)
                           .join(Team, Team.id == CopyrightLicence.team_id)
                           .where(Team.name == team, CopyrightLicence.revoked_at.is_(None)))
    return [{"owner": owner, "reference_id": rid} for owner, rid in rows]


def decide(session: Session, *, kind: str, matches: Sequence[dict[str, Any]], team: str | None,
           actor: audit.Actor | str, licences: list[dict[str, Any]] | None = None) -> policy.Decision:
    """The ``copyright`` policy decision for these matches (recorded and audited).

    ``licences``: the team's active licences when the caller already read them (``licences_of``).
    """
    return policy.decide("copyright", {"kind": kind, "team": team or "", "matches": list(matches),
                                       "licences": licences_of(session, team) if licences is None else licences},
                         session=session, actor=actor)


def screen_training_upload(session: Session, *, settings: Settings, images: Sequence[tuple[str, Path | bytes]],
                           team: str, actor: audit.Actor | str) -> list[dict[str, Any]]:
    """Screen instance images before fine-tuning; raise ``PolicyDenied`` when any is a protected work.

    Returns one ``{"file", "matches"}`` per image. Every decision is recorded, denied ones included;
    the caller commits before re-raising if it wants them kept (the CLI and API do).
    """
    results, reasons = [], []
    for name, source in images:
        image = load_image(source, name=name)
        matches = find_matches(session, settings=settings, image=image)
        decision = decide(session, kind="training_upload", matches=matches, team=team, actor=actor)
        results.append({"file": name, "matches": matches, "allow": decision.allow})
        reasons += [f"{name}: {reason}" for reason in decision.reasons]
    audit.record(session, actor=actor, action="copyright.training_upload", resource=f"team:{team}",
                 outcome="success" if not reasons else "deny",
                 details={"files": len(results), "denied": [r["file"] for r in results if not r["allow"]][:100]})
    if reasons:
        raise PolicyDenied("training upload refused: protected works without a licence grant", reasons=reasons)
    return results
