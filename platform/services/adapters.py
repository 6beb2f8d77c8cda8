"""Trained LoRA adapters: the catalogue and the approval of a version for production.

Apart from the fine-tuning service (``platform/services/finetune``), which imports the training
recipe and with it torch: listing adapters is a catalogue read (``latentops finetune adapters``
starts in about a second), and ``promote`` loads MLflow's tracking only to move its alias.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import NotFound
from latentops.core.settings import Settings
from latentops.governance import audit, policy
from latentops.platform.services import grants
from latentops.platform.tables import LoraAdapter, ModelRecord, ModelVersion


def get_adapter(session: Session, *, name: str, version: int) -> LoraAdapter:
    adapter = session.scalar(sa.select(LoraAdapter).where(LoraAdapter.name == name, LoraAdapter.version == version,
                                                          LoraAdapter.removed_at.is_(None)))
    if adapter is None:
        raise NotFound(f"adapter: no LoRA adapter {name!r} version {version}")
    return adapter


def promote(session: Session, *, settings: Settings, name: str, version: int, actor: audit.Actor | str) -> LoraAdapter:
    """Move the ``production`` alias to this adapter version; the actor must be an approver.

    Who may approve is the models policy's: whoever may administer access to the adapter's base
    model (action ``grant``: admins, and holders of a manage grant). The approval and the decision id go into the audit
    trail in the same transaction as the alias change; MLflow's alias follows.
    """
    adapter = get_adapter(session, name=name, version=version)
    base = session.get(ModelVersion, adapter.base_version_id)
    model = session.get(ModelRecord, base.model_id) if base else None
    if model is None:
        raise NotFound(f"adapter: the base model of {name!r} version {version} no longer exists")
    # The policy's administrators of the base model approve: admins and holders of a manage grant.
    decision = policy.require("models", {"action": "grant", **grants.model_input(session, model)}, session=session,
                              actor=actor)
    previous = [a for a in session.scalars(sa.select(LoraAdapter).where(LoraAdapter.name == name, LoraAdapter.id != adapter.id))
                if "production" in (a.aliases or [])]
    for other in previous:
        other.aliases = [alias for alias in other.aliases if alias != "production"]
    adapter.aliases = sorted({*(adapter.aliases or []), "production"})
    session.flush()
    audit.record(session, actor=actor, action="lora.promote", resource=f"lora:{adapter.id}",
                 details={"name": name, "version": version, "alias": "production", "approved_by": audit.actor_name(actor),
                          "policy_decision_id": decision.decision_id, "previous_versions": [a.version for a in previous],
                          "mlflow_model_uri": adapter.mlflow_model_uri})
    if adapter.mlflow_model_uri:
        from latentops.pipelines.finetune import tracking  # MLflow (no torch)

        registered, mlflow_version = adapter.mlflow_model_uri.removeprefix("models:/").rsplit("/", 1)
        tracking.set_alias(settings.mlflow_tracking_uri, registered, tracking.PRODUCTION, mlflow_version)
    return adapter


def list_adapters(session: Session, *, name: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(LoraAdapter).where(LoraAdapter.removed_at.is_(None)).order_by(LoraAdapter.name, LoraAdapter.version)
    if name:
        query = query.where(LoraAdapter.name == name)
    return [{"name": a.name, "version": a.version, "aliases": a.aliases, "job_id": a.job_id, "path": a.path,
             "content_hash": a.content_hash, "mlflow_model_uri": a.mlflow_model_uri} for a in session.scalars(query)]
