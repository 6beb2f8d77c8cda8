"""``latentops screening import-clip --pretrained ARCH/TAG``: open_clip's published weights fetched
through its own loader from a Hugging Face cache, offline, then imported like a local file.

The cache is written here in the Hub's layout (``models--ORG--NAME/{blobs,snapshots,refs}``) under
the repository id open_clip's registry names for ``ViT-B-32/laion2b_s34b_b79k``. The checkpoint in
it is a tiny random-init model, so ``--config`` gives its shape; everything else is the real path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_screening import tiny_clip_files  # noqa: F401  (a fixture)

from latentops.core.errors import InvalidInput
from latentops.governance import clip
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry

NAME = "ViT-B-32/laion2b_s34b_b79k"
REPO_ID = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # open_clip's registry: hf_hub of that name
REVISION = "0" * 39 + "1"
FILE = "open_clip_pytorch_model.bin"

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # nothing database-specific


def offline(cache: Path, tmp_path: Path) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_clip_files: tuple[Path, Path]) -> tuple[Path, Path]:  # noqa: F811
    """A Hugging Face hub cache holding the checkpoint as the Hub client stores it; (cache, file)."""
    _config, weights = tiny_clip_files
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(weights.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True)
    shutil.copyfile(weights, blob)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot / FILE).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return cache, snapshot / FILE


def _imports(database_url: str) -> list[dict[str, object]]:
    with session_scope(database_url) as db:
        return [json.loads(d) for d in db.scalars(sa.select(AuditEntry.details)
                                                 .where(AuditEntry.action == "screening.clip.import"))]


@SQLITE
def test_pretrained_weights_come_from_the_hub_cache_and_import_like_a_local_file(  # type: ignore[no-untyped-def]
        cli, settings_env, database_url: str, hub_cache, tiny_clip_files, tmp_path: Path) -> None:  # noqa: F811
    cache, cached = hub_cache
    config, _weights = tiny_clip_files
    done = cli("screening", "import-clip", "--pretrained", NAME, "--config", str(config), "--json",
               env=offline(cache, tmp_path))
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    sha = hashlib.sha256(cached.read_bytes()).hexdigest()
    assert payload["arch"] == "ViT-B-32" and payload["sha256"] == sha and payload["pretrained"] == NAME
    assert REPO_ID in payload["fetched_from"]
    manifest = clip.clip_manifest(settings_env)
    assert manifest is not None and manifest["sha256"] == sha and manifest["arch"] == "ViT-B-32"
    assert manifest["source"] == str(cached)  # the file in the cache, revision in its path
    stored = clip.clip_dir(settings_env) / manifest["weights"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    assert _imports(database_url) == [{"arch": "ViT-B-32", "sha256": sha, "source": str(cached)}]
    assert clip.load_clip(settings_env) is not None  # the imported model builds from the home


@SQLITE
def test_a_checkpoint_missing_from_the_offline_cache_is_one_clear_error_and_nothing_is_imported(  # type: ignore[no-untyped-def]
        cli, settings_env, database_url: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    done = cli("screening", "import-clip", "--pretrained", NAME, env=offline(empty, tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("ServiceUnavailable: pretrained: could not fetch ViT-B-32/laion2b_s34b_b79k"), done.stderr
    assert REPO_ID in done.stderr and "--weights FILE --arch ViT-B-32" in done.stderr
    assert "Traceback" not in done.stderr
    assert clip.clip_manifest(settings_env) is None and not clip.clip_dir(settings_env).exists()
    assert _imports(database_url) == []


@SQLITE
def test_exactly_one_source_is_required(settings_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from latentops.platform.cli.main import app

    runner = CliRunner()
    neither = runner.invoke(app, ["screening", "import-clip"], env={"COLUMNS": "200"})
    both = runner.invoke(app, ["screening", "import-clip", "--weights", str(tmp_path / "w.pt"), "--arch", "ViT-B-32",
                               "--pretrained", NAME], env={"COLUMNS": "200"})
    for usage in (neither, both):
        assert usage.exit_code == 2 and "give exactly one of --weights FILE" in usage.output, usage.output
    assert not clip.clip_dir(settings_env).exists()


def test_unknown_names_are_refused_saying_how_to_list_the_valid_ones() -> None:
    for name, expected in [("ViT-Q-99/laion2b_s34b_b79k", "no weights for architecture 'ViT-Q-99'"),
                           ("ViT-B-32/no_such_tag", "no published weights tagged 'no_such_tag' (it has openai, "),
                           ("ViT-B-32", "is not ARCH/TAG")]:
        with pytest.raises(InvalidInput) as refused:
            clip.fetch_pretrained(name)
        assert expected in refused.value.detail and clip.LIST_HINT in refused.value.detail
    assert clip.LIST_HINT == "latentops screening import-clip --list-pretrained"
    names = clip.pretrained_names()
    assert NAME in names and all(name.count("/") == 1 for name in names)
