"""The submitter's portal pages in a real browser (Debian's chromium through Playwright, against the
real app on loopback): a fine-tune watched live to its adapter, generating with that adapter, the
generation page, presets at the base model's resolution, refusals shown on the form, held images
counted, and the Generate button following the live prompt check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import make_user, team_id
from job_helpers import queued_job
from playwright.sync_api import expect
from portal_helpers import login, new_page, serving, shot, tiny_public_model

from latentops.platform.database import session_scope
from latentops.platform.tables import Asset, Job

pytestmark = pytest.mark.slow

TINY_RECIPE = ('{"steps": 4, "rank": 4, "resolution": 32, "checkpoint_every": 4, "samples": false, "lr": 0.001, '
               '"validation_every": 2, "validation_steps": 2, "validation_split": 1}')


@pytest.fixture
def portal_with_queue(queue_settings, home: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app with the test's database and Redis and a tiny public model; no worker."""
    from latentops.platform.api.app import create_app

    tiny_public_model(queue_settings, home)
    with serving(create_app(queue_settings)) as url:
        yield url


def _pictures(home: Path, side: int = 96) -> list[str]:
    from PIL import Image

    paths = []
    for index, colour in enumerate([(200, 40, 40), (40, 160, 60), (30, 60, 200)]):
        path = home / f"pattern-{index}.png"
        Image.new("RGB", (side, side), colour).save(path)
        paths.append(str(path))
    return paths


def _fill_finetune(page, pictures: list[str], recipe: str | None) -> None:  # type: ignore[no-untyped-def]
    page.goto("/jobs/new")
    page.get_by_label("Base model").select_option("tiny")
    page.get_by_label("Instance prompt").fill("a photo of sks pattern")
    page.locator("#ft-verdict").get_by_role("status").wait_for()
    page.get_by_label("Instance images").set_input_files(pictures)
    if recipe is not None:
        page.get_by_text("Recipe values").click()
        page.get_by_label("Override the preset").fill(recipe)
    page.get_by_label("We hold a licence for these images").check()
    page.get_by_label("People shown consented to this use").check()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fine_tune_page_updates_live_names_its_adapter_and_generates_with_it(  # type: ignore[no-untyped-def]
        portal_with_worker: str, browser, database_url: str, home: Path, queue_settings) -> None:
    from latentops.pipelines import tiny
    from latentops.platform.services import models as models_service

    make_user(database_url, "alice@example.com", "submitter", "design")
    with session_scope(database_url) as session:  # a second base model, for the adapter's model to stand out
        models_service.import_model(session, source=tiny.create("sd1", home / "imports" / "tiny-b"), name="tiny-b",
                                    actor="system", store_root=queue_settings.model_store, sensitivity="public")
    page = new_page(browser, portal_with_worker)
    login(page, "alice@example.com")
    _fill_finetune(page, _pictures(home), TINY_RECIPE)
    page.get_by_role("button", name="Submit fine-tune").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    # No reload from here: the whole view (state, loss, log, validation images) refreshes itself.
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=600_000)
    expect(page.locator("#job-live")).to_have_attribute("data-finished", "true")
    assert page.locator("#job-live").get_attribute("hx-trigger") is None  # polling stopped
    # One of the three pictures is held out: its loss at steps 2 and 4 is drawn beside the training loss.
    expect(page.get_by_role("img", name="Training loss curve and held-out loss")).to_be_visible()
    assert len(page.locator("#held-out-loss").get_attribute("points").split()) == 2
    expect(page.locator("#loss-chart").locator("..")).to_contain_text("held-out loss (2 evaluations)")
    expect(page.locator("#job-log li").first).to_be_visible()
    assert "succeeded" in page.locator("#job-log").inner_text()
    thumbnails = page.locator("#validation-images img")
    expect(thumbnails.first).to_be_visible()
    assert thumbnails.count() >= 1
    # Every validation thumbnail loads (the portal serves the job's released images).
    page.wait_for_function("() => [...document.querySelectorAll('#validation-images img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert page.request.get(thumbnails.first.get_attribute("src")).status == 200
    adapter = page.locator("#job-adapter")
    expect(adapter).to_contain_text("tiny-lora@1")
    shot(page, "submitter-finetune-live-done")

    page.get_by_role("link", name="Generate with this adapter").click()
    page.wait_for_url("**/generate?*")
    assert page.get_by_label("LoRA adapter").input_value() == "tiny-lora@1"
    assert page.get_by_label("Model").input_value() == "tiny"
    # Choosing the adapter again after another model selects the adapter's own base model.
    page.get_by_label("Model").select_option("tiny-b")
    page.get_by_label("LoRA adapter").select_option("")
    page.get_by_label("LoRA adapter").select_option("tiny-lora@1")
    assert page.get_by_label("Model").input_value() == "tiny"
    page.get_by_label("Prompt", exact=True).fill("a photo of sks pattern on a table")
    expect(page.locator("#verdict").get_by_role("status")).to_contain_text("Allowed by policy")
    page.get_by_label("Images").fill("2")
    page.get_by_label("Steps").fill("2")
    shot(page, "submitter-generate-with-adapter")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_url(re.compile(r".*/generate/\d+$"))
    generation_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=300_000)
    facts = page.get_by_label("Generation parameters")
    expect(facts).to_contain_text("a photo of sks pattern on a table")
    expect(facts).to_contain_text("tiny-lora@1")
    with session_scope(database_url) as session:
        assets = session.query(Asset).filter(Asset.job_id == generation_id).all()
        released = sum(a.status == "released" for a in assets)
        held = len(assets) - released
        assert len(assets) == 2 and session.get(Job, generation_id).params["lora"] == "tiny-lora@1"
        assert session.get(Job, job_id).result["adapter"] == "tiny-lora"
    expect(page.get_by_label("Released images").locator("img")).to_have_count(released)
    if held:
        expect(page.locator("#generation-held")).to_contain_text(f"{held} image")
    shot(page, "submitter-generation-done")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_presets_follow_the_model_and_a_cancelled_job_shows_no_eta(  # type: ignore[no-untyped-def]
        portal_with_worker: str, browser, database_url: str, home: Path) -> None:
    make_user(database_url, "alice@example.com", "submitter", "design")
    page = new_page(browser, portal_with_worker)
    login(page, "alice@example.com")
    page.goto("/jobs/new")
    page.get_by_label("Base model").select_option("tiny")
    options = page.get_by_label("Preset", exact=True).locator("option").all_inner_texts()
    assert options and all(text.endswith("32 px") for text in options), options
    assert not any("512" in text for text in options)
    # The default preset as it is, on the tiny model: the ETA the job shows is the tiny model's.
    _fill_finetune(page, _pictures(home), None)
    assert page.get_by_label("Preset", exact=True).input_value() == "standard"
    page.get_by_role("button", name="Submit fine-tune").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    eta = page.locator("#job-status .eta")
    expect(eta).to_be_visible(timeout=300_000)
    seconds = int(re.search(r"about (\d+) s left", eta.inner_text()).group(1))  # type: ignore[union-attr]
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job.params["config"]["resolution"] == 32 and job.params["config"]["steps"] == 500
    assert seconds < 600, f"ETA {seconds} s for 500 steps of a 32 px model"
    shot(page, "submitter-finetune-eta")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=120_000)
    expect(page.locator("#job-status")).not_to_contain_text("s left")
    assert page.locator("#job-status .eta").count() == 0
    page.reload()
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert page.locator("#job-status .eta").count() == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_refused_upload_is_shown_on_the_form_with_what_was_entered(  # type: ignore[no-untyped-def]
        portal_with_queue: str, browser, database_url: str, home: Path) -> None:
    make_user(database_url, "alice@example.com", "submitter", "design")
    page = new_page(browser, portal_with_queue)
    login(page, "alice@example.com")
    _fill_finetune(page, _pictures(home, side=16), '{"steps": 3}')
    page.get_by_role("button", name="Submit fine-tune").click()
    alert = page.locator("#form-error")
    expect(alert).to_be_visible()
    text = alert.inner_text()
    assert "pattern-0.png" in text and "16" in text, text
    assert str(home) not in text and "/uploads/" not in text and "/tmp/" not in text, text
    # The navigation is there, and what was entered is kept (files must be chosen again).
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs")).to_be_visible()
    assert page.get_by_label("Instance prompt").input_value() == "a photo of sks pattern"
    assert page.get_by_label("Base model").input_value() == "tiny"
    assert page.get_by_label("Override the preset").input_value() == '{"steps": 3}'
    assert page.get_by_label("We hold a licence for these images").is_checked()
    assert "Choose the images again" in text
    shot(page, "submitter-upload-refused")


def _png(path: Path) -> str:
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 30, 200)).save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _asset(job_id: int, status: str, purpose: str, path: Path, team: int) -> Asset:
    digest = _png(path)
    return Asset(job_id=job_id, team_id=team, purpose=purpose, seed=0, prompt_ref="0" * 64, content_hash=digest,
                 path=str(path), width=32, height=32, status=status)


def test_held_images_are_counted_and_finished_jobs_show_no_eta(  # type: ignore[no-untyped-def]
        portal: str, browser, sqlite_url: str, home: Path) -> None:
    from latentops.core.tables.jobs import JobState

    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    design = team_id(sqlite_url, "design")
    with session_scope(sqlite_url) as session:
        finetune = queued_job(session, kind="finetune", actor="alice@example.com", team_id=design, params={
            "config": {"instance_prompt": "a photo of sks mug"}, "version_id": 1, "instance_dir": str(home / "in"),
            "adapter_name": "mug-lora", "weights": {"content_hash": "0" * 64, "path": str(home / "weights"),
                                                    "family": "sd1", "format": "diffusers"}})
        generation = queued_job(session, kind="generate", actor="alice@example.com", team_id=design, params={
            "model": "tiny", "lora": None, "prompts": ["a red apple"], "negative_prompt": None, "images_per_prompt": 3,
            "seed": 7, "steps": 12, "guidance_scale": 4.5, "team": "design", "actor": "alice@example.com"})
        cancelled = queued_job(session, kind="diagnostics", params={}, actor="alice@example.com", team_id=design)
        session.flush()
        for job in (finetune, generation):
            job.state = JobState.SUCCEEDED
        cancelled.state = JobState.CANCELLED
        cancelled.progress = {"step": 5, "total": 100, "percent": 5.0, "eta_s": 2600.0}
        session.add_all([_asset(finetune.id, "quarantined", "validation", home / f"v{i}.png", design) for i in range(2)])
        session.add_all([_asset(generation.id, "released", "generation", home / "g0.png", design),
                         _asset(generation.id, "quarantined", "generation", home / "g1.png", design),
                         _asset(generation.id, "quarantined", "generation", home / "g2.png", design)])
        ids = finetune.id, generation.id, cancelled.id
    page = new_page(browser, portal)
    login(page, "alice@example.com")
    page.goto(f"/jobs/{ids[0]}")
    expect(page.locator("#validation-held")).to_have_text("2 validation images held for review.")
    assert "No validation images" not in page.inner_text("main")
    shot(page, "submitter-validation-held")

    response = page.goto(f"/generate/{ids[1]}")
    assert response is not None and response.status == 200
    facts = page.get_by_label("Generation parameters")
    for value in ("a red apple", "tiny", "3", "7", "12", "4.5"):
        expect(facts).to_contain_text(value)
    expect(page.get_by_label("Released images").locator("img")).to_have_count(1)
    page.wait_for_function("() => document.querySelector('[aria-label=\"Released images\"] img').naturalWidth > 0")
    expect(page.locator("#generation-held")).to_contain_text("2 images held for review")
    shot(page, "submitter-generation-page")

    page.goto(f"/jobs/{ids[2]}")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert "s left" not in page.locator("#job-status").inner_text()


def test_generate_button_follows_the_prompt_check_and_jobs_links_to_the_forms(  # type: ignore[no-untyped-def]
        portal: str, browser, sqlite_url: str) -> None:
    make_user(sqlite_url, "alice@example.com", "submitter", "design")
    page = new_page(browser, portal)
    login(page, "alice@example.com")
    page.goto("/generate")
    button = page.get_by_role("button", name="Generate", exact=True)
    expect(button).to_be_enabled()
    page.get_by_label("Prompt", exact=True).fill("Mickey Mouse riding a skateboard")
    expect(page.locator("#verdict").get_by_role("alert")).to_contain_text("Blocked by policy")
    expect(button).to_be_disabled()
    shot(page, "submitter-generate-disabled")
    page.get_by_label("Prompt", exact=True).fill("a red apple on a wooden table")
    expect(page.locator("#verdict").get_by_role("status")).to_contain_text("Allowed by policy")
    expect(button).to_be_enabled()

    page.goto("/jobs")
    assert page.get_by_label("Job kind").count() == 0
    assert page.get_by_role("button", name="Submit job").count() == 0
    starters = page.locator("#job-starters")
    expect(starters.get_by_role("link", name="Fine-tune a model")).to_have_attribute("href", "/jobs/new")
    expect(starters.get_by_role("link", name="Generate images")).to_have_attribute("href", "/generate")
    assert starters.get_by_role("link", name="Build a dataset").count() == 0  # a submitter builds no datasets
    page.get_by_role("link", name="Generate images").click()
    page.wait_for_url("**/generate")
    shot(page, "submitter-jobs-starters")
