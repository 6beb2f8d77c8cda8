"""``/api/v1/policies/prompt/protected-names`` against the real database: every role searches and
pages the list, compliance officers and admins edit it (each edit audited with its actor, each a
new revision that decisions follow), everybody else gets 403, and bad input stores nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_helpers import api_server, bearer, make_token
from fastapi.testclient import TestClient

from latentops.client import Client
from latentops.core.errors import InvalidInput, PolicyDenied
from latentops.governance import identities, policy
from latentops.platform.api.app import create_app
from latentops.platform.database import session_scope
from latentops.platform.tables import AuditEntry, PolicyDataEdit

ROUTE = "/api/v1/policies/prompt/protected-names"


@pytest.fixture
def api(settings_env, fresh_policy) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(settings_env))


def _edits(database_url: str) -> list[tuple[str, dict[str, Any], str, str]]:
    with session_scope(database_url) as session:
        rows = session.execute(sa.select(PolicyDataEdit.key, PolicyDataEdit.value, PolicyDataEdit.actor, PolicyDataEdit.revision)
                               .order_by(PolicyDataEdit.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _audited(database_url: str) -> list[tuple[str, dict[str, Any]]]:
    with session_scope(database_url) as session:
        rows = session.execute(sa.select(AuditEntry.actor, AuditEntry.details).where(AuditEntry.action == "policy.data.edit")
                               .order_by(AuditEntry.seq)).all()
        who = identities.reveal(session, [actor for actor, _ in rows])  # actors are stored as pseudonyms
        return [(who.get(actor) or actor, json.loads(details)) for actor, details in rows]


def _decide(database_url: str, prompt: str) -> policy.Decision:
    with session_scope(database_url) as session:
        return policy.decide("prompt", {"prompt": prompt}, session=session, actor="cli:test")


def test_every_role_searches_and_pages_the_list(api: TestClient, people) -> None:  # type: ignore[no-untyped-def]
    alice = bearer(people["alice"])
    first = api.get(ROUTE, params={"limit": 10}, headers=alice).json()
    assert first["total"] >= 400 and len(first["items"]) == 10 and first["next_offset"] == 10 and len(first["revision"]) == 64
    names = [item["name"] for item in first["items"]]
    assert names == sorted(names, key=str.casefold)
    second = api.get(ROUTE, params={"limit": 10, "offset": 10}, headers=alice).json()
    assert second["total"] == first["total"] and not {i["name"] for i in second["items"]} & set(names)
    last = api.get(ROUTE, params={"limit": 10, "offset": first["total"] - 3}, headers=alice).json()
    assert len(last["items"]) == 3 and last["next_offset"] is None

    found = api.get(ROUTE, params={"q": "rutkowski"}, headers=alice).json()
    assert found["items"] == [{"name": "Greg Rutkowski", "category": "living artist"}] and found["total"] == 1
    spelled = api.get(ROUTE, params={"q": "SPIDER man"}, headers=alice).json()
    assert [item["name"] for item in spelled["items"]] == ["Spider-Man"]
    artists = api.get(ROUTE, params={"category": "living artist", "limit": 500}, headers=alice).json()
    assert artists["total"] >= 80 and {item["category"] for item in artists["items"]} == {"living artist"}
    assert api.get(ROUTE, params={"q": "zzzz-nobody"}, headers=alice).json()["total"] == 0

    bad = api.get(ROUTE, params={"category": "villain"}, headers=alice)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("category: 'villain' is not a category")
    assert api.get(ROUTE, params={"limit": 0}, headers=alice).status_code == 422
    assert api.get(ROUTE).status_code == 401


@pytest.mark.one_backend
def test_a_compliance_officer_adds_recategorises_and_removes_a_name(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url, carol = settings_env.database_url, bearer(people["carol"])
    before = api.get(ROUTE, headers=carol).json()
    assert _decide(url, "Zorblax Quintera on a red carpet").allow

    added = api.post(ROUTE, headers=carol, json={"names": [{"name": " Zorblax Quintera ", "category": "celebrity"},
                                                           {"name": "Quillon Varrest", "category": "living artist"}],
                                                 "note": "ticket 42"})
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["previous_revision"] == before["revision"] and body["revision"] != before["revision"]
    assert body["total"] == before["total"] + 2 and body["added"][0] == {"name": "Zorblax Quintera", "category": "celebrity"}
    listed = api.get(ROUTE, params={"q": "zorblax"}, headers=carol).json()
    assert listed["items"] == [{"name": "Zorblax Quintera", "category": "celebrity"}] and listed["revision"] == body["revision"]
    refused = _decide(url, "z0rblax-quintera on a red carpet")
    assert refused.allow is False and refused.revision == body["revision"]
    assert refused.reasons == ["the prompt names Zorblax Quintera, a protected celebrity"]
    checked = api.post("/api/v1/policies/prompt/check", headers=bearer(people["alice"]),
                       json={"prompt": "in the style of quillon varrest"}).json()
    assert checked["allow"] is False and checked["rule_ids"] == ["prompt.protected_name"]

    moved = api.patch(f"{ROUTE}/zorblax quintera", headers=carol, json={"category": "living artist"})
    assert moved.status_code == 200 and moved.json()["recategorised"] == [{"name": "zorblax quintera", "category": "living artist"}]
    assert _decide(url, "Zorblax Quintera").reasons == ["the prompt names Zorblax Quintera, a protected living artist"]

    removed = api.delete(f"{ROUTE}/Zorblax Quintera", headers=carol)
    assert removed.status_code == 200 and removed.json()["total"] == before["total"] + 1
    allowed = _decide(url, "Zorblax Quintera on a red carpet")
    assert allowed.allow is True and allowed.revision == removed.json()["revision"]

    revisions = [before["revision"], body["revision"], moved.json()["revision"], removed.json()["revision"]]
    assert len(set(revisions)) == 4
    edits = _edits(url)
    assert [(key, actor, revision) for key, _value, actor, revision in edits] == [
        ("prompt.protected_names", "carol@example.com", revision) for revision in revisions[1:]]
    assert all(len(json.dumps(value)) < 300 for _key, value, _actor, _revision in edits)  # the change, not the list
    audited = _audited(url)
    assert [actor for actor, _details in audited] == ["carol@example.com"] * 3
    assert [details["revision"] for _actor, details in audited] == revisions[1:]
    assert audited[0][1]["note"] == "ticket 42" and audited[2][1]["value"] == {"remove": ["Zorblax Quintera"]}


def test_an_admin_removes_shipped_names_in_one_edit(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    assert not _decide(url, "Mickey Mouse and Pikachu having tea").allow
    removed = api.post(f"{ROUTE}/remove", headers=bearer(people["dave"]), json={"names": ["mickey-mouse", "PIKACHU"]})
    assert removed.status_code == 200 and removed.json()["removed"] == ["mickey-mouse", "PIKACHU"]
    assert _decide(url, "Mickey Mouse and Pikachu having tea").allow
    assert _audited(url)[0][0] == "dave@example.com"
    again = api.post(f"{ROUTE}/remove", headers=bearer(people["dave"]), json={"names": ["Mickey Mouse"]})
    assert again.status_code == 404 and again.json()["detail"] == "remove[0]: 'Mickey Mouse' is not a protected name"


def test_other_roles_and_narrow_tokens_get_403_and_nothing_is_stored(api: TestClient, people, settings_env) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    read_only = make_token(url, "carol@example.com", scopes=["read"])
    entry = {"names": [{"name": "Zorblax Quintera", "category": "celebrity"}]}
    for headers in (bearer(people["alice"]), bearer(people["bob"]), bearer(read_only)):
        assert api.get(ROUTE, headers=headers).status_code == 200  # reading is every role's
        for response in (api.post(ROUTE, headers=headers, json=entry),
                         api.post(f"{ROUTE}/remove", headers=headers, json={"names": ["Pikachu"]}),
                         api.delete(f"{ROUTE}/Pikachu", headers=headers),
                         api.patch(f"{ROUTE}/Pikachu", headers=headers, json={"category": "celebrity"})):
            assert response.status_code == 403 and response.json()["error"] == "policy_denied", response.text
    assert _edits(url) == [] and _audited(url) == []


@pytest.mark.parametrize(("method", "path", "body", "status", "detail"), [
    ("post", "", {"names": [{"name": "   ", "category": "celebrity"}]}, 422, "add[0].name: must not be empty"),
    ("post", "", {"names": [{"name": "one two three four five six", "category": "celebrity"}]}, 422,
     "add[0].name: name 'one two three four five six' must have 1 to 5 words after normalisation"),
    ("post", "", {"names": [{"name": "x" * 201, "category": "celebrity"}]}, 422, "add[0].name: 'xxxxxxxx"),
    ("post", "", {"names": [{"name": "Zorblax", "category": "villain"}]}, 422, "add[0].category: 'villain' is not a category"),
    ("post", "", {"names": [{"name": "Zorblax", "category": "celebrity"}, {"name": "Spider Man", "category": "celebrity"}]},
     422, "add[1].name: 'Spider Man' is already protected (as 'Spider-Man')"),
    ("post", "", {"names": [{"name": "Zorblax Q", "category": "celebrity"}, {"name": "zorblax-q", "category": "celebrity"}]},
     422, "add[1].name: 'zorblax-q' is given twice in this edit (also add[0].name)"),
    ("post", "", {"names": [{"name": "Zor\u0000blax", "category": "celebrity"}]}, 422, "add[0].name: 'Zor\\x00blax' contains"),
    ("post", "", {"names": []}, 422, "body.names"),
    ("post", "/remove", {"names": ["Pikachu", "Nobody At All"]}, 404, "remove[1]: 'Nobody At All' is not a protected name"),
    ("delete", "/Nobody At All", None, 404, "remove[0]: 'Nobody At All' is not a protected name"),
    ("patch", "/Nobody At All", {"category": "celebrity"}, 404, "recategorise[0].name: 'Nobody At All' is not a protected name"),
    ("patch", "/Pikachu", {"category": "pokemon"}, 422, "recategorise[0].category: 'pokemon' is not a category"),
])
def test_bad_edits_name_the_field_and_store_nothing(api: TestClient, people, settings_env, method: str, path: str,  # type: ignore[no-untyped-def]
                                                    body: Any, status: int, detail: str) -> None:
    carol = bearer(people["carol"])
    revision = api.get(ROUTE, headers=carol).json()["revision"]
    response = api.request(method.upper(), f"{ROUTE}{path}", headers=carol, json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail", "reasons"}
    assert detail in answer["detail"] or any(detail in str(reason) for reason in answer["reasons"]), answer
    assert _edits(settings_env.database_url) == [] and _audited(settings_env.database_url) == []
    assert api.get(ROUTE, headers=carol).json()["revision"] == revision


@pytest.mark.one_backend
def test_the_sdk_edits_and_reads_the_list(settings_env, people, fresh_policy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with api_server(tmp_path / "uvicorn.log") as (server, _process):
        with Client(server, people["carol"]) as client:
            added = client.policies.add_protected_names([{"name": "Zorblax Quintera", "category": "celebrity"}], note="sdk")
            page = client.policies.protected_names(q="zorblax")
            assert page["items"] == [{"name": "Zorblax Quintera", "category": "celebrity"}]
            assert page["revision"] == added["revision"]
            moved = client.policies.recategorise_protected_name("Zorblax Quintera", "living artist")
            assert moved["revision"] != added["revision"]
            client.policies.remove_protected_names(["Zorblax Quintera"])
            assert client.policies.protected_names(q="zorblax")["total"] == 0
            with pytest.raises(InvalidInput, match="add\\[0\\].category"):
                client.policies.add_protected_names([{"name": "Zorblax", "category": "villain"}])
        with Client(server, people["alice"]) as client, pytest.raises(PolicyDenied):
            client.policies.remove_protected_name("Pikachu")
    assert [actor for actor, _details in _audited(settings_env.database_url)] == ["carol@example.com"] * 3
