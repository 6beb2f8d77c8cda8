"""The model store and catalogue: import, identity, family detection, refusals, removal, audit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import save_file

from latentops.core.errors import Conflict, InvalidInput, NotFound
from latentops.pipelines import tiny
from latentops.pipelines.store import ModelStore
from latentops.platform.database import session_scope
from latentops.platform.services import models as models_service
from latentops.platform.tables import AuditEntry, ModelRecord, ModelVersion

ACTOR = "test:admin"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: tiny.create(family, root / family) for family in tiny.TINY_FAMILIES}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _rows(url: str) -> tuple[int, int, list[str]]:
    with session_scope(url) as db:
        models = db.scalar(sa.select(sa.func.count()).select_from(ModelRecord)) or 0
        versions = db.scalar(sa.select(sa.func.count()).select_from(ModelVersion)) or 0
        actions = list(db.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)))
    return models, versions, actions


def _ldm_checkpoint(path: Path, family: str) -> Path:
    """A small single-file checkpoint whose tensor names follow the original (non-diffusers) layout."""
    t = torch.zeros
    tensors: dict[str, torch.Tensor] = {"first_stage_model.encoder.conv_in.weight": t(4, 3, 3, 3)}
    unet = "model.diffusion_model."
    if family in ("sd1", "sd2"):
        width = 768 if family == "sd1" else 1024
        tensors[f"{unet}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = t(8, width)
        tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" if family == "sd1"
                else "cond_stage_model.model.token_embedding.weight"] = t(4, 4)
    elif family == "sdxl":
        tensors[f"{unet}input_blocks.1.0.in_layers.0.weight"] = t(8)
        tensors[f"{unet}label_emb.0.0.weight"] = t(8, 8)
        tensors["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = t(8)
    elif family == "sd3":
        tensors[f"{unet}joint_blocks.0.x_block.attn.qkv.weight"] = t(8, 8)
    elif family == "flux":
        tensors["double_blocks.0.img_attn.qkv.weight"] = t(8, 8)
        tensors["single_blocks.0.linear1.weight"] = t(8, 8)
    else:
        tensors = {"some.random.layer.weight": t(3, 3)}
    save_file(tensors, str(path))
    return path


def test_import_diffusers_folder_records_version_and_audit(database_url: str, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    with session_scope(database_url) as db:
        version = models_service.import_model(db, source=tiny_dirs["sd1"], name="tiny-sd1", actor=ACTOR, store_root=store)
        content_hash, path = version.content_hash, Path(version.path)
    assert len(content_hash) == 64
    assert path == store / content_hash and (path / "model_index.json").exists()
    models, versions, actions = _rows(database_url)
    assert (models, versions) == (1, 1)
    assert actions == ["model.import"]
    with session_scope(database_url) as db:
        info = models_service.describe(db, name="tiny-sd1")
        entry = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "model.import")).one()
    assert info["family"] == "sd1" and info["versions"][0]["content_hash"] == content_hash
    details = json.loads(entry.details)
    assert details["content_hash"] == content_hash and details["family"] == "sd1"


def test_same_weights_twice_make_no_second_copy(sqlite_url: str, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    elsewhere = _copy(tiny_dirs["sd1"], tmp_path / "copy-of-sd1")
    with session_scope(sqlite_url) as db:
        first = models_service.import_model(db, source=tiny_dirs["sd1"], name="a", actor=ACTOR, store_root=store)
        second = models_service.import_model(db, source=elsewhere, name="b", actor=ACTOR, store_root=store)
        assert first.content_hash == second.content_hash and first.path == second.path
    assert [p.name for p in ModelStore(store).entries()] == [first.content_hash]


def test_identity_is_the_tensors_not_the_container(tmp_path: Path) -> None:
    tensors = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.arange(12.0).reshape(3, 4)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata={"note": "same tensors, other header"})
    changed = {key: value + 1 for key, value in tensors.items()}
    save_file(changed, str(tmp_path / "c.safetensors"))
    store = ModelStore(tmp_path / "store")
    a, b, c = (store.inspect(tmp_path / f"{n}.safetensors").content_hash for n in "abc")
    assert a == b != c


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_family_detected_from_diffusers_config(tmp_path: Path, tiny_dirs, family: str) -> None:  # type: ignore[no-untyped-def]
    assert ModelStore(tmp_path).inspect(tiny_dirs[family]).family == family


def test_sd2_detected_from_its_text_width(tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_dirs["sd1"], tmp_path / "sd2")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 1024
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    assert ModelStore(tmp_path / "store").inspect(folder).family == "sd2"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sd3", "flux"])
def test_family_detected_from_single_file_checkpoint(tmp_path: Path, family: str) -> None:
    path = _ldm_checkpoint(tmp_path / f"{family}.safetensors", family)
    inspection = ModelStore(tmp_path / "store").inspect(path)
    assert (inspection.family, inspection.format) == (family, "safetensors")


def test_single_file_import_stores_the_file(sqlite_url: str, tmp_path: Path) -> None:
    path = _ldm_checkpoint(tmp_path / "model.safetensors", "sdxl")
    with session_scope(sqlite_url) as db:
        version = models_service.import_model(db, source=path, name="xl", actor=ACTOR, store_root=tmp_path / "store")
        assert version.config["format"] == "safetensors"
        assert (Path(version.path) / "model.safetensors").read_bytes() == path.read_bytes()


def test_unknown_architecture_refused_with_what_was_found(sqlite_url: str, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    path = _ldm_checkpoint(tmp_path / "odd.safetensors", "unknown")
    with pytest.raises(InvalidInput, match=r"odd.safetensors: unknown architecture.*some.random.layer.weight"):
        ModelStore(tmp_path / "store").inspect(path)
    folder = _copy(tiny_dirs["sd1"], tmp_path / "odd")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with session_scope(sqlite_url) as db, pytest.raises(InvalidInput, match="unknown architecture.*KandinskyPipeline"):
        models_service.import_model(db, source=folder, name="odd", actor=ACTOR, store_root=tmp_path / "store")
    assert _rows(sqlite_url) == (0, 0, [])


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_weights_refused_naming_the_file(database_url: str, tmp_path: Path, tiny_dirs, cut: str) -> None:  # type: ignore[no-untyped-def]
    folder = _copy(tiny_dirs["sd1"], tmp_path / "broken")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:5] if cut == "header" else data[: len(data) // 2])
    store = tmp_path / "store"
    with session_scope(database_url) as db, pytest.raises(InvalidInput, match=r"unet/diffusion_pytorch_model.safetensors: corrupt"):
        models_service.import_model(db, source=folder, name="broken", actor=ACTOR, store_root=store)
    assert _rows(database_url) == (0, 0, [])
    assert list(ModelStore(store).entries()) == []


def test_pickle_checkpoint_needs_allow_pickle(sqlite_url: str, tmp_path: Path) -> None:
    source = _ldm_checkpoint(tmp_path / "m.safetensors", "sd1")
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(source))}, str(ckpt))
    store = tmp_path / "store"
    with session_scope(sqlite_url) as db, pytest.raises(InvalidInput, match=r"model.ckpt: .*pickle.*arbitrary code.*--allow-pickle"):
        models_service.import_model(db, source=ckpt, name="pickled", actor=ACTOR, store_root=store)
    assert _rows(sqlite_url) == (0, 0, [])
    with session_scope(sqlite_url) as db:
        version = models_service.import_model(
            db, source=ckpt, name="pickled", actor=ACTOR, store_root=store, allow_pickle=True
        )
        # Same tensors as the safetensors file: same identity, whatever the container.
        assert version.content_hash == ModelStore(store).inspect(source).content_hash
    with session_scope(sqlite_url) as db:  # entries join the chain when their transaction commits
        entry = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "model.import")).one()
        details = json.loads(entry.details)
        assert details["allow_pickle"] is True and details["format"] == "ckpt"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("runwayml/stable-diffusion-v1-5", "looks like a Hugging Face hub id"),
        ("https://huggingface.co/x/y/resolve/main/model.safetensors", "is a URL; latentops never downloads"),
        ("hf://stabilityai/sdxl", "is a URL"),
        ("/nonexistent/folder", "does not exist"),
    ],
)
def test_hub_ids_and_urls_refused(sqlite_url: str, tmp_path: Path, source: str, message: str) -> None:
    with session_scope(sqlite_url) as db, pytest.raises(InvalidInput, match=message):
        models_service.import_model(db, source=source, name="remote", actor=ACTOR, store_root=tmp_path / "store")
    assert _rows(sqlite_url) == (0, 0, [])


def test_name_collision_and_bad_names_refused(sqlite_url: str, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    with session_scope(sqlite_url) as db:
        models_service.import_model(db, source=tiny_dirs["sd1"], name="taken", actor=ACTOR, store_root=store)
    with session_scope(sqlite_url) as db, pytest.raises(Conflict, match="'taken' already exists"):
        models_service.import_model(db, source=tiny_dirs["flux"], name="taken", actor=ACTOR, store_root=store)
    with session_scope(sqlite_url) as db, pytest.raises(InvalidInput, match="name: 'Bad Name'"):
        models_service.import_model(db, source=tiny_dirs["flux"], name="Bad Name", actor=ACTOR, store_root=store)
    assert _rows(sqlite_url)[:2] == (1, 1)
    assert len(list(ModelStore(store).entries())) == 1


def test_remove_is_soft_and_audited(database_url: str, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    with session_scope(database_url) as db:
        version = models_service.import_model(db, source=tiny_dirs["sd1"], name="gone", actor=ACTOR, store_root=store)
        path = Path(version.path)
    with session_scope(database_url) as db:
        models_service.remove_model(db, name="gone", actor=ACTOR)
    with session_scope(database_url) as db:
        assert models_service.list_models(db) == []
        assert [m.name for m in models_service.list_models(db, include_removed=True)] == ["gone"]
        assert models_service.describe(db, name="gone")["removed_at"] is not None
        with pytest.raises(NotFound):
            models_service.get_version(db, name="gone")
        with pytest.raises(NotFound):
            models_service.remove_model(db, name="gone", actor=ACTOR)
    assert path.exists()
    assert _rows(database_url)[2] == ["model.import", "model.remove"]


def test_models_commands_end_to_end(cli, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    imported = cli("models", "import", str(tiny_dirs["sd3"]), "--name", "tiny-sd3", "--json")
    assert imported.returncode == 0, imported.stderr
    info = json.loads(imported.stdout)
    assert info["family"] == "sd3" and info["version"] == 1
    listed = cli("models", "list", "--json")
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["tiny-sd3"]
    shown = cli("models", "show", "tiny-sd3")
    assert info["content_hash"] in shown.stdout
    again = cli("models", "import", str(tiny_dirs["sd3"]), "--name", "tiny-sd3")
    assert again.returncode == 1 and "Conflict: name: a model named 'tiny-sd3' already exists" in again.stderr
    hub = cli("models", "import", "stabilityai/stable-diffusion-3-medium", "--name", "sd3")
    assert hub.returncode == 1 and "hub id" in hub.stderr and "Traceback" not in hub.stderr
    assert cli("models", "remove", "tiny-sd3").returncode == 0
    assert cli("models", "list", "--json").stdout.strip() == ""


def test_import_sets_the_label_and_owner_team_and_refuses_unknown_ones(sqlite_url: str, tmp_path: Path, tiny_dirs) -> None:  # type: ignore[no-untyped-def]
    from latentops.platform.services import users

    store = tmp_path / "store"
    with session_scope(sqlite_url) as db:
        users.get_or_create_team(db, name="vision", actor=ACTOR)
    with (pytest.raises(InvalidInput, match=r"^sensitivity: 'topsecret' is not a label .*; choose one of internal, public, restricted$"),
          session_scope(sqlite_url) as db):
        models_service.import_model(db, source=tiny_dirs["sd1"], name="m", actor=ACTOR, store_root=store, sensitivity="topsecret")
    with (pytest.raises(InvalidInput, match=r"^owner_team: no team named 'visoin'; existing teams: vision$"),
          session_scope(sqlite_url) as db):
        models_service.import_model(db, source=tiny_dirs["sd1"], name="m", actor=ACTOR, store_root=store, owner_team="visoin")
    assert _rows(sqlite_url)[:2] == (0, 0) and not store.exists()  # refused before anything was stored
    with session_scope(sqlite_url) as db:
        models_service.import_model(db, source=tiny_dirs["sd1"], name="m", actor=ACTOR, store_root=store,
                                    sensitivity="Restricted", owner_team="vision")
        info = models_service.describe(db, name="m")
    assert info["sensitivity"] == "restricted" and info["owner_team"] == "vision"
