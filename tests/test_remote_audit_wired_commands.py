"""Commands wired to the server by the remote-CLI audit of every command: ``models import``,
``datasets submit/list/show`` and ``generate``, against a real API server and (for generation) a
real worker, printing what the same commands print locally.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from api_helpers import api_server, make_user
from generation_helpers import catalogue, tiny_source
from PIL import Image

from latentops.core.settings import Settings

SPEC = "name: shapes\nmodel: tiny\nper_class: 2\nsteps: 1\nbatch_size: 2\nclasses:\n  - name: square\n    prompts: [\"a red square\"]\n"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_remote_model_import_and_datasets_go_through_the_server(  # type: ignore[no-untyped-def]
        queue_settings: Settings, cli, source: Path, tmp_path: Path) -> None:
    admin = make_user(queue_settings.database_url, "dave@example.com", "admin", "ops")
    shutil.copytree(source, queue_settings.home / "imports" / "tiny")  # the server's import folder
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    client = {"LATENTOPS_HOME": str(tmp_path / "client"), "LATENTOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"}
    with api_server(tmp_path / "uvicorn.log") as (server, _):
        def remote(*args: str):  # type: ignore[no-untyped-def]
            return cli("--server", server, "--token", admin, *args, env=client)

        imported = remote("models", "import", "tiny", "--name", "tiny", "--json")
        assert imported.returncode == 0, imported.stderr
        found = json.loads(imported.stdout)
        local = json.loads(cli("models", "import", str(source), "--name", "tiny-here", "--json").stdout)
        assert set(found) == set(local)
        assert (found["name"], found["version"], found["family"], found["path"]) == ("tiny", 1, "sd1", None)
        assert found["content_hash"] == local["content_hash"]  # the same weights, imported on the server
        text = remote("models", "import", "tiny", "--name", "tiny-two")
        assert text.stdout.strip() == f"imported tiny-two v1 (sd1, {found['format']}) sha256 {found['content_hash'][:16]}"
        again = remote("models", "import", "tiny", "--name", "tiny")
        assert (again.returncode, again.stderr.strip()) == (
            1, "Conflict: name: a model named 'tiny' already exists; choose another name")
        outside = remote("models", "import", "../elsewhere", "--name", "x")
        assert outside.returncode == 1 and outside.stderr.startswith("InvalidInput: source: '../elsewhere' leaves")

        queued = remote("datasets", "submit", "--spec", str(spec), "--json")
        assert queued.returncode == 0, queued.stderr
        ids = json.loads(queued.stdout)
        assert set(ids) == {"dataset_id", "job_id"}
        listed = json.loads(remote("datasets", "list", "--json").stdout)
        here = json.loads(cli("datasets", "list", "--json").stdout)  # the same database, read locally
        assert [r["id"] for r in listed] == [r["id"] for r in here] == [ids["dataset_id"]]
        assert set(listed[0]) == set(here[0]) and listed[0]["path"] is None
        assert {k: v for k, v in listed[0].items() if k != "path"} == {k: v for k, v in here[0].items() if k != "path"}
        shown = remote("datasets", "show", str(ids["dataset_id"]), "--json")
        assert json.loads(shown.stdout) == listed[0]
        hidden = remote("datasets", "show", "999")
        assert (hidden.returncode, hidden.stderr.strip()) == (1, "NotFound: dataset: no dataset with id 999")


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_remote_generate_follows_the_job_and_writes_the_released_images(  # type: ignore[no-untyped-def]
        queue_settings: Settings, cli, source: Path, start_worker, tmp_path: Path) -> None:
    catalogue(queue_settings, source)
    alice = make_user(queue_settings.database_url, "alice@example.com", "submitter", "design")
    client = {"LATENTOPS_HOME": str(tmp_path / "client"), "LATENTOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"}
    start_worker("gpu")
    out = tmp_path / "out"
    with api_server(tmp_path / "uvicorn.log") as (server, _):
        def remote(*args: str):  # type: ignore[no-untyped-def]
            return cli("--server", server, "--token", alice, *args, env=client)

        done = remote("generate", "--model", "tiny", "--prompt", "a green triangle", "-n", "2", "--seed", "3",
                      "--steps", "1", "--out", str(out), "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        payload = json.loads(done.stdout)
        local = cli("generate", "--model", "tiny", "--prompt", "a green triangle", "-n", "1", "--steps", "1",
                    "--out", str(tmp_path / "here"), "--json")
        assert local.returncode == 0, local.stderr[-2000:]
        assert set(payload) == set(json.loads(local.stdout))
        assert payload["released"] == 2 and [i["seed"] for i in payload["images"]] == [3, 4]
        assert payload["files"] == [str(out / f"asset-{i['asset_id']}-seed{i['seed']}.png") for i in payload["images"]]
        assert all(Image.open(path).size == (32, 32) for path in payload["files"])

        denied = remote("generate", "--model", "tiny", "--prompt", "a naked person", "--out", str(tmp_path / "no"))
        assert denied.returncode == 1 and denied.stderr.startswith("PolicyDenied: ") and "prompt." in denied.stderr
        assert not (tmp_path / "no").exists()
