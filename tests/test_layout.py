"""The package layout: one namespace over the card's folders, and the standard library unshadowed."""

from __future__ import annotations

import importlib
import subprocess
import sys

from conftest import REPO


def test_standard_library_platform_is_not_shadowed_from_the_repository_root() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.python_version())"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ".".join(str(part) for part in sys.version_info[:3])
    assert not (REPO / "platform" / "__init__.py").exists()


def test_top_level_folders_import_as_one_namespace() -> None:
    for name, folder in [("latentops.platform.database", "platform"), ("latentops.core.settings", "core"),
                         ("latentops.governance.audit", "governance"),
                         ("latentops.pipelines", "pipelines"), ("latentops.migrations", "migrations")]:
        module = importlib.import_module(name)
        location = getattr(module, "__file__", None) or next(iter(module.__path__))
        assert str(location).startswith(str(REPO / folder)), f"{name} resolved to {location}"


def test_card_layout_is_present() -> None:
    for entry in ["pyproject.toml", "core", "platform", "governance", "pipelines", "migrations", "dashboards", "deploy",
                  "tests", "README.md", "Makefile", ".ci/run", "bench"]:
        assert (REPO / entry).exists(), f"{entry} is missing from the repository root"


def test_cli_and_api_start_without_loading_machine_learning_libraries() -> None:
    # `latentops --help`, every CLI command and the API must start fast; torch, diffusers and
    # open_clip load only in the code paths that run models.
    probe = (
        "import sys\n"
        "import latentops.platform.cli.main\n"
        "from latentops.platform.api.app import create_app\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'open_clip', 'mlflow', 'cv2') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"
