"""``latentops policy set-data | history | diff | rollback`` on this machine's database, and the same
commands with ``--server`` through the REST API as the token's user (uvicorn in a subprocess on the
test's database), where the server's access policy decides and a note is required."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_helpers import api_server, make_user


def _json(result) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.one_backend
def test_local_history_diff_and_rollback(cli) -> None:  # type: ignore[no-untyped-def]
    first = _json(cli("policy", "set-data", "screening.thresholds.weapons", "0.4", "--note", "knives in kitchen shots"))
    second = _json(cli("policy", "set-data", "prompt.max_length", "1500", "--note", "shorter prompts"))
    assert (first["edit"], second["edit"]) == (1, 2) and first["revision"] != second["revision"]

    page = _json(cli("policy", "history", "--json"))
    assert [(i["id"], i["key"], i["value"], i["note"]) for i in page["items"]] == [
        (2, "prompt.max_length", 1500, "shorter prompts"), (1, "screening.thresholds.weapons", 0.4, "knives in kitchen shots")]
    assert page["items"][0]["actor"].startswith("cli:")
    table = cli("policy", "history", "--key", "screening")
    assert table.returncode == 0 and "screening.thresholds.weapons" in table.stdout and "prompt.max_length" not in table.stdout

    changed = _json(cli("policy", "diff", "1", "--json"))
    assert changed["from"] == 0 and changed["changes"] == [
        {"key": "screening.thresholds.weapons", "change": "changed", "before": 0.7, "after": 0.4}]
    shown = cli("policy", "diff", "2", "--from", "0")
    assert shown.returncode == 0 and "revision 0 -> 2: 2 change(s)" in shown.stdout and "prompt.max_length: 2000 -> 1500" in shown.stdout

    no_note = cli("policy", "rollback", "1")
    assert no_note.returncode != 0 and "--note" in no_note.stderr
    rolled = _json(cli("policy", "rollback", "1", "--note", "prompts may be long again"))
    assert rolled["restored"] == 1 and rolled["keys"] == ["prompt.max_length"] and rolled["edits"] == [3]
    assert _json(cli("policy", "diff", "3", "--json"))["changes"] == [
        {"key": "prompt.max_length", "change": "changed", "before": 1500, "after": 2000}]
    bad = cli("policy", "set-data", "screening.thresholds.weapons", "2")
    assert bad.returncode == 1 and "screening.thresholds" in bad.stderr and "between 0 and 1" in bad.stderr
    missing = cli("policy", "diff", "42")
    assert missing.returncode == 1 and "NotFound: revision: no policy data revision 42" in missing.stderr
    assert _json(cli("policy", "history", "--json"))["total"] == 3


@pytest.mark.one_backend
def test_remote_set_data_history_diff_and_rollback(cli, settings_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = settings_env.database_url
    carol = make_user(url, "carol@example.com", "compliance_officer", "compliance")
    alice = make_user(url, "alice@example.com", "submitter", "design")
    with api_server(tmp_path / "uvicorn.log") as (server, _process):
        def remote(token: str, *args: str):  # type: ignore[no-untyped-def]
            return cli("--server", server, "--token", token, *args)

        no_note = remote(carol, "policy", "set-data", "screening.release_uncovered", "true")
        assert no_note.returncode == 1 and "note" in no_note.stderr
        edited = _json(remote(carol, "policy", "set-data", "screening.release_uncovered", "true", "--note", "partial coverage"))
        assert edited["edit"] == 1
        page = _json(remote(carol, "policy", "history", "--json"))
        assert [(i["key"], i["actor"], i["note"]) for i in page["items"]] == [
            ("screening.release_uncovered", "carol@example.com", "partial coverage")]
        assert _json(remote(carol, "policy", "diff", "1", "--json"))["changes"] == [
            {"key": "screening.release_uncovered", "change": "changed", "before": False, "after": True}]
        rolled = _json(remote(carol, "policy", "rollback", "0", "--note", "hold uncovered images again"))
        assert rolled["restored"] == 0 and rolled["keys"] == ["screening.release_uncovered"]
        refused = remote(alice, "policy", "history")
        assert refused.returncode == 1 and refused.stderr.startswith("PolicyDenied: ")
        denied = remote(alice, "policy", "set-data", "prompt.max_length", "10", "--note", "x")
        assert denied.returncode == 1 and denied.stderr.startswith("PolicyDenied: ")
    local = _json(cli("policy", "history", "--json"))  # the server's edits are this database's revisions
    assert [i["actor"] for i in local["items"]] == ["carol@example.com", "carol@example.com"]
