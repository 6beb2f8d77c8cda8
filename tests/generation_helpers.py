"""Shared set-up for the generation and dataset tests: a tiny catalogued model and release policy."""

from __future__ import annotations

from pathlib import Path

from latentops.core.settings import Settings
from latentops.governance import policy
from latentops.pipelines import tiny
from latentops.platform.database import session_scope
from latentops.platform.services import models as models_service

_TINY: dict[str, Path] = {}


def tiny_source(root: Path) -> Path:
    """One tiny sd1 pipeline per test session (built offline, a few MB)."""
    if "sd1" not in _TINY:
        _TINY["sd1"] = tiny.create("sd1", root / "tiny-sd1", seed=0)
    return _TINY["sd1"]


def catalogue(settings: Settings, source: Path, *, release_unscreened: bool = True, name: str = "tiny") -> None:
    """Import the tiny model as ``name`` (public) and, by default, let unscreened images be released."""
    policy.use_service(None)
    with session_scope(settings.database_url) as db:
        models_service.import_model(db, source=source, name=name, actor="cli:test", store_root=settings.model_store,
                                    sensitivity="public")
        if release_unscreened:
            policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(settings.database_url) as db:
        policy.reload(db)
