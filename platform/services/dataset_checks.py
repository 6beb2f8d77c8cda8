"""Step 1 of a dataset run or submit: the checks, before anything is generated or queued.

:func:`preflight` checks that the spec's model and adapters exist (``InvalidInput`` naming the
field otherwise) and its classifier is registered; the ``datasets`` policy lets the requester
generate this many images at this resolution for the team (``PolicyDenied`` otherwise); and the
prompt and models policies are asked for every class (``generation.authorize``). A class whose
prompt is denied is reported in the :class:`Plan` with its reasons and skipped; the others go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, NotFound, PolicyDenied
from latentops.core.settings import Settings
from latentops.governance import audit, policy
from latentops.pipelines.datasets import filters
from latentops.pipelines.datasets.spec import DatasetSpec
from latentops.platform.services import generation, teams
from latentops.platform.services import models as models_service

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What preflight allowed: per class its authorisation, or the reasons it was refused."""

    team: str | None
    team_id: int | None
    revision: str
    authorizations: dict[str, generation.Authorization] = field(default_factory=dict)
    loras: dict[str, str | None] = field(default_factory=dict)
    denied: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    decision_ids: list[int] = field(default_factory=list)


def resolve_target(session: Session, model: str, lora: str | None) -> generation.Target:
    """The model (and adapter) a spec names; a missing one is ``InvalidInput`` naming the field."""
    try:
        return generation.resolve(session, model=model, lora=lora)
    except NotFound as error:
        field_name = "lora" if lora and "lora" in error.detail else "model"
        raise InvalidInput(f"{field_name}: {error.detail}") from None


def preflight(session: Session, *, settings: Settings, actor: audit.Actor | str, spec: DatasetSpec) -> Plan:
    """Raises ``PolicyDenied`` when the datasets policy refuses the whole dataset."""
    base = resolve_target(session, spec.model, spec.lora)
    if spec.filters.classifier is not None:
        filters.classifier_file(classifier_root(settings), spec.filters.classifier.id)
    team_row = teams.resolve(session, actor, spec.team)
    team, team_id = (team_row.name, team_row.id) if team_row else (None, None)
    resolution = spec.resolution() or models_service.native_resolution(base.weights.path)
    decision = policy.require("datasets", {"action": "generate", "team": team or "", "dataset": {
        "images": spec.total_images, "resolution": resolution, "team": team or ""}}, session=session, actor=actor)
    plan = Plan(team=team, team_id=team_id, revision=decision.revision,
                model={"name": base.model.name, "version": base.version.version, "sha256": base.version.content_hash,
                       "version_id": base.version.id},
                decision_ids=[decision.decision_id] if decision.decision_id else [])
    for cls in spec.classes:
        target = resolve_target(session, spec.model, spec.lora_of(cls))
        plan.loras[cls.name] = f"{target.lora.name}@{target.lora.version}" if target.lora else None
        try:  # a denial leaves its recorded decisions in the transaction; the other classes go on
            plan.authorizations[cls.name] = generation.authorize(
                session, target=target, prompts=cls.rendered_prompts(), negative_prompt=spec.negative_of(cls), actor=actor,
                team=team)
        except PolicyDenied as denial:
            plan.denied.append({"class": cls.name, "reasons": list(denial.reasons) or [denial.detail]})
            log.warning("dataset %s: class %s refused by policy: %s", spec.name, cls.name, denial.detail)
    return plan


def classifier_root(settings: Settings) -> Path:
    """Where registered classifiers are stored, by SHA-256 (``filters.import_classifier``)."""
    return settings.artifacts_dir / "classifiers"
