"""The house's documentation matches the tree: every file or folder that docs/architecture.md and
the README's "Where things live" name exists, and the module size rule holds with only the
exceptions the architecture page names."""

from __future__ import annotations

import re

from conftest import REPO

LAYERS = ("", "core/", "platform/", "governance/", "pipelines/", "tests/", "docs/")
# `path/to/file.py`, `folder/`, `file.py` (a trailing ` name` after the path is a function's name)
PATH = re.compile(r"`([A-Za-z0-9_./<>-]+(?:/|\.py|\.md|\.rego|\.json|\.toml))(?:[ `])")
MAX_LINES = 450


def named_paths(text: str) -> list[str]:
    return [p for p in PATH.findall(text) if "<" not in p and not p.startswith(".")]


def resolves(path: str) -> bool:
    if any((REPO / f"{layer}{path}").exists() for layer in LAYERS):
        return True
    # a file named by itself (`lora.py`) somewhere in a layer
    return "/" not in path.rstrip("/") and any(next((REPO / layer).rglob(path), None) for layer in LAYERS[1:])


def where_things_live() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Where things live")
    return readme[start:readme.index("\n## ", start + 1)]


def test_path_pattern_finds_paths_and_rejects_words() -> None:
    assert named_paths("see `platform/services/jobs/` and `lora.py` then `make lint` or `a.b`") == [
        "platform/services/jobs/", "lora.py"]
    assert resolves("services/") and resolves("core/orm.py") and resolves("lora.py")
    assert not resolves("services/no_such_module.py") and not resolves("no_such_module.py")


def test_architecture_page_names_only_what_exists() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = named_paths(text)
    assert len(paths) > 20, paths
    missing = [p for p in paths if not resolves(p)]
    assert missing == [], f"docs/architecture.md names what the tree lacks: {missing}"


def test_readme_where_things_live_names_only_what_exists() -> None:
    section = where_things_live()
    paths = named_paths(section)
    assert len(paths) > 15, paths
    missing = [p for p in paths if not resolves(p)]
    assert missing == [], f"README's 'Where things live' names what the tree lacks: {missing}"
    for folder in ("core", "platform", "governance", "pipelines", "migrations", "tests", "bench", "docs"):
        assert f"`{folder}/`" in section, f"{folder}/ is not described"


def test_modules_stay_under_the_size_rule_or_are_named_exceptions() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    exceptions = set(named_paths(text[text.index("## Module size"):]))
    over = []
    for layer in ("core", "platform", "governance", "pipelines"):
        for module in sorted((REPO / layer).rglob("*.py")):
            relative = module.relative_to(REPO).as_posix()
            lines = len(module.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES and relative not in exceptions:
                over.append(f"{relative} ({lines})")
    assert over == [], f"modules over {MAX_LINES} lines that docs/architecture.md does not explain: {over}"
