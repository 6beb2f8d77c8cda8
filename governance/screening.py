"""Image screening: content scores and copyright matches, decided by policy, recorded.

Every image the platform would hand out passes ``screen`` (``quarantine.admit`` calls it for
generated images; ``latentops screen IMAGE`` runs it by hand):

1. Decode the image safely (``imagefile.load_image``: non-images, bombs and odd modes are refused).
2. Score it per category with every configured detector (``detectors``); per category the highest
   score counts.
3. Look it up in the copyright reference index (``copyright.find_matches``).
4. Ask the policy engine twice, both decisions recorded and audited: ``screening`` (content
   scores against the thresholds in policy data) and ``copyright`` (matches against licences).
5. Store a ``ScreeningResult`` and write the ``screening.result`` audit entry.

The verdict is ``release`` only when both policies allow.

**Detectors in force.** CLIP once weights are imported, every pluggable detector turned on in
``LATENTOPS_HOME/screening/detectors.json``, and nsfwjs by default whenever its converted weights
exist (``nsfwjs.default_dir()``; ``configure_detector(kind="nsfwjs", enabled=False)`` turns it off).

**Coverage.** ``status()`` maps every category to the detectors that cover it and lists the ones
none covers (``uncovered``); ``health()`` reports ``partial`` then, and the quarantine page of the
portal shows both. ``screen`` passes the covered categories to the policy, which decides whether
an uncovered category holds the image (``screening.release_uncovered``, false by default).

**No real detector.** When no detector is in force the detector is reported as ``none``: a WARNING
is logged, ``status()`` and ``health()`` say so (``status()["real_detector"]`` is false), every
result's audit entry carries ``"unscreened": true``, and the policy decides whether unscreened
images may be released (``screening.release_without_detector``, false by default).

CLIP weights are imported from a local file with ``import_clip`` (``latentops screening import-clip``)
into ``LATENTOPS_HOME/screening/clip``, or fetched from open_clip's published checkpoints when an
operator asks for it on a connected machine (``import-clip --pretrained ARCH/TAG``,
``clip.fetch_pretrained``); nothing is downloaded at start-up or while screening.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.core.settings import Settings
from latentops.governance import audit, copyright, detectors, nsfwjs, policy
from latentops.governance.clip import clip_dir, clip_manifest, load_clip, screening_dir
from latentops.governance.detectors import CATEGORIES, ClipConceptDetector, Detector
from latentops.governance.imagefile import load_image
from latentops.governance.tables import ScreeningResult

log = logging.getLogger(__name__)

NO_DETECTOR = "none"
NO_DETECTOR_WARNING = (
    "no real content detector is configured: images are not content-screened; import CLIP weights "
    "(latentops screening import-clip), convert nsfwjs (python -m latentops.governance.nsfwjs convert) "
    "or configure a detector"
)
KINDS = ("output", "training_upload")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- CLIP weights -------------------------------------------------------------------------------


def import_clip(session: Session, *, settings: Settings, arch: str, weights: Path, actor: audit.Actor | str,
                config: Path | None = None) -> dict[str, Any]:
    """Check that ``weights`` load into ``arch`` (strictly), copy them into the home, audit the import."""
    if not weights.is_file():
        raise InvalidInput(f"weights: {weights} is not a file")
    model_config: dict[str, Any] | None = None
    if config is not None:
        try:
            model_config = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidInput(f"config: {config} is not a readable JSON model config ({error})") from None
    detectors.build_clip(arch, weights, model_config)  # raises InvalidInput when they do not fit
    target = clip_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    sha = _sha256_file(weights)
    stored = target / f"weights-{sha[:16]}{weights.suffix or '.bin'}"
    shutil.copyfile(weights, stored)
    manifest = {"arch": arch, "sha256": sha, "weights": stored.name, "config": model_config, "source": str(weights),
                "imported_at": dt.datetime.now(dt.UTC).isoformat()}
    (target / "clip.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    audit.record(session, actor=actor, action="screening.clip.import", resource=f"clip:{arch}",
                 details={"arch": arch, "sha256": sha, "source": str(weights)})
    log.info("CLIP weights imported for screening", extra={"arch": arch, "sha256": sha})
    return {key: manifest[key] for key in ("arch", "sha256", "weights", "imported_at")}


# --- detectors in force -------------------------------------------------------------------------


def _detector_file(settings: Settings) -> Path:
    return screening_dir(settings) / "detectors.json"


def configure_detector(session: Session, *, settings: Settings, kind: str, path: Path | None, actor: audit.Actor | str,
                       enabled: bool = True) -> dict[str, Any]:
    """Turn a pluggable detector on (after checking that it loads) or off; audited. Returns the
    detectors configured on.

    nsfwjs is on by default wherever its converted weights exist, so turning it off is recorded as
    ``{"enabled": false}``; turning it on takes an optional ``path`` to a converted folder.
    """
    if kind not in detectors.KINDS:
        raise InvalidInput(f"kind: {kind!r} is not a detector; choose one of {', '.join(detectors.KINDS)}")
    config = detectors.read_config(_detector_file(settings))
    if kind == "nsfwjs":
        if enabled:
            detectors.NsfwjsDetector((path or nsfwjs.default_dir()).resolve())  # raises when not converted
            config[kind] = {"path": str(path.resolve())} if path else {}
        else:
            config[kind] = {"enabled": False}
            log.warning("content detector nsfwjs turned off")
    elif enabled:
        if kind == "safety_checker":
            if path is None:
                raise InvalidInput("path: the safety checker needs the folder of its weights (diffusers format)")
            detectors.SafetyCheckerDetector(path.resolve())
            config[kind] = {"path": str(path.resolve())}
        else:
            detectors.NudeNetDetector()
            config[kind] = {}
    else:
        config.pop(kind, None)
        log.warning("content detector %s turned off", kind)
    _detector_file(settings).parent.mkdir(parents=True, exist_ok=True)
    _detector_file(settings).write_text(json.dumps(config, indent=2), encoding="utf-8")
    audit.record(session, actor=actor, action="screening.detector.configure", resource=f"detector:{kind}",
                 details={"kind": kind, "enabled": enabled, "path": str(path) if path else None})
    _loaded.clear()
    return {name: options for name, options in config.items() if options.get("enabled") is not False}


_loaded: dict[str, Detector] = {}


def _nsfwjs_state(config: dict[str, Any]) -> dict[str, Any]:
    """Where nsfwjs's converted weights are looked for and whether it is ``active``, ``off`` or ``missing``."""
    entry = config.get("nsfwjs") or {}
    folder = Path(entry["path"]) if entry.get("path") else nsfwjs.default_dir()
    if entry.get("enabled") is False:
        return {"state": "off", "folder": str(folder)}
    manifest = nsfwjs.read_manifest(folder)
    if manifest is None:
        return {"state": "missing", "folder": str(folder)}
    source = manifest["source"]
    return {"state": "active", "folder": str(folder), "package": f"{source['package']}@{source['version']}",
            "model_sha256": source["model_sha256"], "weights_sha256": manifest["weights_sha256"]}


def _pluggable(settings: Settings) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """The pluggable detectors in force as ``(kind, options)``, sorted, and nsfwjs's state."""
    config = detectors.read_config(_detector_file(settings))
    state = _nsfwjs_state(config)
    found = [(kind, options) for kind, options in config.items() if kind != "nsfwjs"]
    if state["state"] == "active":
        found.append(("nsfwjs", {"path": state["folder"]}))
    return sorted(found, key=lambda item: item[0]), state


def active_detectors(settings: Settings) -> list[Detector]:
    """CLIP when weights are imported, nsfwjs when converted (unless turned off), every configured detector."""
    found: list[Detector] = []
    clip = load_clip(settings)
    if clip is not None:
        found.append(ClipConceptDetector(clip))
    for kind, options in _pluggable(settings)[0]:
        if kind == "nsfwjs":  # the model itself is cached per folder and file times
            found.append(detectors.NsfwjsDetector(Path(options["path"])))
            continue
        key = f"{kind}:{json.dumps(options, sort_keys=True)}"
        if key not in _loaded:
            _loaded[key] = (detectors.SafetyCheckerDetector(Path(options["path"])) if kind == "safety_checker"
                            else detectors.NudeNetDetector())
        found.append(_loaded[key])
    return found


_warned = False


def status(settings: Settings) -> dict[str, Any]:
    """What screens images now: detectors, per category the detectors covering it, the uncovered
    categories and what policy does with them; ``real_detector`` false means nothing screens."""
    clip = clip_manifest(settings)
    pluggable, nsfwjs_state = _pluggable(settings)
    names = (["clip"] if clip else []) + [kind for kind, _ in pluggable]
    coverage = {c: [n for n in names if c in detectors.COVERAGE.get(n, ())] for c in CATEGORIES}
    uncovered = [c for c, covering in coverage.items() if not covering]
    result: dict[str, Any] = {
        "real_detector": bool(names), "detectors": names, "coverage": coverage, "uncovered": uncovered,
        "clip": {k: clip[k] for k in ("arch", "sha256", "imported_at")} if clip else None,
        "nsfwjs": nsfwjs_state, "copyright_embeddings": clip is not None,
    }
    try:
        result["release_without_detector"] = bool(policy.policy_data("screening.release_without_detector"))
        result["release_uncovered"] = bool(policy.policy_data("screening.release_uncovered"))
        result["thresholds"] = policy.policy_data("screening.thresholds")
    except InvalidInput as error:
        result["policy_error"] = error.detail
    released = result.get("release_uncovered") or result.get("release_without_detector")
    result["uncovered_images"] = "released" if released else "held"
    if not names:
        result["warning"] = NO_DETECTOR_WARNING
    elif uncovered:
        result["warning"] = (f"no configured detector covers {', '.join(uncovered)}: images are "
                             + ("released without screening for these categories (policy data screening.release_uncovered)"
                                if released else "held for review (policy data screening.release_uncovered is false)"))
    return result


def health(settings: Settings) -> dict[str, Any]:
    """A health-report entry: ``ok`` when every category is covered, ``partial`` when some are not,
    ``unscreened`` (loud) without any real detector."""
    report = status(settings)
    if not report["real_detector"]:
        return {"status": "unscreened", "detail": NO_DETECTOR_WARNING,
                "images_released_unscreened": report.get("release_without_detector", False)}
    entry = {"status": "partial" if report["uncovered"] else "ok", "detectors": report["detectors"],
             "coverage": report["coverage"], "uncovered": report["uncovered"]}
    if report["uncovered"]:
        entry.update(detail=report["warning"], uncovered_images=report["uncovered_images"])
    return entry


def _warn_unscreened() -> None:
    global _warned
    if not _warned:
        log.warning(NO_DETECTOR_WARNING)
        _warned = True


# --- scoring and screening ----------------------------------------------------------------------


def score_content(images: Sequence[Image.Image], found: Sequence[Detector]) -> tuple[str, list[dict[str, float]]]:
    """``(detector label, scores per image)``; per category the highest score of any detector."""
    if not found:
        _warn_unscreened()
        return NO_DETECTOR, [{} for _ in images]
    merged: list[dict[str, float]] = [{} for _ in images]
    for detector in found:
        for row, scores in zip(merged, detector.score(images), strict=True):
            for category, value in scores.items():
                row[category] = max(value, row.get(category, 0.0))
    return "+".join(d.name for d in found), merged


@dataclass(frozen=True)
class ContentScores:
    """One image's content scores, the detector label and the categories the detectors cover."""

    detector: str
    scores: dict[str, float]
    covered: list[str]


def content_scores(settings: Settings, images: Sequence[Image.Image]) -> list[ContentScores]:
    """Score RGB ``images`` with every detector in force, one batched pass per detector (a model's
    forward pass over the batch costs far less per image than one pass per image); one row per image."""
    found = active_detectors(settings)
    label, rows = score_content(images, found)
    covered = sorted({category for detector in found for category in detector.categories})
    return [ContentScores(label, scores, covered) for scores in rows]


@dataclass
class ScreeningOutcome:
    verdict: str
    reasons: list[str]
    rule_ids: list[str]
    scores: dict[str, float]
    detector: str
    matches: list[dict[str, Any]]
    policy_revision: str
    result_id: int | None = None
    image_hash: str = ""
    decision_ids: list[int] = field(default_factory=list)

    @property
    def released(self) -> bool:
        return self.verdict == "release"

    def to_json(self) -> dict[str, Any]:
        """The stable shape ``latentops screen --json`` prints."""
        return {
            "verdict": self.verdict, "reasons": self.reasons,
            "content": {"scores": self.scores, "detector": self.detector},
            "copyright": {"matches": [{k: m[k] for k in ("reference_id", "owner", "method", "score")} for m in self.matches]},
        }


_RESULT_INSERT = sa.insert(ScreeningResult.__table__).returning(ScreeningResult.__table__.c.id)


def screen(session: Session, *, settings: Settings, image: Image.Image | Path | bytes, actor: audit.Actor | str,
           name: str = "image", kind: str = "output", team: str | None = None,
           model_version_id: int | None = None, licences: list[dict[str, Any]] | None = None,
           scored: ContentScores | None = None) -> ScreeningOutcome:
    """Screen one image (steps in the module docstring); records the result and its audit entry.

    ``licences``: the team's copyright licences, when a caller screening several images read them once.
    ``scored``: the image's content scores, when a caller scored several images in one batch
    (``content_scores`` on the RGB image).
    """
    if kind not in KINDS:
        raise InvalidInput(f"kind: {kind!r} must be one of {', '.join(KINDS)}")
    # 1. Decode.
    picture = image if isinstance(image, Image.Image) else load_image(image, name=name)
    picture = picture.convert("RGB")
    image_hash = hashlib.sha256(picture.tobytes() + repr(picture.size).encode()).hexdigest()
    # 2. Content scores, and the categories the detectors cover (the policy decides about the rest).
    if scored is None:
        scored = content_scores(settings, [picture])[0]
    label, scores, covered = scored.detector, scored.scores, scored.covered
    # 3. Copyright matches.
    matches = copyright.find_matches(session, settings=settings, image=picture)
    # 4. Policy decisions (each recorded and audited by the policy module).
    content = policy.decide("screening", {"detector": label, "scores": scores, "covered": covered}, session=session,
                            actor=actor)
    rights = copyright.decide(session, kind=kind, matches=matches, team=team, actor=actor, licences=licences)
    reasons = content.reasons + rights.reasons
    rule_ids = content.rule_ids + rights.rule_ids
    verdict = "release" if content.allow and rights.allow else "quarantine"
    # 5. Record.
    result_id = session.execute(_RESULT_INSERT, {
        "image_hash": image_hash, "verdict": verdict, "scores": scores, "matches": matches, "reasons": reasons,
        "detectors": [label], "policy_revision": content.revision, "model_version_id": model_version_id, "kind": kind,
        "source": name[:400]}).scalar_one()
    audit.record(session, actor=actor, action="screening.result", resource=f"screening_result:{result_id}",
                 outcome=verdict, details={
                     "image_hash": image_hash, "kind": kind, "detector": label, "unscreened": label == NO_DETECTOR,
                     "uncovered": [c for c in CATEGORIES if c not in covered],
                     "rule_ids": rule_ids, "matches": [m["reference_id"] for m in matches],
                     "decisions": [content.decision_id, rights.decision_id], "policy_revision": content.revision,
                 })
    log.info("image screened", extra={"screening_result_id": result_id, "verdict": verdict})
    return ScreeningOutcome(verdict, reasons, rule_ids, scores, label, matches, content.revision, result_id, image_hash,
                            [d for d in (content.decision_id, rights.decision_id) if d is not None])
