"""Copyright screening: the reference index catches edited copies of protected works, lets
unrelated images pass, lists unreadable reference files, and the policy honours licence grants
for outputs and training uploads."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image, ImageEnhance, ImageOps
from test_screening import picture, save, tiny_clip_files  # noqa: F401  (a fixture)

from latentops.core.errors import InvalidInput, PolicyDenied
from latentops.governance import copyright, policy, quarantine, screening
from latentops.platform.database import session_scope
from latentops.platform.services import users
from latentops.platform.tables import Asset, AuditEntry, CopyrightReference, ScreeningResult


def _jpeg(image: Image.Image, quality: int = 50) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _crop(image: Image.Image, left: float, top: float) -> Image.Image:
    w, h = image.size
    return image.crop((int(w * left), int(h * top), int(w * (left + 0.8)), int(h * (top + 0.8))))


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized to half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "cropped to 80% (centre)": lambda im: _crop(im, 0.1, 0.1),
    "cropped to 80% (off centre)": lambda im: _crop(im, 0.17, 0.03),
    "JPEG quality 50": _jpeg,
    "mirrored": ImageOps.mirror,
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "darker": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    "more saturated": lambda im: ImageEnhance.Color(im).enhance(1.6),
    "mirrored, half size, JPEG": lambda im: _jpeg(ImageOps.mirror(im).resize((im.width // 2, im.height // 2))),
}


@pytest.fixture
def works(tmp_path: Path) -> Path:
    folder = tmp_path / "acme"
    folder.mkdir()
    for i in range(4):
        save(picture(1000 + i, 384), folder / f"work-{i}.png")
    return folder


@pytest.fixture
def indexed(settings_env, database_url: str, works: Path):  # type: ignore[no-untyped-def]
    policy.use_service(None)
    with session_scope(database_url) as db:
        report = copyright.add_references(db, settings=settings_env, directory=works, owner="Acme Pictures",
                                          licence="all rights reserved", actor="cli:test")
        users.get_or_create_team(db, name="design", actor="cli:test")
    yield {Path(a["file"]).name: a["reference_id"] for a in report.added}
    policy.use_service(None)


def test_edited_copies_match_their_reference_and_unrelated_images_pass(settings_env, database_url: str, works: Path,
                                                                        indexed: dict[str, int]) -> None:
    missed = []
    with session_scope(database_url) as db:
        for name, reference_id in indexed.items():
            original = Image.open(works / name).convert("RGB")
            for edit, apply in EDITS.items():
                matches = copyright.find_matches(db, settings=settings_env, image=apply(original))
                if not matches or matches[0]["reference_id"] != reference_id or matches[0]["owner"] != "Acme Pictures":
                    missed.append((name, edit, matches))
        false_positives = [(seed, m) for seed in range(5000, 5012)
                           if (m := copyright.find_matches(db, settings=settings_env, image=picture(seed, 384)))]
    assert missed == []
    assert false_positives == []


def _large_index(works: list[Image.Image], fillers: int) -> tuple[copyright.ReferenceIndex, np.ndarray]:
    """``works`` as references 1.. followed by ``fillers`` references with random hashes, built as
    ``load_index`` builds it: too large for every reference to be verified with ORB."""
    rng = np.random.default_rng(7)
    variants = 2 * len(copyright.CROPS)
    hashes = np.concatenate([np.array([copyright.phash_variants(w) for w in works], dtype=np.uint64).reshape(-1, variants),
                             rng.integers(0, 2**63, (fillers, variants), dtype=np.int64).astype(np.uint64)])
    ids = np.arange(1, len(hashes) + 1)
    return copyright.ReferenceIndex.build(ids, ["Acme Pictures"] * len(works) + ["Other"] * fillers, hashes), hashes


def test_hash_lookup_finds_exactly_the_references_within_the_candidate_radius() -> None:
    index, hashes = _large_index([], 20_000)
    query = int(hashes[0, 0])
    flips = {5: 10, 6: copyright.PHASH_CANDIDATE, 7: copyright.PHASH_CANDIDATE + 1}
    for row, bits in flips.items():  # plant variants at the match radius, the candidate radius and just beyond
        hashes[row, 3] = np.uint64(query ^ ((1 << bits) - 1))
    index = copyright.ReferenceIndex.build(index.ids, index.owners, hashes)
    for probe in [query] + [int(h) for h in np.random.default_rng(1).integers(0, 2**63, 30)]:
        distances = np.bitwise_count(hashes ^ np.uint64(probe)).min(axis=1)
        within = np.flatnonzero(distances <= copyright.PHASH_CANDIDATE)
        expected = sorted((int(distances[r]), int(index.ids[r])) for r in within)[:copyright.PHASH_CANDIDATES]
        ids, found = index.nearest_by_hash(probe)
        assert sorted(zip(found.tolist(), ids.tolist(), strict=True)) == expected
    ids, found = index.nearest_by_hash(query)
    nearest = dict(zip(ids.tolist(), found.tolist(), strict=True))
    assert {1: 0, 6: 10, 7: copyright.PHASH_CANDIDATE}.items() <= nearest.items() and 8 not in nearest


def test_edited_copies_are_found_in_an_index_too_large_to_verify_every_reference() -> None:
    works = [picture(1000 + i, 384) for i in range(4)]
    index, _ = _large_index(works, 3000)
    assert len(index.ids) > copyright.EXHAUSTIVE_MAX
    orb = {i + 1: copyright.orb_features(w) for i, w in enumerate(works)}
    filler = copyright.orb_features(picture(424242, 384))

    def lookup(image: Image.Image) -> list[dict[str, object]]:
        return copyright.match_in_index(index, image, embedding=None,
                                        orb_loader=lambda wanted: {i: orb.get(i, filler) for i in wanted})

    missed = [(i, edit, matches) for i, work in enumerate(works) for edit, apply in EDITS.items()
              if not (matches := lookup(apply(work))) or matches[0]["reference_id"] != i + 1]
    assert missed == []
    assert [lookup(picture(seed, 384)) for seed in range(5000, 5012)] == [[]] * 12


def test_match_methods_and_scores_are_reported(settings_env, database_url: str, works: Path, indexed: dict[str, int]) -> None:
    original = Image.open(works / "work-0.png").convert("RGB")
    with session_scope(database_url) as db:
        exact = copyright.find_matches(db, settings=settings_env, image=original)
        shifted = copyright.find_matches(db, settings=settings_env, image=_crop(original, 0.17, 0.03))
    assert exact[0] == {"reference_id": indexed["work-0.png"], "owner": "Acme Pictures", "method": "phash", "score": 1.0}
    assert shifted[0]["method"] in {"phash", "orb"} and 0 < shifted[0]["score"] <= 1


def test_screened_output_matching_a_work_is_quarantined_unless_the_team_holds_a_licence(
        settings_env, database_url: str, works: Path, indexed: dict[str, int]) -> None:
    copy = ImageOps.mirror(Image.open(works / "work-1.png").convert("RGB"))
    with session_scope(database_url) as db:
        # Content screening is not what this test is about: let unscreened images through.
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
        flagged = screening.screen(db, settings=settings_env, image=copy, actor="cli:test", team="design")
        copyright.grant_licence(db, team="design", owner="Acme Pictures", actor="cli:test", note="contract 42")
    with session_scope(database_url) as db:
        licensed = screening.screen(db, settings=settings_env, image=copy, actor="cli:test", team="design")
        other_team = screening.screen(db, settings=settings_env, image=copy, actor="cli:test", team=None)
    assert flagged.verdict == "quarantine" and flagged.rule_ids == ["copyright.protected_work"]
    assert flagged.to_json()["copyright"]["matches"][0]["reference_id"] == indexed["work-1.png"]
    assert licensed.verdict == "release" and licensed.matches
    assert other_team.verdict == "quarantine"


def test_training_upload_of_a_protected_work_is_denied_and_recorded(settings_env, database_url: str, works: Path,
                                                                     indexed: dict[str, int], tmp_path: Path) -> None:
    upload = save(_jpeg(Image.open(works / "work-2.png").convert("RGB")), tmp_path / "instance.jpg")
    harmless = save(picture(7000, 256), tmp_path / "mine.png")
    files = [("instance.jpg", upload), ("mine.png", harmless)]
    with pytest.raises(PolicyDenied) as denied, session_scope(database_url) as db:
        copyright.screen_training_upload(db, settings=settings_env, images=files, team="design", actor="cli:test")
    assert any(r.startswith("instance.jpg: ") and "Acme Pictures" in r for r in denied.value.reasons)
    assert not any(r.startswith("mine.png") for r in denied.value.reasons)
    with session_scope(database_url) as db:
        entry = db.scalars(sa.select(AuditEntry).where(AuditEntry.action == "copyright.training_upload")).one()
        assert entry.outcome == "deny" and json.loads(entry.details)["denied"] == ["instance.jpg"]
        copyright.grant_licence(db, team="design", owner="Other Owner", reference_id=indexed["work-2.png"], actor="cli:test")
    with session_scope(database_url) as db:
        results = copyright.screen_training_upload(db, settings=settings_env, images=files, team="design", actor="cli:test")
    assert [r["allow"] for r in results] == [True, True]


def test_copyright_add_cli_imports_readable_files_and_lists_failures(cli, works: Path) -> None:  # type: ignore[no-untyped-def]
    (works / "notes.txt").write_text("licence terms")
    (works / "broken.png").write_bytes((works / "work-0.png").read_bytes()[:300])
    done = cli("copyright", "add", str(works), "--owner", "Acme Pictures", "--licence", "all rights reserved", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["added"]) == 4
    assert sorted(Path(f["file"]).name for f in report["failures"]) == ["broken.png", "notes.txt"]
    assert all(f["reason"] for f in report["failures"])
    again = json.loads(cli("copyright", "add", str(works), "--owner", "Acme Pictures", "--licence", "x", "--json").stdout)
    assert again["added"] == [] and len(again["duplicates"]) == 4
    listed = json.loads(cli("copyright", "list", "--json").stdout)
    assert [r["owner"] for r in listed] == ["Acme Pictures"] * 4


def test_clip_embeddings_are_indexed_with_faiss_and_never_flag_on_similarity_alone(
        settings_env, database_url: str, works: Path, tiny_clip_files) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    config, weights = tiny_clip_files
    with session_scope(database_url) as db:
        screening.import_clip(db, settings=settings_env, arch="tiny-clip", weights=weights, config=config, actor="cli:test")
        copyright.add_references(db, settings=settings_env, directory=works, owner="Acme Pictures", licence="arr", actor="cli:test")
        clip = screening.load_clip(settings_env)
        assert clip is not None
        index = copyright.load_index(db, clip_sha=clip.sha256)
        assert index.faiss_index is not None and index.faiss_index.ntotal == 4
        assert all(r.features["embedding_sha"] == clip.sha256 for r in db.scalars(sa.select(CopyrightReference)))
        copy = copyright.find_matches(db, settings=settings_env, image=_jpeg(Image.open(works / "work-3.png").convert("RGB")))
        # A random-weight CLIP finds every picture similar: similarity alone must not flag.
        unrelated = [copyright.find_matches(db, settings=settings_env, image=picture(seed, 384)) for seed in range(6000, 6004)]
    assert copy and copy[0]["owner"] == "Acme Pictures"
    assert unrelated == [[], [], [], []]


def test_a_batch_with_one_protected_copy_quarantines_that_image_and_releases_the_rest(
        settings_env, database_url: str, works: Path, indexed: dict[str, int]) -> None:
    copy = ImageOps.mirror(Image.open(works / "work-2.png").convert("RGB"))
    images = [picture(7, 288), copy, picture(8, 288)]
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
        admissions = quarantine.admit_batch(db, settings=settings_env, images=images, actor="cli:test", seeds=[1, 2, 3],
                                            prompt_refs=["a" * 64] * 3, team="design")
        ids = [a.asset.id for a in admissions]
    assert [a.released for a in admissions] == [True, False, True]
    assert admissions[1].outcome.rule_ids == ["copyright.protected_work"] and admissions[1].image is None
    with session_scope(database_url) as db:
        assets = [db.get(Asset, i) for i in ids]
        results = [db.get(ScreeningResult, a.screening_result_id) for a in assets]  # type: ignore[union-attr]
        entries = {e.resource: e for e in db.scalars(sa.select(AuditEntry).where(
            AuditEntry.resource.in_([f"asset:{i}" for i in ids])))}
    assert [a.status for a in assets] == ["released", "quarantined", "released"]  # type: ignore[union-attr]
    assert [r.source for r in results] == [f"asset:{i}" for i in ids]  # type: ignore[union-attr]
    assert [r.verdict for r in results] == ["release", "quarantine", "release"]  # type: ignore[union-attr]
    for asset, admission in zip(assets, admissions, strict=True):
        entry = entries[f"asset:{asset.id}"]  # type: ignore[union-attr]
        assert entry.action == ("asset.release" if admission.released else "asset.quarantine")
        assert asset.audit_seq == entry.seq  # type: ignore[union-attr]
        if admission.released:  # the signed manifest names the release entry
            assert asset.provenance["c2pa"]["audit_seq"] == entry.seq  # type: ignore[union-attr,index]
    with pytest.raises(InvalidInput, match="same length"), session_scope(database_url) as db:
        quarantine.admit_batch(db, settings=settings_env, images=images, actor="cli:test", seeds=[1], prompt_refs=["a" * 64])
