"""The CLI against a server: ``latentops --server URL --token T ...`` drives the real API (uvicorn in
a subprocess on loopback, on the test's database) as the token's user, and the SDK underneath
raises the platform's own errors.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from api_helpers import api_server, expire_token, make_user
from PIL import Image

from latentops.governance import policy
from latentops.platform.database import session_scope


@pytest.fixture
def server(queue_settings, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``uvicorn`` serving the app factory on the test's database and broker; yields its base URL."""
    with api_server(tmp_path / "uvicorn.log") as (base, _):
        yield base


def remote(cli, base: str, token: str, *args: str):  # type: ignore[no-untyped-def]
    return cli("--server", base, "--token", token, *args)


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.one_backend
def test_remote_commands_act_as_the_token_user_under_the_servers_policy(server: str, cli, database_url: str) -> None:  # type: ignore[no-untyped-def]
    from latentops.client import Client, NotFound, PolicyDenied

    admin = make_user(database_url, "dave@example.com", "admin", "ops")
    alice = make_user(database_url, "alice@example.com", "submitter", "design")
    bob = make_user(database_url, "bob@example.com", "submitter", "marketing")

    created = remote(cli, server, admin, "users", "create", "--email", "erin@example.com", "--role", "submitter",
                     "--team", "Design", "--json")
    assert created.returncode == 0, created.stderr
    assert {k: v for k, v in json.loads(created.stdout).items() if k != "id"} == {
        "email": "erin@example.com", "team": "design", "role": "submitter"}
    listed = lines(remote(cli, server, admin, "users", "list", "--json").stdout)
    assert {"email": "erin@example.com", "teams": "design:submitter", "active": "yes"}.items() <= listed[-1].items()
    refused = remote(cli, server, alice, "users", "list")
    assert refused.returncode == 1 and refused.stderr.startswith("PolicyDenied: ")

    # Jobs: alice sees and controls her team's job; bob (another team) is told it does not exist.
    with Client(server, alice) as api:
        job = api.jobs.submit("diagnostics", params={"steps": 2})
        with pytest.raises(PolicyDenied):
            api.users.list()
    with Client(server, bob) as api, pytest.raises(NotFound, match=f"no job with id {job['id']}"):
        api.jobs.get(job["id"])
    shown = remote(cli, server, alice, "jobs", "list", "--json")
    assert [(row["id"], row["state"], row["team"]) for row in lines(shown.stdout)] == [(job["id"], "queued", "design")]
    assert lines(remote(cli, server, bob, "jobs", "list", "--json").stdout) == []
    hidden = remote(cli, server, bob, "jobs", "show", str(job["id"]))
    assert (hidden.returncode, hidden.stderr.strip()) == (1, f"NotFound: job: no job with id {job['id']}")
    cancelled = remote(cli, server, alice, "jobs", "cancel", str(job["id"]))
    assert cancelled.stdout.strip() == f"job {job['id']}: cancellation requested (state cancelled)"
    assert "cancelled before it started" in remote(cli, server, alice, "jobs", "logs", str(job["id"])).stdout
    watched = remote(cli, server, alice, "jobs", "watch", str(job["id"]), "--json")
    assert watched.returncode == 1 and lines(watched.stdout)[-1]["state"] == "cancelled"

    # Policies through the server: the prompt check names the rule; the revision is the server's.
    blocked = remote(cli, server, alice, "policy", "check-prompt", "Mickey Mouse on a skateboard", "--json")
    decision = json.loads(blocked.stdout)
    assert blocked.returncode == 1 and decision["allow"] is False and decision["rule_ids"]
    revision = json.loads(remote(cli, server, alice, "policy", "revision", "--json").stdout)["revision"]
    assert revision == decision["revision"]
    assert remote(cli, server, alice, "models", "list", "--json").stdout == ""

    # Tokens: issued to the token's own user; revoked and expired tokens get one line and exit 1.
    made = remote(cli, server, alice, "tokens", "create", "--name", "ci", "--scope", "read", "--json")
    spare = json.loads(made.stdout)
    assert made.returncode == 0 and spare["scopes"] == "read" and spare["token"].startswith("lat_")
    other = remote(cli, server, alice, "tokens", "create", "--email", "bob@example.com", "--json")
    assert other.returncode == 1 and "issues tokens to the signed-in user only" in other.stderr
    assert remote(cli, server, alice, "tokens", "revoke", str(spare["id"])).returncode == 0
    revoked = remote(cli, server, spare["token"], "jobs", "list")
    assert (revoked.returncode, revoked.stderr.strip()) == (1, "AuthenticationFailed: token: this token was revoked")
    expire_token(database_url, bob)
    expired = cli("jobs", "list", env={"LATENTOPS_SERVER": server, "LATENTOPS_TOKEN": bob})
    assert (expired.returncode, expired.stderr.strip()) == (1, "AuthenticationFailed: token: this token has expired")

    # The audit trail through the server: an auditor's query sees the remote user's changes; a submitter may not.
    page = json.loads(remote(cli, server, admin, "audit", "query", "--action", "user.create", "--reveal", "--json").stdout)
    assert any(e["identity"] == "dave@example.com" for e in page["entries"])
    assert remote(cli, server, alice, "audit", "query").stderr.startswith("PolicyDenied: ")

    # Commands that act on this machine refuse --server instead of touching the local database.
    for args in (("db", "upgrade"), ("worker",), ("models", "create-tiny", "--out", "x", "--family", "sd1")):
        local = remote(cli, server, admin, *args)
        assert local.returncode == 1 and len(local.stderr.strip().splitlines()) == 1, local.stderr
        assert f"latentops {args[0]}" in local.stderr and "runs on this machine only" in local.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unreachable_server_and_missing_token_are_one_line_each(cli) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = cli("--server", f"http://127.0.0.1:{port}", "--token", "lat_x", "jobs", "list")
    assert down.returncode == 1 and down.stderr.startswith(f"ServiceUnavailable: server unreachable at http://127.0.0.1:{port}")
    bare = cli("--server", f"http://127.0.0.1:{port}", "jobs", "list")
    assert (bare.returncode, bare.stderr.strip()) == (
        1, "AuthenticationFailed: token: no API token given (pass one or set LATENTOPS_TOKEN)")


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_remote_finetune_uploads_the_images_and_watch_follows_the_job_to_done(  # type: ignore[no-untyped-def]
        server: str, cli, database_url: str, start_worker, tmp_path: Path) -> None:
    from latentops.core.settings import get_settings
    from latentops.pipelines import tiny
    from latentops.platform.services import models as models_service

    alice = make_user(database_url, "alice@example.com", "submitter", "design")
    source = tiny.create("sd1", tmp_path / "tiny-sd1")
    with session_scope(database_url) as db:
        models_service.import_model(db, source=source, name="tiny", actor="system",
                                    store_root=get_settings().model_store, sensitivity="public")
        # Uploads are content-screened; with no detector for most categories, policy data releases them.
        revision = policy.set_policy_data(db, key="screening.release_without_detector", value=True, actor="cli:test")
    # The server takes in data edits at its next check (every few seconds): wait until it serves them.
    deadline = time.monotonic() + 30
    while json.loads(remote(cli, server, alice, "policy", "revision", "--json").stdout)["revision"] != revision:
        assert time.monotonic() < deadline, "the server did not take in the policy data edit"
    instances = tmp_path / "instances"
    instances.mkdir()
    rng = np.random.default_rng(5)
    for index in range(3):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((96, 96), Image.Resampling.NEAREST).save(instances / f"p{index}.png")
    (instances / "p0.txt").write_text("a sks pattern, red", encoding="utf-8")
    job_toml = tmp_path / "job.toml"
    job_toml.write_text("[finetune]\nsamples = false\n", encoding="utf-8")  # no sample grid: the tiniest run
    submitted = remote(cli, server, alice, "finetune", "submit", "--config", str(job_toml), "--model", "tiny", "--method", "lora",
                       "--instance-dir", str(instances), "--instance-prompt", "a sks pattern", "--steps", "2",
                       "--rank", "4", "--resolution", "32", "--checkpoint-every", "2", "--lr", "0.001",
                       "--attest-licence", "--attest-consent", "--name", "remote-pattern", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    start_worker("gpu")
    watched = remote(cli, server, alice, "jobs", "watch", str(job_id), "--json")
    updates = lines(watched.stdout)
    assert watched.returncode == 0, (watched.stderr, updates[-1])
    assert updates[-1]["state"] == "succeeded" and updates[-1]["finished"] is True
    assert len({u["state"] for u in updates}) >= 2  # the stream showed it moving, not just the end
    shown = json.loads(remote(cli, server, alice, "jobs", "show", str(job_id), "--json").stdout)
    assert shown["result"]["adapter"] == "remote-pattern" and shown["result"]["steps"] == 2
