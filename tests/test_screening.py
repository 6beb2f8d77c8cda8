"""Content screening: CLIP concept scores from imported local weights, pluggable detectors, nsfwjs
in force by default, coverage per category, the policy's verdict with reasons, the loud
no-detector state, calibration and bad input."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image, ImageDraw

from latentops.core.errors import InvalidInput
from latentops.governance import calibration, nsfwjs, policy, screening
from latentops.governance.detectors import CATEGORIES
from latentops.governance.imagefile import MAX_PIXELS, load_image
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, ScreeningResult

UNCOVERED_BY_NSFWJS = ["minors", "violence", "self_harm", "hate", "weapons"]

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def picture(seed: int, size: int = 160) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(20):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(size // 12, size // 4, 2)
        draw.rectangle((int(x), int(y), int(x + w), int(y + h)), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random-init open_clip model (real BPE tokenizer) saved as config + state dict."""
    import open_clip
    import torch
    from open_clip import factory

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    factory._MODEL_CONFIGS["tiny-clip"] = TINY_CLIP
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return config, weights


@pytest.fixture
def no_default_nsfwjs(settings_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """No converted nsfwjs where screening looks by default (the venv may hold one)."""
    monkeypatch.setenv(nsfwjs.ENV_DIR, str(tmp_path / "no-nsfwjs"))
    return settings_env


@pytest.fixture(scope="session")
def nsfwjs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_nsfwjs import converted_nsfwjs

    return converted_nsfwjs(tmp_path_factory)


@pytest.fixture
def default_nsfwjs(settings_env, nsfwjs_folder: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A converted nsfwjs where screening looks by default, as `make install` leaves it."""
    monkeypatch.setenv(nsfwjs.ENV_DIR, str(nsfwjs_folder))
    return settings_env


@pytest.fixture
def with_clip(no_default_nsfwjs, database_url: str, tiny_clip_files, fresh_policy):  # type: ignore[no-untyped-def]
    settings_env = no_default_nsfwjs
    config, weights = tiny_clip_files
    with session_scope(database_url) as db:
        screening.import_clip(db, settings=settings_env, arch="tiny-clip", weights=weights, config=config, actor="cli:test")
    return settings_env


def test_import_clip_then_screen_scores_every_category_and_policy_decides(with_clip, database_url: str, tmp_path: Path) -> None:
    image = save(picture(1), tmp_path / "one.png")
    with session_scope(database_url) as db:
        outcome = screening.screen(db, settings=with_clip, image=image, name="one.png", actor="cli:test")
        result = db.get(ScreeningResult, outcome.result_id)
        assert result is not None and result.verdict == outcome.verdict
    with session_scope(database_url) as db:  # entries join the chain when their transaction commits
        actions = db.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)).all()
    assert set(outcome.scores) == set(CATEGORIES)
    assert all(0.0 <= v <= 1.0 for v in outcome.scores.values())
    thresholds = policy.policy_data("screening.thresholds")
    expected = "quarantine" if any(outcome.scores[c] >= thresholds[c] for c in thresholds) else "release"
    assert outcome.verdict == expected and outcome.detector == "clip"
    assert actions[0] == "screening.clip.import" and actions.count("policy.decision") == 2 and actions[-1] == "screening.result"


def test_a_batch_is_encoded_in_one_pass_and_each_image_keeps_its_own_scores(with_clip, database_url: str) -> None:
    from latentops.governance import clip, quarantine

    images = [picture(seed) for seed in (11, 12, 13)]
    visual = clip.load_clip(with_clip).model.visual  # type: ignore[union-attr]
    batches: list[int] = []
    hook = visual.register_forward_hook(lambda module, inputs, output: batches.append(int(inputs[0].shape[0])))
    try:
        with session_scope(database_url) as db:
            admissions = quarantine.admit_batch(db, settings=with_clip, images=images, actor="cli:test", seeds=[0, 1, 2],
                                                prompt_refs=["0" * 64] * 3)
        assert batches == [3]  # one image encode for the three images
        with session_scope(database_url) as db:
            alone = [screening.screen(db, settings=with_clip, image=image, actor="cli:test") for image in images]
        assert batches == [3, 1, 1, 1]
    finally:
        hook.remove()
    for admission, single in zip(admissions, alone, strict=True):
        assert admission.outcome.detector == "clip" and set(admission.outcome.scores) == set(CATEGORIES)
        assert admission.outcome.scores == pytest.approx(single.scores, abs=1e-5)
        assert admission.outcome.verdict == single.verdict and admission.outcome.result_id is not None
    assert len({tuple(sorted(a.outcome.scores.items())) for a in admissions}) == 3  # each image its own row


def test_threshold_in_policy_data_flags_the_category_with_its_rule_id(with_clip, database_url: str) -> None:
    with session_scope(database_url) as db:
        before = screening.screen(db, settings=with_clip, image=picture(2), actor="cli:test")
        lowered = {**policy.policy_data("screening.thresholds"), "weapons": round(before.scores["weapons"] / 2, 6)}
        policy.set_policy_data(db, key="screening.thresholds", value=lowered, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
        after = screening.screen(db, settings=with_clip, image=picture(2), actor="cli:test")
    assert after.verdict == "quarantine"
    assert "screening.weapons" in after.rule_ids
    assert any("weapons score" in reason for reason in after.reasons)


def test_without_a_detector_the_platform_says_so_and_the_policy_holds_images(no_default_nsfwjs, database_url: str,
                                                                             fresh_policy, caplog) -> None:  # type: ignore[no-untyped-def]
    settings_env = no_default_nsfwjs
    screening._warned = False
    report = screening.status(settings_env)
    assert report["real_detector"] is False and "no real content detector" in report["warning"]
    assert report["uncovered"] == list(CATEGORIES) and report["nsfwjs"]["state"] == "missing"
    assert screening.health(settings_env)["status"] == "unscreened"
    with caplog.at_level("WARNING"), session_scope(database_url) as db:
        outcome = screening.screen(db, settings=settings_env, image=picture(3), actor="cli:test")
    with session_scope(database_url) as db:  # entries join the chain when their transaction commits
        entry = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "screening.result")).one()
    assert outcome.verdict == "quarantine" and outcome.detector == "none"
    assert outcome.rule_ids == ["screening.no_detector"]
    assert json.loads(entry.details)["unscreened"] is True
    assert "no real content detector" in caplog.text


def test_sd_safety_checker_as_detector_covers_only_sexual(no_default_nsfwjs, database_url: str, tmp_path: Path,
                                                          fresh_policy) -> None:  # type: ignore[no-untyped-def]
    settings_env = no_default_nsfwjs
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 1000},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    StableDiffusionSafetyChecker(config).save_pretrained(tmp_path / "sd" / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "sd" / "feature_extractor")
    with session_scope(database_url) as db:
        screening.configure_detector(db, settings=settings_env, kind="safety_checker", path=tmp_path / "sd", actor="cli:test")
    assert screening.status(settings_env)["detectors"] == ["safety_checker"]
    with session_scope(database_url) as db:
        outcome = screening.screen(db, settings=settings_env, image=picture(4), actor="cli:test")
    assert set(outcome.scores) == {"sexual"} and 0 <= outcome.scores["sexual"] <= 1
    # No detector covers the other categories: by default the policy holds what was not screened.
    assert outcome.verdict == "quarantine" and "screening.uncovered" in outcome.rule_ids


def test_nudenet_without_the_optional_extra_is_refused_clearly(settings_env, database_url: str) -> None:
    with pytest.raises(InvalidInput, match="AGPL"), session_scope(database_url) as db:
        screening.configure_detector(db, settings=settings_env, kind="nudenet", path=None, actor="cli:test")


def test_import_clip_refuses_weights_of_another_architecture(settings_env, database_url: str, tiny_clip_files, tmp_path: Path) -> None:
    config, _ = tiny_clip_files
    other = tmp_path / "other.pt"
    import torch

    torch.save({"visual.proj": torch.zeros(3, 3)}, other)
    with pytest.raises(InvalidInput, match="could not be loaded as tiny-clip"), session_scope(database_url) as db:
        screening.import_clip(db, settings=settings_env, arch="tiny-clip", weights=other, config=config, actor="cli:test")
    assert screening.clip_manifest(settings_env) is None


def test_calibration_fits_thresholds_at_target_fpr_and_stores_a_policy_revision(with_clip, database_url: str, tmp_path: Path) -> None:
    images = tmp_path / "labelled"
    images.mkdir()
    rows = ["file,weapons,violence"]
    for i in range(30):
        save(picture(100 + i, 96), images / f"{i}.png")
        rows.append(f"{i}.png,{1 if i % 3 == 0 else 0},0")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    revision_before = policy.revision()
    with session_scope(database_url) as db:
        report = calibration.calibrate(db, settings=with_clip, images=images, labels=labels, target_fpr=0.1, actor="cli:test")
    with session_scope(database_url) as db:  # entries join the chain when their transaction commits
        actions = db.scalars(sa.select(AuditEntry.action)).all()
    fits = {f.category: f for f in report.fits}
    assert fits["weapons"].negatives == 20 and fits["weapons"].positives == 10 and fits["weapons"].fpr <= 0.1
    assert fits["violence"].fnr is None and fits["violence"].fpr <= 0.1
    with session_scope(database_url) as db:
        policy.reload(db)
    thresholds = policy.policy_data("screening.thresholds")
    assert thresholds["weapons"] == fits["weapons"].threshold and thresholds["violence"] == fits["violence"].threshold
    assert thresholds["sexual"] == 0.5  # not in the labels: unchanged
    assert policy.revision() == report.revision != revision_before
    assert "policy.data.edit" in actions and "screening.calibrate" in actions


def test_fit_threshold_allows_at_most_the_target_share_of_negatives() -> None:
    negatives = np.round(np.linspace(0.01, 0.99, 100), 6)
    threshold = calibration.fit_threshold(negatives, 0.05)
    assert (negatives >= threshold).sum() == 5
    assert calibration.fit_threshold(negatives, 0.0) > negatives.max()


def test_calibration_labels_are_checked_by_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,weapons\na.png,2\n")
    with pytest.raises(InvalidInput, match="line 2"):
        calibration.read_labels(labels)
    labels.write_text("file,dragons\na.png,1\n")
    with pytest.raises(InvalidInput, match="dragons"):
        calibration.read_labels(labels)


# --- nsfwjs, in force by default -----------------------------------------------------------------


def test_nsfwjs_screens_by_default_and_status_shows_what_each_category_is_covered_by(
        default_nsfwjs, database_url: str, fresh_policy) -> None:  # type: ignore[no-untyped-def]
    settings_env = default_nsfwjs
    report = screening.status(settings_env)
    assert report["real_detector"] is True and report["detectors"] == ["nsfwjs"]
    assert report["coverage"] == {c: (["nsfwjs"] if c == "sexual" else []) for c in CATEGORIES}
    assert report["uncovered"] == UNCOVERED_BY_NSFWJS and report["uncovered_images"] == "held"
    assert report["nsfwjs"]["state"] == "active" and report["nsfwjs"]["package"] == "nsfwjs@4.3.0"
    assert "no configured detector covers minors, violence" in report["warning"]
    health = screening.health(settings_env)
    assert health["status"] == "partial" and health["uncovered"] == UNCOVERED_BY_NSFWJS and health["uncovered_images"] == "held"
    with session_scope(database_url) as db:
        held = screening.screen(db, settings=settings_env, image=picture(7), actor="cli:test")
    with session_scope(database_url) as db:
        entry = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "screening.result")).one()
    assert held.detector == "nsfwjs" and set(held.scores) == {"sexual"} and held.scores["sexual"] < 0.5
    # The five uncovered categories hold the image, each with its reason; policy data decides.
    assert held.verdict == "quarantine" and set(held.rule_ids) == {"screening.uncovered"} and len(held.reasons) == 5
    assert json.loads(entry.details)["uncovered"] == UNCOVERED_BY_NSFWJS and json.loads(entry.details)["unscreened"] is False
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_uncovered", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
        released = screening.screen(db, settings=settings_env, image=picture(7), actor="cli:test")
        assert screening.status(settings_env)["uncovered_images"] == "released"
        lowered = {**policy.policy_data("screening.thresholds"), "sexual": held.scores["sexual"]}
        policy.set_policy_data(db, key="screening.thresholds", value=lowered, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
        flagged = screening.screen(db, settings=settings_env, image=picture(7), actor="cli:test")
    assert released.verdict == "release" and released.scores == held.scores
    assert flagged.verdict == "quarantine" and flagged.rule_ids == ["screening.sexual"]


def test_nsfwjs_is_turned_off_and_on_again_with_the_detector_configuration(
        default_nsfwjs, database_url: str, nsfwjs_folder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings_env = default_nsfwjs
    with session_scope(database_url) as db:
        screening.configure_detector(db, settings=settings_env, kind="nsfwjs", path=None, actor="cli:test", enabled=False)
    report = screening.status(settings_env)
    assert report["nsfwjs"]["state"] == "off" and report["detectors"] == [] and report["real_detector"] is False
    assert screening.active_detectors(settings_env) == []
    monkeypatch.setenv(nsfwjs.ENV_DIR, str(tmp_path / "elsewhere"))  # on again from a folder of its own
    with pytest.raises(InvalidInput, match="holds no converted model"), session_scope(database_url) as db:
        screening.configure_detector(db, settings=settings_env, kind="nsfwjs", path=tmp_path / "empty", actor="cli:test")
    with session_scope(database_url) as db:
        screening.configure_detector(db, settings=settings_env, kind="nsfwjs", path=nsfwjs_folder, actor="cli:test")
    with session_scope(database_url) as db:  # entries join the chain when their transaction commits
        actions = db.scalars(sa.select(AuditEntry.action)).all()
    assert [d.name for d in screening.active_detectors(settings_env)] == ["nsfwjs"]
    assert screening.status(settings_env)["nsfwjs"]["folder"] == str(nsfwjs_folder.resolve())
    assert actions.count("screening.detector.configure") == 2


@pytest.mark.one_backend
def test_status_command_health_and_portal_show_the_coverage(default_nsfwjs, cli, people, nsfwjs_folder: Path) -> None:  # type: ignore[no-untyped-def]
    from api_helpers import PASSWORD
    from fastapi.testclient import TestClient

    from latentops.platform.api.app import create_app

    settings_env = default_nsfwjs
    cli.env[nsfwjs.ENV_DIR] = str(nsfwjs_folder)
    shown = cli("screening", "status")
    assert shown.returncode == 0, shown.stderr
    assert "nsfwjs: active (nsfwjs@4.3.0" in shown.stdout and "violence" in shown.stdout and "NONE" in shown.stdout
    assert "WARNING: no configured detector covers minors, violence, self_harm, hate, weapons" in " ".join(shown.stderr.split())
    as_json = json.loads(cli("screening", "status", "--json").stdout)
    assert as_json["coverage"]["sexual"] == ["nsfwjs"] and as_json["uncovered"] == UNCOVERED_BY_NSFWJS
    client = TestClient(create_app(settings_env))
    health = client.get("/api/v1/health").json()["screening"]
    assert health["status"] == "partial" and health["coverage"]["sexual"] == ["nsfwjs"]
    assert client.post("/api/v1/auth/login", json={"email": "carol@example.com", "password": PASSWORD}).status_code == 200
    page = client.get("/quarantine")
    assert page.status_code == 200
    assert "Content screening" in page.text and "Detectors: nsfwjs" in page.text
    assert '<th scope="row">sexual</th><td>nsfwjs</td>' in page.text
    assert '<th scope="row">self harm</th><td>no detector</td>' in page.text
    assert "no configured detector covers minors" in page.text


# --- bad input ------------------------------------------------------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header declares ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("name,make,message", [
    ("notes.txt", lambda p: p.write_text("not an image"), "not an image"),
    ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
    ("truncated.png", lambda p: p.write_bytes(_png(picture(5))[:400]), "corrupt or truncated"),
    ("bomb.png", lambda p: p.write_bytes(_bomb_png(50_000, 50_000)), "decompression bomb"),
    ("float.tiff", lambda p: Image.new("F", (8, 8)).save(p), "unsupported pixel mode"),
])
def test_bad_images_get_one_clear_error_naming_the_file(tmp_path: Path, name: str, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    make(path)
    with pytest.raises(InvalidInput, match=message) as caught:
        load_image(path)
    assert name in caught.value.detail


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_bomb_limit_is_about_forty_megapixels() -> None:
    assert load_image(_png(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))).getpixel((0, 0)) == (255, 255, 255)
    assert MAX_PIXELS == 40_000_000


@pytest.mark.one_backend
def test_screen_cli_prints_one_json_line_and_bad_files_fail_with_the_name(cli, tiny_clip_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, weights = tiny_clip_files
    cli.env[nsfwjs.ENV_DIR] = str(tmp_path / "no-nsfwjs")
    done = cli("screening", "import-clip", "--arch", "tiny-clip", "--weights", str(weights), "--config", str(config))
    assert done.returncode == 0, done.stderr
    image = save(picture(6), tmp_path / "six.png")
    done = cli("screen", str(image), "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["verdict"] in {"release", "quarantine"}
    assert set(payload["content"]["scores"]) == set(CATEGORIES)
    assert payload["copyright"] == {"matches": []} and isinstance(payload["reasons"], list)
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    done = cli("screen", str(bad), "--json")
    assert done.returncode == 1 and "bad.png" in done.stderr and "not an image" in done.stderr
    status = cli("screening", "status", "--json")
    assert json.loads(status.stdout)["detectors"] == ["clip"]
