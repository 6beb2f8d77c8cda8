"""Request content that must not reveal or reach anything: other teams' models, server paths,
prompts made of nothing.

* A model (or LoRA adapter) owned by another team answers 404 on every route that queues work, with the same
  detail as a model that does not exist (generation used to answer 403 "no grant", and a dataset
  spec naming it was queued).
* A dataset filter names its classifier by store id; a server path is an unknown field, and an
  unknown id says nothing about the disk.
* A prompt left empty once control and zero-width characters are removed is refused (422,
  naming the field) on generation, datasets and fine-tuning, and nothing is queued.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_user, team_id
from fastapi.testclient import TestClient
from generation_helpers import catalogue
from PIL import Image

from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import Dataset, Job, LoraAdapter, ModelRecord, ModelVersion, PolicyDecision

pytestmark = pytest.mark.redis

SPEC: dict[str, Any] = {"name": "shapes", "model": "tiny", "per_class": 2, "steps": 1, "batch_size": 2,
                        "classes": [{"name": "square", "prompts": ["a photo of a {name}"]}]}
BLANK = "\u200b\u200d\x01\x7f\u2060 \ufeff\t"


@pytest.fixture
def world(queue_settings, source: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """``tiny`` is public; ``secret`` belongs to marketing. erin (research) can see only ``tiny``."""
    catalogue(queue_settings, source)
    catalogue(queue_settings, source, name="secret")
    url = queue_settings.database_url
    erin = make_user(url, "erin@example.com", "data_scientist", "research")
    make_user(url, "mara@example.com", "data_scientist", "marketing")
    with session_scope(url) as db:
        secret = db.scalar(sa.select(ModelRecord).where(ModelRecord.name == "secret"))
        assert secret is not None
        secret.owner_team_id, secret.sensitivity = team_id(url, "marketing"), "internal"
    return {"api": TestClient(create_app(queue_settings)), "erin": bearer(erin), "settings": queue_settings}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _counts(settings: Any) -> tuple[int, int]:
    with session_scope(settings.database_url) as db:
        return (int(db.scalar(sa.select(sa.func.count(Job.id))) or 0),
                int(db.scalar(sa.select(sa.func.count(Dataset.id))) or 0))


def _finetune(api: TestClient, headers: dict[str, str], **form: str) -> Any:
    data = {"model": "tiny", "instance_prompt": "a sks mug", "attest_licence": "true", "attest_consent": "true", **form}
    return api.post("/api/v1/finetune", headers=headers, data=data, files=[("images", ("a.png", _png(), "image/png"))])


def test_another_teams_model_is_not_found_on_every_route(world) -> None:  # type: ignore[no-untyped-def]
    api, erin = world["api"], world["erin"]
    for name in ("secret", "nope"):
        answers = [
            api.post("/api/v1/generations", json={"model": name, "prompt": "a red square"}, headers=erin),
            api.post("/api/v1/generations", json={"model": f"{name}@1", "prompt": "a red square"}, headers=erin),
            api.post("/api/v1/jobs", json={"kind": "generate", "params": {"model": name, "prompt": "a square"}},
                     headers=erin),
            api.post("/api/v1/datasets", json={**SPEC, "model": name}, headers=erin),
            api.post("/api/v1/jobs", json={"kind": "dataset", "params": {**SPEC, "model": name}}, headers=erin),
            _finetune(api, erin, model=name),
        ]
        for answer in answers:
            assert answer.status_code == 404, answer.text
            assert answer.json() == {"error": "not_found", "detail": f"model: no model named {name!r}", "reasons": []}
    assert _counts(world["settings"]) == (0, 0)
    with session_scope(world["settings"].database_url) as db:  # no decision names the hidden model either
        assert db.scalar(sa.select(sa.func.count(PolicyDecision.id)).where(PolicyDecision.path.startswith("models"))) == 0


def test_another_teams_adapter_is_not_found_either(world) -> None:  # type: ignore[no-untyped-def]
    api, erin, url = world["api"], world["erin"], world["settings"].database_url
    with session_scope(url) as db:
        version = db.scalar(sa.select(ModelVersion).join(ModelRecord, ModelRecord.id == ModelVersion.model_id)
                            .where(ModelRecord.name == "tiny"))
        assert version is not None
        db.add(LoraAdapter(name="mk-style", version=1, base_version_id=version.id, team_id=team_id(url, "marketing"),
                           content_hash="a" * 64, path=str(world["settings"].artifacts_dir / "mk"), aliases=[]))
    for name in ("mk-style", "no-style"):
        answers = [
            api.post("/api/v1/generations", json={"model": "tiny", "lora": name, "prompt": "a square"}, headers=erin),
            api.post("/api/v1/jobs", json={"kind": "generate", "params": {"model": "tiny", "lora": f"{name}@1",
                                                                           "prompt": "a square"}}, headers=erin),
            api.post("/api/v1/datasets", json={**SPEC, "lora": name}, headers=erin),
            api.post("/api/v1/datasets", json={**SPEC, "classes": [{"name": "square", "prompts": ["a {name}"],
                                                                    "lora": name}]}, headers=erin),
        ]
        for answer in answers:
            assert answer.status_code == 404, answer.text
            assert answer.json()["detail"] == f"lora: no adapter named {name!r}"
    assert _counts(world["settings"]) == (0, 0)


def test_a_classifier_is_named_by_store_id_never_by_path(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from latentops.pipelines.datasets import filters
    from latentops.platform.services import datasets as datasets_service

    api, erin, settings = world["api"], world["erin"], world["settings"]
    existing, missing = tmp_path / "judge.pt", tmp_path / "absent.pt"

    class Judge(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))[:, :1]

    torch.jit.script(Judge()).save(str(existing))
    answers = []
    for path in (existing, missing, Path("/etc/passwd")):
        spec = {**SPEC, "filters": {"classifier": {"path": str(path), "min_confidence": 0.5}}}
        answer = api.post("/api/v1/datasets", json=spec, headers=erin)
        assert answer.status_code == 422 and "classifier.path" in answer.json()["detail"], answer.text
        answers.append(answer.json()["detail"].replace(str(path), "PATH"))
    assert len(set(answers)) == 1  # the same answer whether the file exists or not
    for unknown in ("0" * 64, "f" * 64):
        spec = {**SPEC, "filters": {"classifier": {"id": unknown}}}
        answer = api.post("/api/v1/datasets", json=spec, headers=erin)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"] == f"filters.classifier.id: no registered classifier {unknown!r}"
    assert _counts(settings) == (0, 0)
    registered = filters.import_classifier(datasets_service.classifier_root(settings), existing)
    queued = api.post("/api/v1/datasets", json={**SPEC, "filters": {"classifier": {"id": registered}}}, headers=erin)
    assert queued.status_code == 201, queued.text


def test_a_prompt_of_only_invisible_characters_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    api, erin = world["api"], world["erin"]
    cases = [
        (api.post("/api/v1/generations", json={"model": "tiny", "prompt": BLANK}, headers=erin), "prompt"),
        (api.post("/api/v1/generations", json={"model": "tiny", "prompt": "a cat", "negative_prompt": BLANK},
                  headers=erin), "negative_prompt"),
        (api.post("/api/v1/jobs", json={"kind": "generate", "params": {"model": "tiny", "prompt": BLANK}},
                  headers=erin), "params.prompt"),
        (api.post("/api/v1/datasets", json={**SPEC, "classes": [{"name": "square", "prompts": [BLANK]}]},
                  headers=erin), "classes.0.prompts"),
        (api.post("/api/v1/jobs", json={"kind": "dataset", "params": {
            **SPEC, "classes": [{"name": "square", "prompts": ["a {name}", BLANK]}]}}, headers=erin), "classes.0.prompts"),
        (_finetune(api, erin, instance_prompt=BLANK), "instance_prompt"),
        (_finetune(api, erin, params=json.dumps({"method": "dreambooth", "class_prompt": BLANK})), "class_prompt"),
    ]
    for answer, field in cases:
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["detail"] and "empty" in answer.json()["detail"], answer.text
    assert _counts(world["settings"]) == (0, 0)
    with session_scope(world["settings"].database_url) as db:  # refused before any policy was asked
        assert db.scalar(sa.select(sa.func.count(PolicyDecision.id)).where(PolicyDecision.path.startswith("prompt"))) == 0
