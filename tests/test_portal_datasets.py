"""The data scientist's portal pages in a real browser (Debian's chromium through Playwright, against
the real app on loopback): a dataset built from a spec by a real worker, watched live, its card
rendered safely, its thumbnails and manifest shown before download; spec errors shown on the form
with the text kept; a dataset whose job runs shows the job's state.
"""

from __future__ import annotations

import json
import re

import pytest
from api_helpers import make_user, team_id
from job_helpers import queued_job
from playwright.sync_api import expect
from portal_helpers import login, new_page, shot

from latentops.platform.database import session_scope
from latentops.platform.tables import Dataset

pytestmark = pytest.mark.slow

LONG_WORD = "unbroken" * 60  # 480 characters without a space: the card must wrap it, not widen the page

# The smallest spec that still builds a dataset: one class, two images, two denoising steps.
SPEC = f"""name: tiny-sevens
model: tiny
per_class: 2
seed: 0
steps: 2
guidance: 4.0
filters: {{dedupe_distance: null}}
description: "Sevens for a smoke test <script>alert('card')</script> {LONG_WORD}"
classes:
  - name: "7"
    prompts: ["a handwritten digit seven"]
"""

BROKEN_YAML = """name: broken
model: tiny
classes:
  - name: "7"
    prompts: ["a handwritten digit seven"
per_class: 2
"""

SMALL_SPLIT = """name: tiny-split
model: tiny
per_class: 3
split: {validation: 0.1}
classes:
  - name: "7"
    prompts: ["a handwritten digit seven"]
"""


def _submit_spec(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("Spec (YAML)").fill(text)
    page.get_by_role("button", name="Queue dataset").click()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_data_scientist_builds_a_dataset_watches_it_and_reads_its_manifest(  # type: ignore[no-untyped-def]
        portal_with_worker: str, browser, database_url: str) -> None:
    make_user(database_url, "dana@example.com", "data_scientist", "research")
    page = new_page(browser, portal_with_worker)
    login(page, "dana@example.com")
    page.goto("/datasets")

    # A YAML error is shown on the form with its line and column; the text stays as typed.
    _submit_spec(page, BROKEN_YAML)
    error = page.locator("#spec-error")
    expect(error).to_contain_text("not valid YAML at line")
    assert re.search(r"line \d+, column \d+", error.inner_text())
    assert page.get_by_label("Spec (YAML)").input_value() == BROKEN_YAML.rstrip("\n") or \
        page.get_by_label("Spec (YAML)").input_value() == BROKEN_YAML
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    shot(page, "datasets-yaml-error")

    # A split that leaves too few training images per class is refused on the form, naming the field.
    _submit_spec(page, SMALL_SPLIT)
    expect(error).to_contain_text("split.validation")
    expect(error).to_contain_text("3 images per class")
    assert "split: {validation: 0.1}" in page.get_by_label("Spec (YAML)").input_value()
    shot(page, "datasets-split-refused")

    _submit_spec(page, SPEC)
    page.wait_for_url(re.compile(r".*/datasets/\d+$"))
    dataset_id = int(page.url.rsplit("/", 1)[1])
    # No reload: the page follows the job until the dataset is ready.
    expect(page.locator("#dataset-state")).to_have_text("ready", timeout=600_000)
    assert page.locator("#dataset-live").get_attribute("hx-trigger") is None  # polling stopped

    thumbnails = page.locator("#dataset-thumbnails img")
    expect(thumbnails).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll('#dataset-thumbnails img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    manifest = page.locator("#dataset-manifest")
    expect(manifest).to_contain_text("tiny version 1")
    expect(manifest.get_by_role("table", name="Manifest files")).to_contain_text("metadata.jsonl")

    card = page.locator("#dataset-card")
    expect(card.get_by_role("heading", name="tiny-sevens")).to_be_visible()
    expect(card.get_by_role("table").first).to_be_visible()
    assert "# tiny-sevens" not in card.inner_text() and "|---|" not in card.inner_text()
    assert "<script>alert('card')</script>" in card.inner_text()  # shown as text, not run
    assert page.locator("#dataset-card script").count() == 0
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"page is {width[0]} px wide in a {width[1]} px window"
    shot(page, "dataset-ready")

    # The manifest loads as JSON from the link the page offers; the zip downloads.
    response = page.request.get(page.locator("#manifest-link").get_attribute("href"))
    assert response.status == 200
    document = json.loads(response.text())
    assert document["name"] == "tiny-sevens" and document["latentops:generation"]["images"] == 2
    with page.expect_download() as download:
        page.locator("#dataset-manifest").get_by_role("link", name="Download (zip)").click()
    assert download.value.suggested_filename == "tiny-sevens.zip"
    with session_scope(database_url) as session:
        assert session.get(Dataset, dataset_id).state == "ready"


def test_a_queued_dataset_shows_its_running_job(portal: str, browser, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    from latentops.core.tables.jobs import JobState

    make_user(sqlite_url, "dana@example.com", "data_scientist", "research")
    research = team_id(sqlite_url, "research")
    with session_scope(sqlite_url) as session:
        spec = {"name": "sevens", "model": "tiny", "per_class": 8, "classes": [{"name": "7", "prompts": ["a seven"]}]}
        row = Dataset(name="sevens", team_id=research, spec=spec, format="imagefolder", state="queued")
        session.add(row)
        session.flush()
        job = queued_job(session, kind="dataset", actor="dana@example.com", team_id=research, params={
            "spec": spec, "dataset_id": row.id, "out": "/nonexistent/sevens", "actor": "dana@example.com"})
        job.state = JobState.RUNNING
        job.progress = {"step": 3, "total": 8, "percent": 37.5, "eta_s": 12.0}
        row.job_id = job.id
        dataset_id, job_id = row.id, job.id
    page = new_page(browser, portal)
    login(page, "dana@example.com")
    page.goto(f"/datasets/{dataset_id}")
    expect(page.locator("#dataset-state")).to_have_text("running")
    expect(page.get_by_label("Job progress")).to_have_attribute("value", "37.5")
    page.goto("/datasets")
    expect(page.get_by_role("row", name=re.compile("sevens"))).to_contain_text("running")
    # The job ends (here: cancelled); the open page follows it without a reload and stops polling.
    page.goto(f"/datasets/{dataset_id}")
    with session_scope(sqlite_url) as session:
        from latentops.platform.tables import Job

        session.get(Job, job_id).state = JobState.CANCELLED
    expect(page.locator("#dataset-state")).to_have_text("cancelled")
    assert page.locator("#dataset-live").get_attribute("hx-trigger") is None
