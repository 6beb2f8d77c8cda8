"""A fine-tune from uploaded instance images: the recipe values, the staging folder, the submit.

Shared by ``POST /api/v1/finetune`` and the portal's fine-tune page. Uploads are checked here only
for what HTTP must guard: a file name is a plain name (no folders, no ``..``, no hidden files), the
count and each file's size are bounded, a caption belongs to one image. They land in a private
staging folder that is removed afterwards whatever happens. Once the recipe values are valid, every
usable image is content-screened (``screen_uploads``) exactly as a generated image is
(``governance.screening.screen``, kind ``training_upload``: the detectors in force, the ``screening``
policy with its thresholds and its rule for unscreened images, a ``ScreeningResult`` row and a
``screening.result`` audit entry each); an image the content policy denies refuses the whole upload
(``PolicyDenied`` naming each file and category) and nothing of it is kept. The fine-tuning service
then validates the pixels, screens them for copyright, asks the jobs policy and freezes the accepted
files itself. A base model the caller cannot see is ``NotFound``, like one that does not exist.

The fine-tuning service imports torch, so it is imported on first submit: this module stays light
for the API's and the portal's start-up.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, PolicyDenied
from latentops.core.settings import Settings
from latentops.governance import access, audit
from latentops.governance.access import Principal
from latentops.governance.image_formats import IMAGE_SUFFIXES
from latentops.platform.api import limits
from latentops.platform.services import job_requests, teams
from latentops.platform.services.jobs.views import submitted_json

if TYPE_CHECKING:
    from fastapi import UploadFile

MAX_FILES = 200
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()-]{0,150}$")
# What the portal offers as presets: a starting point per budget, overridden by explicit values.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"method": "lora", "steps": 200, "rank": 4, "resolution": 512, "lr": 2e-4},
    "standard": {"method": "lora", "steps": 500, "rank": 8, "resolution": 512, "lr": 1e-4},
    "thorough": {"method": "lora", "steps": 1500, "rank": 16, "resolution": 768, "lr": 1e-4},
}


def safe_file_name(name: str | None, index: int) -> str:
    """The upload's own name if it is a plain file name; anything else is refused, naming it."""
    raw = name or ""
    if not raw or "/" in raw or "\\" in raw or raw in {".", ".."} or not SAFE_NAME.match(raw):
        raise InvalidInput(f"images[{index}]: file name {raw!r} is not allowed (a plain name such as cat-01.png, "
                           "no folders, no leading dot)")
    if Path(raw).suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInput(f"images[{index}]: {raw!r} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return raw


def recipe_values(preset: str, params: str, instance_prompt: str, *, max_depth: int) -> dict[str, Any]:
    """The preset's recipe values, overridden by ``params`` (a JSON object, nested at most ``max_depth``)."""
    if preset not in PRESETS:
        raise InvalidInput(f"preset: {preset!r} is not one of {', '.join(PRESETS)}")
    try:
        extra = limits.loads(params, field="params", max_depth=max_depth) if params.strip() else {}
    except json.JSONDecodeError as error:
        raise InvalidInput(f"params: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(extra, dict):
        raise InvalidInput("params: must be a JSON object of recipe values")
    values = {**PRESETS[preset], **extra}
    if instance_prompt.strip():
        values["instance_prompt"] = instance_prompt.strip()
    return values


async def stage_uploads(settings: Settings, images: list[UploadFile], captions: list[str]) -> Path:
    """Write the uploads to a fresh private folder (with ``NAME.txt`` captions); the caller removes it."""
    if not images:
        raise InvalidInput("images: upload at least one instance image")
    if len(images) > MAX_FILES:
        raise InvalidInput(f"images: at most {MAX_FILES} files per request (got {len(images)})")
    if captions and len(captions) != len(images):
        raise InvalidInput(f"captions: give one caption per image or none ({len(captions)} for {len(images)} images)")
    names = [safe_file_name(upload.filename, i) for i, upload in enumerate(images)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"images: file names must be unique ({', '.join(duplicates)})")
    folder = settings.home / "uploads" / secrets.token_hex(12)
    folder.mkdir(parents=True, mode=0o700)
    try:
        for index, (upload, name) in enumerate(zip(images, names, strict=True)):
            data = await upload.read()
            if not data:
                raise InvalidInput(f"images[{index}]: {name!r} is empty")
            (folder / name).write_bytes(data)
            caption = captions[index].strip() if captions else ""
            if caption:
                (folder / f"{Path(name).stem}.txt").write_text(caption[:1000], encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def submit_staged(session: Session, settings: Settings, principal: Principal, *, folder: Path, model: str,
                  values: dict[str, Any], team: str | None, adapter_name: str | None, attest_licence: bool,
                  attest_consent: bool, priority: int | None) -> dict[str, Any]:
    """Submit the fine-tune of the staged ``folder`` for the caller; the folder is removed whatever happens."""
    from latentops.pipelines.finetune.config import build_config
    from latentops.platform.services import finetune as finetune_service  # imports torch: only when used

    access.check(session, principal=principal, action="jobs.submit")
    team_name = teams.resolve(session, principal, team).name
    job_requests.visible_model(session, principal, ref=model, action="jobs.submit")  # 404 like a missing model
    try:
        build_config(dict(values))  # an invalid recipe value is named before any image is screened
        screen_uploads(session, settings, folder=folder, team=team_name, actor=principal.email)
        job = finetune_service.submit(session, settings, actor=principal.email, owner_email=principal.email,
                                      request=finetune_service.Request(
                                          model=model, instance_dir=folder, values=values, team=team_name,
                                          adapter_name=adapter_name or None, attest_licence=attest_licence,
                                          attest_consent=attest_consent, priority=priority))
    except InvalidInput as error:  # the staging folder is the server's business, not the caller's
        if str(folder) not in error.detail:
            raise
        raise InvalidInput(error.detail.replace(f"instance_dir: {folder}", "images: the upload").replace(
            str(folder), "the upload"), reasons=error.reasons) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the service froze what it accepted
    return submitted_json(session, job)


def screen_uploads(session: Session, settings: Settings, *, folder: Path, team: str, actor: audit.Actor | str,
                   files: list[str] | None = None) -> list[dict[str, Any]]:
    """Content-screen each training image of ``folder`` (or only ``files``) as generated images are.

    Files that do not decode are left to the fine-tuning checks, which name them with their reason.
    Every result is recorded (``ScreeningResult`` of kind ``training_upload`` and its audit entry,
    plus one ``screening.training_upload`` entry for the upload); when the ``screening`` policy denies
    any image, ``PolicyDenied`` names each such file with its categories and reasons. Copyright
    denials are left to the fine-tuning service's own copyright check and its refusal.
    """
    from latentops.governance import copyright, screening
    from latentops.pipelines.finetune import data

    licences = copyright.licences_of(session, team)
    results, refused = [], []
    for path in [folder / name for name in files] if files is not None else data.candidate_files(folder):
        try:
            picture = data.decode(path)  # the pixels that would train: upright 8-bit RGB
        except InvalidInput:
            continue
        outcome = screening.screen(session, settings=settings, image=picture, actor=actor, name=path.name,
                                   kind="training_upload", team=team or None, licences=licences)
        content = [(rule, reason) for rule, reason in zip(outcome.rule_ids, outcome.reasons, strict=True)
                   if rule.startswith("screening.")]
        results.append({"file": path.name, "result_id": outcome.result_id, "detector": outcome.detector,
                        "allow": not content})
        if content:
            refused.append((path.name, content))
    audit.record(session, actor=actor, action="screening.training_upload", resource=f"team:{team}",
                 outcome="deny" if refused else "success",
                 details={"files": len(results), "refused": [name for name, _ in refused][:100],
                          "results": [r["result_id"] for r in results][:MAX_FILES]})
    if refused:
        named = [f"{name} ({', '.join(dict.fromkeys(rule.removeprefix('screening.') for rule, _ in content))})"
                 for name, content in refused]
        more = f" and {len(named) - 5} more" if len(named) > 5 else ""
        raise PolicyDenied(f"training upload refused by content screening: {'; '.join(named[:5])}{more}",
                           reasons=[f"{name}: {reason}" for name, content in refused for _, reason in content])
    return results
