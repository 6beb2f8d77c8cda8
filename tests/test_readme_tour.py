"""README's "A tour of the CLI" runs top to bottom on a fresh home, exactly as written.

The block between ``<!-- tour:begin -->`` and ``<!-- tour:end -->`` is run by bash (``-euo
pipefail``: any command that fails stops it) in a folder holding what the tour says a user
brings: ``photos/``, ``protected-works/`` and ``digits-aug.yaml``. ``HOME`` is the test's, so
``~/.latentops`` is a fresh home; nothing else is set up beforehand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

SPEC = """name: digits-aug
model: digits-demo
per_class: 2
seed: 0
steps: 4
classes:
  - name: "7"
    prompts: ["a handwritten digit seven"]
  - name: "1"
    prompts: ["a handwritten digit one"]
"""


def tour() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- tour:begin -->\n```bash\n(.*?)```\n<!-- tour:end -->", text, re.DOTALL)
    assert found, "README.md has no tour block between <!-- tour:begin --> and <!-- tour:end -->"
    return found.group(1)


def _bring(folder: Path) -> None:
    """What the tour says a user brings."""
    (folder / "photos").mkdir()
    for i in range(4):
        picture = Image.new("RGB", (64, 64), (240, 240, 240))
        ImageDraw.Draw(picture).ellipse((8 + 4 * i, 8, 48 + 2 * i, 56), fill=(200, 40 + 30 * i, 40))
        picture.save(folder / "photos" / f"p{i}.png")
    (folder / "protected-works").mkdir()
    work = Image.new("RGB", (256, 256), (20, 20, 120))
    ImageDraw.Draw(work).rectangle((40, 40, 200, 200), fill=(250, 200, 0))
    work.save(folder / "protected-works" / "poster.png")
    (folder / "digits-aug.yaml").write_text(SPEC)


def test_the_readme_tour_runs_top_to_bottom_on_a_fresh_home(tmp_path: Path) -> None:
    folder, user_home = tmp_path / "work", tmp_path / "user"
    folder.mkdir()
    user_home.mkdir()
    _bring(folder)
    (folder / "tour.sh").write_text(tour())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_")}
    env.update(HOME=str(user_home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200")
    done = subprocess.run(["bash", "-euo", "pipefail", "tour.sh"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=1200, check=False)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    home = user_home / ".latentops"
    assert (home / "latentops.db").exists()
    # Your own model, fine-tuned from the console for the team whose grant it holds, then used.
    assert (folder / "lora-house" / "pytorch_lora_weights.safetensors").exists()
    assert "adapter house-style-lora v1" in done.stdout
    # Images are screened (the bundled nudity detector holds some of the tiny digits); what was
    # released is written, and the screen and provenance commands ran on one of them.
    assert list((folder / "out").glob("asset-*.png")) and list((folder / "out-house").glob("asset-*.png"))
    assert ": verified" in done.stdout and "audit trail intact" in done.stdout
    # The dataset loads in one line of Hugging Face datasets, with every image the run reported.
    from datasets import load_dataset

    reported = re.search(r"dataset 1: (\d+) images in", done.stdout)
    assert reported and int(reported.group(1)) > 0
    loaded = load_dataset("imagefolder", data_dir=str(folder / "digits-aug"))
    assert sum(len(split) for split in loaded.values()) == int(reported.group(1))
    # The evidence export holds the tour's own story.
    entries = [json.loads(line) for line in (folder / "evidence.jsonl").read_text().splitlines() if line.strip()]
    actions = {entry["action"] for entry in entries}
    assert {"model.import", "model.grant", "lora.register", "policy.data.edit", "dataset.create", "audit.verify"} <= actions
