"""Quarantine: where flagged images wait for a compliance officer, and the gate every image passes.

``admit`` is the step of the governed path between generation and the requester: it screens the
image (``screening.screen``) and then either

* **releases** it: stores the asset, writes the ``asset.release`` audit entry, applies provenance
  (watermark and a C2PA manifest that names that entry) and returns the signed PNG; or
* **quarantines** it: stores the unmarked PNG under ``LATENTOPS_HOME/quarantine`` with its scores
  and reasons (the ``ScreeningResult``), writes ``asset.quarantine``, and returns no pixels.

Only compliance officers see quarantined images (``list_quarantined``, ``quarantined_image``) and
release or reject them with a reason (``release``, ``reject``). Every access is a ``quarantine``
policy decision. Nothing is deleted: a rejected image stays in the quarantine folder, marked
``rejected``, with who rejected it, when and why.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, InvalidInput, NotFound
from latentops.core.orm import utcnow
from latentops.core.settings import Settings
from latentops.core.tables import Asset, LoraAdapter, ModelVersion, User
from latentops.governance import audit, copyright, policy, provenance, screening
from latentops.governance.imagefile import load_image, png_bytes
from latentops.governance.tables import ScreeningResult

log = logging.getLogger(__name__)


def quarantine_dir(settings: Settings) -> Path:
    return settings.home / "quarantine"


def released_dir(settings: Settings) -> Path:
    return settings.artifacts_dir / "assets"


@dataclass
class Admission:
    asset: Asset
    outcome: screening.ScreeningOutcome
    image: bytes | None  # the signed PNG when released; never pixels of a flagged image

    @property
    def released(self) -> bool:
        return self.image is not None


def _label(session: Session, model: type[ModelVersion | LoraAdapter], row_id: int | None) -> str | None:
    if row_id is None:
        return None
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"{model.__tablename__}: no row {row_id}")
    return f"{model.__tablename__}:{row_id}:{getattr(row, 'content_hash', '') or getattr(row, 'name', '')}"


def admit(session: Session, *, settings: Settings, image: Image.Image | bytes, actor: audit.Actor | str, seed: int,
          prompt_ref: str, **common: Any) -> Admission:
    """Screen a generated image and release it with provenance, or quarantine it."""
    return admit_batch(session, settings=settings, images=[image], actor=actor, seeds=[seed], prompt_refs=[prompt_ref],
                       **common)[0]


def admit_batch(session: Session, *, settings: Settings, images: Sequence[Image.Image | bytes], actor: audit.Actor | str,
                seeds: Sequence[int], prompt_refs: Sequence[str], team: str | None = None, team_id: int | None = None,
                owner_id: int | None = None, job_id: int | None = None, dataset_id: int | None = None,
                model_version_id: int | None = None, lora_adapter_id: int | None = None, purpose: str = "generation",
                params: dict[str, Any] | None = None) -> list[Admission]:
    """``admit`` for the images of one request, in order: the content detectors score the images
    in one batch, then each is screened and released or quarantined on its own; the release
    entries of the batch take their places in the chain together, so the manifests can name them
    (one chain-lock acquisition, not one per image)."""
    if not len(images) == len(seeds) == len(prompt_refs):
        raise InvalidInput("images, seeds and prompt_refs: must have the same length")
    pictures = [load_image(image, name="generated image") if isinstance(image, bytes) else image.convert("RGB")
                for image in images]
    # The assets first (quarantined until screening says otherwise), so each screening result names its asset.
    assets = [Asset(team_id=team_id, owner_id=owner_id, job_id=job_id, dataset_id=dataset_id,
                    model_version_id=model_version_id, lora_adapter_id=lora_adapter_id, purpose=purpose, seed=seed,
                    prompt_ref=ref, params=params or {}, content_hash="", path="", width=picture.width,
                    height=picture.height, status="quarantined")
              for picture, seed, ref in zip(pictures, seeds, prompt_refs, strict=True)]
    session.add_all(assets)
    session.flush()
    licences = copyright.licences_of(session, team)
    # The detectors score the batch at once (one batched encode); each image is still decided on its own.
    contents = screening.content_scores(settings, pictures)
    outcomes = [screening.screen(session, settings=settings, image=picture, actor=actor, name=f"asset:{asset.id}",
                                 kind="output", team=team, model_version_id=model_version_id, licences=licences,
                                 scored=scored)
                for asset, picture, scored in zip(assets, pictures, contents, strict=True)]
    for asset, outcome in zip(assets, outcomes, strict=True):
        asset.status = "released" if outcome.released else "quarantined"
        asset.screening_result_id = outcome.result_id
        asset.policy_decision_id = outcome.decision_ids[0] if outcome.decision_ids else None
    entries = {asset.id: _release_entry(session, asset=asset, actor=actor, reason="screening passed",
                                        revision=outcome.policy_revision)
               for asset, outcome in zip(assets, outcomes, strict=True) if outcome.released}
    admissions = []
    for asset, picture, outcome in zip(assets, pictures, outcomes, strict=True):
        if not outcome.released:
            _store_quarantined(session, settings=settings, asset=asset, picture=picture, outcome=outcome, actor=actor)
            admissions.append(Admission(asset, outcome, None))
            continue
        signed = _sign_and_store(session, settings=settings, asset=asset, picture=picture, entry=entries[asset.id],
                                 revision=outcome.policy_revision)
        admissions.append(Admission(asset, outcome, signed))
    session.flush()
    return admissions


def _store_quarantined(session: Session, *, settings: Settings, asset: Asset, picture: Image.Image,
                       outcome: screening.ScreeningOutcome, actor: audit.Actor | str) -> None:
    data = png_bytes(picture)
    folder = quarantine_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"asset-{asset.id}.png"
    path.write_bytes(data)
    asset.path, asset.content_hash = str(path), hashlib.sha256(data).hexdigest()
    entry = audit.record(session, actor=actor, action="asset.quarantine", resource=f"asset:{asset.id}", outcome="quarantined",
                         details={"screening_result_id": outcome.result_id, "rule_ids": outcome.rule_ids,
                                  "content_hash": asset.content_hash})
    asset.audit_seq = entry.seq
    log.info("image quarantined", extra={"asset_id": asset.id, "rule_ids": outcome.rule_ids})


def _release_entry(session: Session, *, asset: Asset, actor: audit.Actor | str, reason: str,
                   revision: str) -> audit.AuditRecord:
    return audit.record(session, actor=actor, action="asset.release", resource=f"asset:{asset.id}",
                        details={"reason": reason, "screening_result_id": asset.screening_result_id,
                                 "policy_revision": revision})


def _sign_and_store(session: Session, *, settings: Settings, asset: Asset, picture: Image.Image,
                    entry: audit.AuditRecord, revision: str) -> bytes:
    """Provenance naming the release entry (its seq), then the signed file and the asset's record of it."""
    signed, record = provenance.apply(
        settings=settings, image=picture, asset_id=asset.id,
        model_version=_label(session, ModelVersion, asset.model_version_id) or "unknown",
        lora_version=_label(session, LoraAdapter, asset.lora_adapter_id), policy_revision=revision, audit_seq=entry.seq)
    folder = released_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"asset-{asset.id}.png"
    path.write_bytes(signed)
    asset.path, asset.content_hash, asset.provenance, asset.audit_seq = str(path), hashlib.sha256(signed).hexdigest(), record, entry.seq
    return signed


def _release(session: Session, *, settings: Settings, asset: Asset, picture: Image.Image, actor: audit.Actor | str,
             reason: str, revision: str) -> bytes:
    entry = _release_entry(session, asset=asset, actor=actor, reason=reason, revision=revision)
    signed = _sign_and_store(session, settings=settings, asset=asset, picture=picture, entry=entry, revision=revision)
    session.flush()
    return signed


# --- compliance review -----------------------------------------------------------------------------


def _reviewer_id(session: Session, actor: audit.Actor | str) -> int | None:
    return session.scalar(sa.select(User.id).where(User.email == audit.actor_name(actor).strip().lower()))


def _asset(session: Session, asset_id: int, *, status: str = "quarantined") -> Asset:
    asset = session.get(Asset, asset_id)
    if asset is None or asset.status not in {"quarantined", "rejected", "released"} or (
            asset.screening_result_id is None):
        raise NotFound(f"asset_id: no screened asset {asset_id}")
    if asset.status != status:
        raise Conflict(f"asset {asset_id} is {asset.status}, not {status}")
    return asset


def list_quarantined(session: Session, *, actor: audit.Actor | str, status: str = "quarantined",
                     limit: int = 200) -> list[dict[str, Any]]:
    """Quarantined (or rejected) images with their scores and reasons; compliance officers only."""
    policy.require("quarantine", {"action": "view"}, session=session, actor=actor)
    rows = session.execute(sa.select(Asset, ScreeningResult).join(ScreeningResult, ScreeningResult.id == Asset.screening_result_id)
                           .where(Asset.status == status).order_by(Asset.id).limit(limit)).all()
    return [{"asset_id": a.id, "status": a.status, "created_at": a.created_at.isoformat() if a.created_at else None,
             "team_id": a.team_id, "job_id": a.job_id, "scores": r.scores, "reasons": r.reasons,
             "matches": r.matches, "detectors": r.detectors, "review_reason": a.review_reason} for a, r in rows]


def quarantined_image(session: Session, *, asset_id: int, actor: audit.Actor | str) -> bytes:
    """The pixels of a quarantined image, for review; the access is decided and audited."""
    policy.require("quarantine", {"action": "view"}, session=session, actor=actor)
    asset = session.get(Asset, asset_id)
    if asset is None or asset.status not in {"quarantined", "rejected"}:
        raise NotFound(f"asset_id: no quarantined asset {asset_id}")
    audit.record(session, actor=actor, action="quarantine.view", resource=f"asset:{asset_id}")
    return Path(asset.path).read_bytes()


def release(session: Session, *, settings: Settings, asset_id: int, reason: str, actor: audit.Actor | str) -> Asset:
    """A compliance officer releases a quarantined image: provenance is applied, the reason kept."""
    policy.require("quarantine", {"action": "release", "reason": reason}, session=session, actor=actor)
    asset = _asset(session, asset_id)
    picture = load_image(Path(asset.path))
    asset.status, asset.reviewed_by, asset.reviewed_at, asset.review_reason = (
        "released", _reviewer_id(session, actor), utcnow(), reason.strip())
    _release(session, settings=settings, asset=asset, picture=picture, actor=actor, reason=reason.strip(),
             revision=policy.revision())
    return asset


def reject(session: Session, *, asset_id: int, reason: str, actor: audit.Actor | str) -> Asset:
    """A compliance officer rejects a quarantined image; it is kept, marked rejected, never released."""
    policy.require("quarantine", {"action": "reject", "reason": reason}, session=session, actor=actor)
    asset = _asset(session, asset_id)
    asset.status, asset.reviewed_by, asset.reviewed_at, asset.review_reason = (
        "rejected", _reviewer_id(session, actor), utcnow(), reason.strip())
    audit.record(session, actor=actor, action="asset.reject", resource=f"asset:{asset.id}", outcome="rejected",
                 details={"reason": reason.strip(), "content_hash": asset.content_hash})
    return asset
