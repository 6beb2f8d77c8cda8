"""The copyright reference index and image screening over REST: uploads import through the same
service as ``latentops copyright add`` (bad files listed, the rest imported, audited), the list
pages like other lists, ``POST /screen`` answers what ``latentops screen --json`` prints, the access
policy decides who may call, the matcher's thresholds are policy data that change a verdict when
tightened (and bad values are refused), and the remote CLI does the same through the SDK."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from api_helpers import bearer, make_token, make_user
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance, ImageOps
from test_remote_cli import lines, remote, server  # noqa: F401  (a fixture)
from test_screening import _bomb_png, _png, picture

from latentops.core.errors import InvalidInput
from latentops.governance import copyright, identities, policy
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR
from latentops.governance.policy_engine import EmbeddedEngine
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import (
    AuditEntry,
    CopyrightReference,
    PolicyDataEdit,
    PolicyDecision,
    ScreeningResult,
)

REFERENCES = "/api/v1/copyright/references"


@pytest.fixture
def api(settings_env, fresh_policy) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(settings_env))


def _works(count: int = 3) -> list[tuple[str, bytes]]:
    return [(f"work-{i}.png", _png(picture(1000 + i, 384))) for i in range(count)]


def _upload(files: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in files]


def _form(owner: str = "Acme Pictures", licence: str = "all rights reserved") -> dict[str, str]:
    return {"owner": owner, "licence": licence}


def _image(name: str, image: Image.Image) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, _png(image), "image/png")}


def _audit(database_url: str, action: str) -> list[AuditEntry]:
    """The entries of ``action``, each actor shown as who it is (people are stored as pseudonyms)."""
    with session_scope(database_url) as db:
        rows = list(db.scalars(sa.select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)))
        who = identities.reveal(db, [row.actor for row in rows])
        db.expunge_all()
    for row in rows:
        row.actor = who.get(row.actor) or row.actor
    return rows


def _release_unscreened(database_url: str) -> None:
    """Content screening is not what these tests are about: let unscreened images through."""
    with session_scope(database_url) as db:
        policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)


# --- importing references -------------------------------------------------------------------------


def test_officer_uploads_works_bad_files_are_listed_and_the_rest_import(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    bad = [("notes.txt", b"licence terms"), ("truncated.png", _png(picture(5))[:400]),
           ("bomb.png", _bomb_png(50_000, 50_000)), ("empty.png", b"")]
    answer = api.post(REFERENCES, data=_form(), files=_upload(_works() + bad), headers=bearer(people["carol"]))
    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert [a["file"] for a in report["added"]] == ["work-0.png", "work-1.png", "work-2.png"]
    reasons = {f["file"]: f["reason"] for f in report["failures"]}
    assert set(reasons) == {"notes.txt", "truncated.png", "bomb.png", "empty.png"}
    assert "not an image" in reasons["notes.txt"] and "corrupt or truncated" in reasons["truncated.png"]
    assert "decompression bomb" in reasons["bomb.png"] and "empty file" in reasons["empty.png"]
    assert report["duplicates"] == []

    with session_scope(settings_env.database_url) as db:
        stored = {r.id: (r.owner, r.licence, r.title, r.path) for r in db.scalars(sa.select(CopyrightReference))}
    assert stored == {a["reference_id"]: ("Acme Pictures", "all rights reserved", f"work-{i}", f"upload:work-{i}.png")
                      for i, a in enumerate(report["added"])}
    [entry] = _audit(settings_env.database_url, "copyright.reference.add")
    details = json.loads(entry.details)
    assert (entry.actor, entry.outcome) == ("carol@example.com", "partial")
    assert details["added"] == [a["reference_id"] for a in report["added"]] and len(details["failures"]) == 4

    # The same bytes again (an admin, another name): reported as already indexed, nothing added.
    again = api.post(REFERENCES, data=_form(licence="x"), files=_upload([("copy.png", _works(1)[0][1])]),
                     headers=bearer(people["dave"]))
    assert again.status_code == 201
    assert again.json() == {"added": [], "duplicates": [{"file": "copy.png", "reference_id": report["added"][0]["reference_id"]}],
                            "failures": []}


def test_an_import_where_every_file_fails_is_422_naming_each_file_and_still_audited(api: TestClient, people,  # type: ignore[no-untyped-def]
                                                                                    settings_env) -> None:
    answer = api.post(REFERENCES, data=_form(), files=_upload([("a.txt", b"hello"), ("b.png", b"\x89PNG")]),
                      headers=bearer(people["carol"]))
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "invalid_input" and body["detail"] == "files: none of the 2 files could be indexed"
    assert [r["file"] for r in body["reasons"]] == ["a.txt", "b.png"] and all(r["reason"] for r in body["reasons"])
    [entry] = _audit(settings_env.database_url, "copyright.reference.add")
    assert entry.outcome == "partial" and json.loads(entry.details)["added"] == []


@pytest.mark.parametrize("form,field", [
    ({"owner": "  ", "licence": "arr"}, "owner"),
    ({"licence": "arr"}, "owner"),
    ({"owner": "Acme", "licence": "x" * 201}, "licence"),
])
def test_owner_and_licence_are_checked_before_anything_is_imported(api: TestClient, people, settings_env,  # type: ignore[no-untyped-def]
                                                                   form: dict[str, str], field: str) -> None:
    answer = api.post(REFERENCES, data=form, files=_upload(_works(1)), headers=bearer(people["carol"]))
    assert answer.status_code == 422 and field in answer.json()["detail"], answer.text
    assert set(answer.json()) == {"error", "detail", "reasons"}
    with session_scope(settings_env.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(CopyrightReference.id))) == 0


def test_an_upload_over_the_body_limit_is_refused_with_413_and_nothing_stored(settings_env, people, fresh_policy) -> None:  # type: ignore[no-untyped-def]
    small = TestClient(create_app(settings_env.model_copy(update={"max_upload_bytes": 64 * 1024})))
    answer = small.post(REFERENCES, data=_form(), files=_upload(_works(2)), headers=bearer(people["carol"]))
    assert answer.status_code == 413 and answer.json()["error"] == "payload_too_large"
    with session_scope(settings_env.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(CopyrightReference.id))) == 0


def test_only_compliance_officers_and_admins_manage_the_index_and_denials_are_recorded(  # type: ignore[no-untyped-def]
        api: TestClient, people, settings_env) -> None:
    url = settings_env.database_url
    denied = api.post(REFERENCES, data=_form(), files=_upload(_works(1)), headers=bearer(people["alice"]))
    assert denied.status_code == 403 and denied.json()["error"] == "policy_denied"
    assert denied.json()["reasons"][0].startswith("access.role: none of your roles may copyright.manage")
    listed = api.get(REFERENCES, headers=bearer(people["alice"]))
    assert listed.status_code == 403 and listed.json()["reasons"][0].startswith("access.role:")
    read_only = make_token(url, "carol@example.com", scopes=["read"])
    assert api.get(REFERENCES, headers=bearer(read_only)).status_code == 200
    scoped = api.post(REFERENCES, data=_form(), files=_upload(_works(1)), headers=bearer(read_only))
    assert scoped.status_code == 403 and scoped.json()["reasons"][0].startswith("access.scope:")
    with session_scope(url) as db:
        assert db.scalar(sa.select(sa.func.count(CopyrightReference.id))) == 0
        denials = db.scalars(sa.select(PolicyDecision).where(PolicyDecision.path == "access",
                                                             PolicyDecision.allow.is_(False))).all()
        assert sorted(d.actor for d in denials) == ["alice@example.com", "alice@example.com", "carol@example.com"]
    assert len([e for e in _audit(url, "policy.decision") if e.outcome == "deny"]) == 3


def test_the_reference_list_pages_like_other_lists_and_filters_by_owner(api: TestClient, people) -> None:  # type: ignore[no-untyped-def]
    works = _works(5)
    acme = api.post(REFERENCES, data=_form(), files=_upload(works[:3]), headers=bearer(people["carol"])).json()
    globex = api.post(REFERENCES, data=_form(owner="Globex"), files=_upload(works[3:]), headers=bearer(people["carol"])).json()
    ids = [a["reference_id"] for a in acme["added"] + globex["added"]]

    seen, offset, pages = [], 0, 0
    while offset is not None:
        page = api.get(REFERENCES, params={"offset": offset, "limit": 2}, headers=bearer(people["dave"])).json()
        assert (page["offset"], page["limit"]) == (offset, 2) and len(page["items"]) <= 2
        seen += page["items"]
        offset, pages = page["next_offset"], pages + 1
    assert [r["id"] for r in seen] == ids and pages == 3
    assert {k: seen[3][k] for k in ("owner", "licence", "title", "embedded", "path")} == {
        "owner": "Globex", "licence": "all rights reserved", "title": "work-3", "embedded": False, "path": "upload:work-3.png"}
    only = api.get(REFERENCES, params={"owner": "Globex"}, headers=bearer(people["carol"])).json()
    assert [r["id"] for r in only["items"]] == ids[3:] and only["next_offset"] is None
    bad = api.get(REFERENCES, params={"limit": 0}, headers=bearer(people["carol"]))
    assert bad.status_code == 422 and bad.json()["reasons"][0]["field"] == "query.limit"


# --- screening ------------------------------------------------------------------------------------


def test_screen_answers_what_the_cli_prints_and_records_the_result(api: TestClient, people, settings_env, cli,  # type: ignore[no-untyped-def]
                                                                   tmp_path: Path) -> None:
    url = settings_env.database_url
    added = api.post(REFERENCES, data=_form(), files=_upload(_works(2)), headers=bearer(people["carol"])).json()["added"]
    copy = ImageOps.mirror(picture(1001, 384))
    answer = api.post("/api/v1/screen", files=_image("mirrored.png", copy), headers=bearer(people["alice"]))
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert set(payload) == {"verdict", "reasons", "content", "copyright"}
    assert payload["verdict"] == "quarantine"
    assert [(m["reference_id"], m["owner"]) for m in payload["copyright"]["matches"]] == [(added[1]["reference_id"], "Acme Pictures")]
    assert any("protected work" in r for r in payload["reasons"])

    (tmp_path / "mirrored.png").write_bytes(_png(copy))
    done = cli("screen", str(tmp_path / "mirrored.png"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == payload

    with session_scope(url) as db:
        results = db.scalars(sa.select(ScreeningResult).order_by(ScreeningResult.id)).all()
        assert [(r.source, r.verdict) for r in results] == [("mirrored.png", "quarantine"),
                                                            (str(tmp_path / "mirrored.png"), "quarantine")]
    assert [e.actor for e in _audit(url, "screening.result")] == ["alice@example.com", f"cli:{_login()}"]


def _login() -> str:
    import getpass

    return getpass.getuser()


def test_screen_applies_the_callers_team_licences_and_hides_other_teams(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    api.post(REFERENCES, data=_form(), files=_upload(_works(1)), headers=bearer(people["carol"]))
    _release_unscreened(url)
    with session_scope(url) as db:
        copyright.grant_licence(db, team="design", owner="Acme Pictures", actor="cli:test")
    copy = _image("copy.png", ImageEnhance.Brightness(picture(1000, 384)).enhance(1.3))
    unlicensed = api.post("/api/v1/screen", files=copy, headers=bearer(people["alice"])).json()
    licensed = api.post("/api/v1/screen", files=copy, data={"team": "design"}, headers=bearer(people["alice"])).json()
    assert unlicensed["verdict"] == "quarantine" and licensed["verdict"] == "release" and licensed["copyright"]["matches"]
    other = api.post("/api/v1/screen", files=copy, data={"team": "marketing"}, headers=bearer(people["alice"]))
    assert other.status_code == 404 and other.json()["detail"] == "team: no team 'marketing'"
    assert api.post("/api/v1/screen", files=copy, data={"team": "marketing"}, headers=bearer(people["dave"])).status_code == 200


def test_screen_refuses_bad_images_naming_the_file_and_tokens_without_a_screening_scope(  # type: ignore[no-untyped-def]
        api: TestClient, people, settings_env) -> None:
    bad = api.post("/api/v1/screen", files={"file": ("bad.png", b"hello", "image/png")}, headers=bearer(people["alice"]))
    assert (bad.status_code, bad.json()["detail"]) == (422, "bad.png: not an image Pillow can read")
    bomb = api.post("/api/v1/screen", files={"file": ("bomb.png", _bomb_png(50_000, 50_000), "image/png")},
                    headers=bearer(people["alice"]))
    assert bomb.status_code == 422 and "decompression bomb" in bomb.json()["detail"]
    missing = api.post("/api/v1/screen", headers=bearer(people["alice"]))
    assert missing.status_code == 422 and missing.json()["reasons"][0]["field"] == "body.file"
    read_only = make_token(settings_env.database_url, "alice@example.com", scopes=["read"])
    scoped = api.post("/api/v1/screen", files=_image("x.png", picture(3)), headers=bearer(read_only))
    assert scoped.status_code == 403 and scoped.json()["reasons"][0].startswith("access.scope:")
    with session_scope(settings_env.database_url) as db:
        assert db.scalar(sa.select(sa.func.count(ScreeningResult.id))) == 0


# --- thresholds as policy data --------------------------------------------------------------------


def test_match_thresholds_in_policy_data_keep_the_former_constants() -> None:
    data = json.loads((DEFAULT_POLICY_DIR / "copyright" / "data.json").read_text())
    assert data["thresholds"] == {"phash_max_distance": 10, "orb_min_inliers": 15, "clip_min_similarity": 0.90,
                                  "phash_support_distance": 16, "orb_support_inliers": 10}


def test_tightening_the_phash_threshold_turns_a_quarantine_into_a_release(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    api.post(REFERENCES, data=_form(), files=_upload(_works(1)), headers=bearer(people["carol"]))
    _release_unscreened(url)
    # A bright thumbnail: its pHash is a few bits from the work's, too small for ORB keypoints.
    thumbnail = _image("thumb.png", ImageEnhance.Brightness(picture(1000, 384).resize((64, 64))).enhance(1.4))
    before = api.post("/api/v1/screen", files=thumbnail, headers=bearer(people["alice"])).json()
    assert before["verdict"] == "quarantine" and [m["method"] for m in before["copyright"]["matches"]] == ["phash"]
    distance = round((1 - before["copyright"]["matches"][0]["score"]) * 64)
    assert 0 < distance <= 10
    with session_scope(url) as db:
        policy.set_policy_data(db, key="copyright.thresholds.phash_max_distance", value=distance - 1, actor="cli:test",
                               note="stricter pHash matching")
    with session_scope(url) as db:
        policy.reload(db)
    after = api.post("/api/v1/screen", files=thumbnail, headers=bearer(people["alice"])).json()
    assert after["verdict"] == "release" and after["copyright"]["matches"] == []
    assert policy.policy_data("copyright.thresholds")["phash_max_distance"] == distance - 1
    [edit] = _audit(url, "policy.data.edit")[1:]
    assert json.loads(edit.details)["key"] == "copyright.thresholds.phash_max_distance"


def test_raising_the_orb_inlier_threshold_drops_an_orb_match(settings_env, database_url: str, fresh_policy) -> None:  # type: ignore[no-untyped-def]
    work = picture(1000, 384)
    crop = work.crop((65, 11, 65 + 307, 11 + 307))  # an off-centre 80% crop: too far for pHash, found by ORB
    with session_scope(database_url) as db:
        copyright.import_references(db, settings=settings_env, files=[("work.png", _png(work))], owner="Acme",
                                    licence="arr", actor="cli:test", source="test")
    with session_scope(database_url) as db:
        found = copyright.find_matches(db, settings=settings_env, image=crop)
        assert [m["method"] for m in found] == ["orb"]
        policy.set_policy_data(db, key="copyright.thresholds.orb_min_inliers", value=500, actor="cli:test")
    with session_scope(database_url) as db:
        policy.reload(db)
        assert copyright.find_matches(db, settings=settings_env, image=crop) == []
        assert copyright.MatchThresholds.in_force(db).orb_min_inliers == 500


@pytest.mark.parametrize("key,value,message", [
    ("copyright.thresholds.orb_min_inliers", "many", "thresholds.orb_min_inliers: must be an integer from 8 to 500"),
    ("copyright.thresholds.orb_min_inliers", 3, "thresholds.orb_min_inliers: must be an integer from 8 to 500"),
    ("copyright.thresholds.phash_max_distance", True, "thresholds.phash_max_distance: must be an integer from 0 to 32"),
    ("copyright.thresholds.phash_max_distance", 40, "thresholds.phash_max_distance: must be an integer from 0 to 32"),
    ("copyright.thresholds.clip_min_similarity", 1.5, "thresholds.clip_min_similarity: must be a number above 0"),
    ("copyright.thresholds.clip_threshold", 0.8, "thresholds: unknown key(s) clip_threshold"),
    ("copyright.thresholds", {"phash_max_distance": 8},
     "thresholds.orb_min_inliers: must be an integer from 8 to 500, it is missing"),
])
def test_bad_threshold_edits_are_refused_naming_the_field_and_nothing_changes(  # type: ignore[no-untyped-def]
        settings_env, database_url: str, fresh_policy, key: str, value: object, message: str) -> None:
    before = policy.revision()
    with session_scope(database_url) as db, pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        policy.set_policy_data(db, key=key, value=value, actor="cli:test")
    with session_scope(database_url) as db:
        assert db.scalar(sa.select(sa.func.count(PolicyDataEdit.id))) == 0
        policy.reload(db)
    assert policy.revision() == before
    assert policy.policy_data("copyright.thresholds.orb_min_inliers") == 15


def test_a_bad_thresholds_file_leaves_the_previous_revision_in_force(tmp_path: Path, fresh_policy) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    service = policy.PolicyService(engine=EmbeddedEngine(), directory=folder)
    policy.use_service(service)
    assert service.reload().ok
    revision = service.bundle.revision if service.bundle else ""
    data_file = folder / "copyright" / "data.json"
    data = json.loads(data_file.read_text())
    data["thresholds"]["clip_min_similarity"] = "high"
    data_file.write_text(json.dumps(data))
    result = service.reload()
    assert not result.ok and result.revision == revision
    assert result.error.startswith("copyright/data.json.thresholds.clip_min_similarity: must be a number")
    assert copyright.MatchThresholds.in_force().clip_min_similarity == 0.90


# --- the SDK and the remote CLI -------------------------------------------------------------------


@pytest.mark.one_backend
def test_remote_cli_adds_lists_and_screens_through_the_api(server: str, cli, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from latentops.client import Client, PolicyDenied

    carol = make_user(database_url, "carol@example.com", "compliance_officer", "compliance")
    alice = make_user(database_url, "alice@example.com", "submitter", "design")
    folder = tmp_path / "acme"
    (folder / "more").mkdir(parents=True)
    for name, data in _works(2):
        (folder / name).write_bytes(data)
    (folder / "more" / "work-2.png").write_bytes(_works(3)[2][1])
    (folder / "notes.txt").write_text("terms")
    (folder / ".hidden.png").write_bytes(_works(1)[0][1])

    added = remote(cli, server, carol, "copyright", "add", str(folder), "--owner", "Acme Pictures", "--licence", "arr", "--json")
    assert added.returncode == 0, added.stderr
    report = json.loads(added.stdout)
    assert sorted(a["file"] for a in report["added"]) == [str(folder / "more" / "work-2.png"), str(folder / "work-0.png"),
                                                          str(folder / "work-1.png")]
    assert [f["file"] for f in report["failures"]] == [str(folder / "notes.txt")] and report["duplicates"] == []
    again = json.loads(remote(cli, server, carol, "copyright", "add", str(folder), "--owner", "Acme Pictures",
                              "--licence", "arr", "--json").stdout)
    assert again["added"] == [] and len(again["duplicates"]) == 3

    listed = lines(remote(cli, server, carol, "copyright", "list", "--json").stdout)[0]
    assert isinstance(listed, list) and [r["title"] for r in listed] == ["work-2", "work-0", "work-1"]  # path order
    assert listed[0]["path"] == "upload:more/work-2.png"
    assert lines(remote(cli, server, carol, "copyright", "list", "--offset", "1", "--limit", "1", "--json").stdout)[0] == [listed[1]]

    image = tmp_path / "copy.png"
    image.write_bytes(_png(ImageOps.mirror(picture(1000, 384))))
    screened = remote(cli, server, alice, "screen", str(image), "--json")
    assert screened.returncode == 0, screened.stderr
    assert json.loads(screened.stdout)["copyright"]["matches"][0]["reference_id"] == listed[1]["id"]  # work-0
    refused = remote(cli, server, alice, "copyright", "add", str(folder), "--owner", "x", "--licence", "y")
    assert refused.returncode == 1 and refused.stderr.startswith("PolicyDenied: ")
    nothing = remote(cli, server, carol, "copyright", "add", str(tmp_path / "missing"), "--owner", "x", "--licence", "y")
    assert (nothing.returncode, nothing.stderr.strip()) == (1, f"InvalidInput: directory: {tmp_path / 'missing'} is not a folder")

    with Client(server, alice) as api:
        with pytest.raises(PolicyDenied):
            api.copyright.list()
        verdict = api.screening.screen(("copy.png", image.read_bytes()))
    assert verdict["verdict"] == "quarantine"
    with Client(server, carol) as api:
        assert [r["id"] for r in api.copyright.iter(page_size=2)] == [r["id"] for r in listed]
        with pytest.raises(InvalidInput) as failed:
            api.copyright.add([("a.txt", b"hello")], owner="Acme", licence="arr")
    assert failed.value.reasons == [{"file": "a.txt", "reason": "a.txt: not an image Pillow can read"}]
