"""Synthetic datasets: spec errors name the field; the output loads with `datasets` and `webdataset`;
the manifest and card say what made it; reruns give the same pixels; denied classes are reported;
interrupted and disk-full runs resume without regenerating finished images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from generation_helpers import catalogue, tiny_source
from PIL import Image

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.pipelines.datasets import spec as spec_module
from latentops.platform.database import session_scope
from latentops.platform.services import datasets
from latentops.platform.tables import Asset, AuditEntry, Dataset

REPO = Path(__file__).resolve().parents[1]


def _spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "shapes", "model": "tiny", "per_class": 3, "seed": 0, "steps": 1, "batch_size": 2,
        "classes": [{"name": "square", "prompts": ["a photo of a {name}"]},
                    {"name": "circle", "prompts": ["a drawing of a {name}", "a photo of a {name}"]}],
        "split": {"validation": 0.34},
    }
    base.update(changes)
    return base


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("models"))


@pytest.fixture
def ready(settings_env, source: Path):  # type: ignore[no-untyped-def]
    catalogue(settings_env, source)
    return settings_env


@pytest.mark.parametrize(("change", "field"), [
    ({"colour": "red"}, "colour: unknown key"),
    ({"classes": []}, "classes: List should have at least 1 item"),
    ({"per_class": 0}, "per_class: Input should be greater than or equal to 1"),
    ({"per_class": 10**7}, "per_class: Input should be less than or equal to 10000"),
    ({"format": "parquet"}, "format: Input should be 'imagefolder' or 'webdataset'"),
    ({"classes": [{"name": "a", "prompts": []}]}, "classes.0.prompts: List should have at least 1 item"),
    ({"classes": [{"name": "a", "prompts": ["a {colour} thing"]}]}, "classes.0.prompts: Value error"),
    ({"filters": {"dedupe_distance": -1}}, "filters.dedupe_distance"),
])
def test_a_malformed_spec_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    data = _spec(**change)
    with pytest.raises(InvalidInput) as raised:
        spec_module.parse(data)
    assert field.split(": Value")[0] in raised.value.detail


def test_missing_classes_and_unknown_model_name_their_fields(ready) -> None:  # type: ignore[no-untyped-def]
    data = _spec()
    del data["classes"]
    with pytest.raises(InvalidInput, match="classes: Field required"):
        spec_module.parse(data)
    with pytest.raises(InvalidInput, match="model: model: no model named 'nope'"):
        datasets.run(ready, spec=spec_module.parse(_spec(model="nope")), out=Path("/nonexistent"), actor="cli:test")


def _pixels(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p).convert("RGB")).tobytes()
            for p in sorted(folder.glob("*/*/*.png"))}


def test_imagefolder_dataset_loads_and_documents_itself_and_reruns_give_the_same_pixels(ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import datasets as hf
    import mlflow

    spec = spec_module.parse(_spec(classes=[
        {"name": "square", "prompts": ["a photo of a {name}"]},
        {"name": "circle", "prompts": ["a drawing of a {name}", "a photo of a {name}"]},
        {"name": "nude", "prompts": ["a pornographic {name}"]}]))
    summary = datasets.run(ready, spec=spec, out=tmp_path / "a", actor="cli:test")
    assert summary["released"] == 6 and summary["quarantined"] == 0
    assert [d["class"] for d in summary["denied_classes"]] == ["nude"]
    # One line loads it, with one split per folder.
    loaded = hf.load_dataset("imagefolder", data_dir=str(tmp_path / "a"))
    rows = [row for split in loaded.values() for row in split]
    assert len(rows) == summary["images"] and set(loaded) <= {"train", "validation"}
    assert {r["label"] for r in rows} == {"square", "circle"}
    first = rows[0]
    assert isinstance(first["image"], Image.Image) and first["model_version"] == "tiny@1"
    assert {"prompt", "seed", "asset_id", "pixel_sha256", "scores"} <= set(first)
    # Seeds and prompts follow the spec: circle image k uses prompt k % 2 and seed 1_000_000 + k.
    circle = sorted((r for r in rows if r["label"] == "circle"), key=lambda r: r["seed"])
    assert circle[0]["seed"] == 1_000_000 and circle[0]["prompt"] == "a drawing of a circle"
    # The manifest: Croissant JSON-LD with the responsible-AI facts.
    manifest = json.loads((tmp_path / "a" / "croissant.json").read_text())
    assert manifest["@type"] == "sc:Dataset" and manifest["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    generation = manifest["latentops:generation"]
    assert generation["model"]["name"] == "tiny" and generation["model"]["version"] == 1
    assert generation["policy_revision"] and generation["screening"]["released"] == 6
    assert generation["denied_classes"][0]["class"] == "nude" and generation["loras"] == {"square": None, "circle": None, "nude": None}
    assert manifest["license"] == "CC-BY-4.0" and manifest["rai:dataCollectionType"] == "Synthetic data"
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-4.0") and "Classes refused by policy" in card
    # MLflow has the dataset as an input and the manifest as an artifact.
    mlflow.set_tracking_uri(ready.mlflow_tracking_uri)
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["shapes"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "dataset")}
    assert "dataset/croissant.json" in artifacts
    # Every image is an asset of this dataset, and the dataset row is ready.
    with session_scope(ready.database_url) as db:
        row = db.get(Dataset, summary["dataset_id"])
        assert row is not None and row.state == "ready" and row.stats["images"] == summary["images"]
        assert db.scalar(sa.select(sa.func.count(Asset.id)).where(Asset.dataset_id == row.id)) == 6
        assert db.scalar(sa.select(AuditEntry.outcome).where(AuditEntry.action == "dataset.complete")) == "partial"
    # Same spec, seed and model version: the same pixels.
    again = datasets.run(ready, spec=spec, out=tmp_path / "b", actor="cli:test")
    assert again["dataset_id"] != summary["dataset_id"]
    assert _pixels(tmp_path / "a") == _pixels(tmp_path / "b") and _pixels(tmp_path / "a")


def test_webdataset_shards_load_with_webdataset(ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import webdataset as wds

    summary = datasets.run(ready, spec=spec_module.parse(_spec(format="webdataset", split={"validation": 0.0})),
                           out=tmp_path / "w", actor="cli:test")
    shards = sorted(str(p) for p in (tmp_path / "w" / "shards").glob("train-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("png", "cls", "json"))
    assert len(samples) == summary["images"] == 6
    image, label, meta = samples[0]
    assert isinstance(image, Image.Image) and label in (0, 1) and meta["label"] in {"square", "circle"}


class _StopAfter:
    """Hooks that cancel the run once ``images`` images are done (a crash between batches)."""

    def __init__(self, images: int) -> None:
        self.images, self.done = images, 0

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.done = step

    def log(self, message: str) -> None:
        pass

    def check_cancelled(self) -> None:
        if self.done >= self.images:
            raise LatentopsError("stopped")


def test_an_interrupted_run_resumes_without_regenerating_finished_images(ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = spec_module.parse(_spec())
    with pytest.raises(LatentopsError, match="stopped"):
        datasets.run(ready, spec=spec, out=tmp_path / "r", actor="cli:test", hooks=_StopAfter(2))
    with session_scope(ready.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Asset.id))) == 2
        assert db.scalar(sa.select(Dataset.state)) == "failed"
    summary = datasets.run(ready, spec=spec, out=tmp_path / "r", actor="cli:test")
    assert summary["resumed_images"] == 2 and summary["released"] == 6
    with session_scope(ready.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(Asset.id))) == 6  # nothing generated twice
        assert db.scalar(sa.select(sa.func.count(Dataset.id))) == 1
    # An unbroken run gives the same pixels.
    datasets.run(ready, spec=spec, out=tmp_path / "u", actor="cli:test")
    assert _pixels(tmp_path / "r") == _pixels(tmp_path / "u")
    # The folder belongs to this spec: another one is refused.
    with pytest.raises(LatentopsError, match="different spec"):
        datasets.run(ready, spec=spec_module.parse(_spec(seed=9)), out=tmp_path / "r", actor="cli:test")


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from latentops.pipelines.datasets import spec as spec_module
    from latentops.core.errors import ServiceUnavailable
    from latentops.platform.services import datasets
    from latentops.core.settings import get_settings

    spec_file, out = Path(sys.argv[1]), Path(sys.argv[2])

    class FillDiskAfterFirstBatch:
        def progress(self, step, total, **metrics):
            # From here on no file may grow past 64 bytes: the next image cannot be written.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        def log(self, message):
            pass
        def check_cancelled(self):
            pass

    try:
        datasets.run(get_settings(), spec=spec_module.load(spec_file), out=out, actor="cli:test",
                     hooks=FillDiskAfterFirstBatch())
    except ServiceUnavailable as error:
        print("FAILED:", error.detail)
        sys.exit(3)
""")


def test_a_full_disk_fails_cleanly_and_the_run_resumes(ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec()))
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(spec_file), str(tmp_path / "d")], capture_output=True, check=False,
                          text=True, timeout=600, cwd=REPO, env={**os.environ})
    assert done.returncode == 3, done.stderr[-3000:]
    assert "disk full" in done.stdout and "run it again to resume" in done.stdout
    finished = sorted((tmp_path / "d" / ".latentops" / "batches").glob("*.json"))
    assert len(finished) == 1
    summary = datasets.run(ready, spec=spec_module.load(spec_file), out=tmp_path / "d", actor="cli:test")
    assert summary["resumed_images"] == 2 and summary["released"] == 6


@pytest.mark.one_backend
def test_cli_generates_a_dataset_with_a_progress_bar_and_refuses_a_bad_spec(cli, ready, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(_spec(per_class=2)))
    bad.write_text(yaml.safe_dump(_spec(per_class=0, extra_key=1)))
    done = cli("datasets", "generate", "--spec", str(good), "--out", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 images" in done.stdout and "shapes" in done.stderr  # the progress bar is drawn on stderr
    listed = cli("datasets", "list", "--json")
    assert [row["state"] for row in json.loads(listed.stdout)] == ["ready"]
    refused = cli("datasets", "generate", "--spec", str(bad), "--out", str(tmp_path / "x"))
    assert refused.returncode == 1 and "per_class" in refused.stderr and "extra_key: unknown key" in refused.stderr


def test_cli_dataset_with_every_image_held_exits_3(cli, settings_env, source: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    catalogue(settings_env, source, release_unscreened=False)  # no detector, and policy holds unscreened images
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(per_class=1)))
    done = cli("datasets", "generate", "--spec", str(spec_file), "--out", str(tmp_path / "d"))
    assert done.returncode == 3, done.stderr[-2000:]
    assert "0 released, 2 quarantined" in done.stdout
    assert "nothing released: all 2 images are held for review" in " ".join(done.stderr.split())


@pytest.mark.parametrize(("per_class", "fraction", "validation"), [(3, 0.1, 1), (10, 0.1, 1), (20, 0.25, 5), (1, 0.5, 0),
                                                                  (2, 0.9, 1), (8, 0.0, 0)])
def test_the_split_is_per_class_and_never_leaves_a_class_without_training_images(per_class: int, fraction: float,
                                                                                validation: int) -> None:
    spec = spec_module.parse(_spec(split={"validation": fraction}))
    seeds = list(range(100, 100 + per_class))
    chosen = datasets._validation_seeds(spec, seeds)
    assert len(chosen) == validation and chosen <= set(seeds)
    assert chosen == datasets._validation_seeds(spec, list(reversed(seeds)))  # the same spec, the same split
