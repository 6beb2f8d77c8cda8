"""The ``jobs`` policy's input for a fine-tune, built in one place.

The submit path (:func:`latentops.platform.services.finetune.preflight`) and the portal's
pre-check (``POST /jobs/new/check``) ask the policy the same question, so they cannot disagree:
the same role, model grants, recipe limits, upload attestation, priority and queue usage.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from latentops.core.tables import ModelRecord, Team
from latentops.pipelines.finetune.config import FinetuneConfig
from latentops.platform.services import grants
from latentops.platform.services.jobs import usage


def jobs_input(session: Session, *, model: ModelRecord, team: Team | None, config: FinetuneConfig, uploads: int,
               attest_licence: bool, attest_consent: bool, priority: int | None,
               subject: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document for ``policy.require("jobs", ...)`` with action ``fine_tune``.

    ``subject`` is the caller's policy subject when the caller holds it (a signed-in principal);
    otherwise the policy service reads it for the actor it is given.
    """
    document: dict[str, Any] = {
        "action": "fine_tune", "team": team.name if team else "", **grants.model_input(session, model),
        "params": {"steps": config.steps, "resolution": config.resolution, "rank": config.rank,
                   "batch": config.batch_size, "processes": config.processes},
        "uploads": {"count": uploads, "attestation": {"licence": attest_licence, "consent": attest_consent}},
        "priority": priority, "usage": usage(session, team.id if team else None),
    }
    if subject is not None:
        document["subject"] = subject
    return document
