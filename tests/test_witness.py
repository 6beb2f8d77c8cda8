"""Independent witnesses of the audit log (C2SP tlog-witness, tlog-cosignature).

The witness runs for real: ``latentops witness serve`` in a subprocess, or its server in a thread on
a free port. Checkpoints are submitted after their commit without blocking appends; a witness
cosigns only what is consistent with what it cosigned before, so a fork or a rollback is refused
and ``audit verify --witness-key ... --witnesses-required M`` reports it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REPO, fresh_database
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from latentops.core.settings import Settings, get_settings
from latentops.governance import (
    audit,
    checkpoints,
    merkle,
    signed_note,
    witness,
    witness_client,
    witness_policy,
)
from latentops.governance.tables.witness import AuditCosignature, AuditWitnessStatus
from latentops.platform.database import session_scope

ORIGIN = "latentops.example/audit/test"
VERIFIER = REPO / "governance" / "verifier" / "latentops_audit_verify.py"


# --- helpers -----------------------------------------------------------------------------------


def append(url: str, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        with session_scope(url) as db:
            audit.record(db, actor="ops@example.com", action="job.submit", resource=f"job:{index}", details={"i": index})


def checkpoint(settings: Settings) -> int:
    key = checkpoints.default_key_path(settings)
    with session_scope(settings.database_url) as db:
        made = checkpoints.create(db, signing_key=checkpoints.load_or_create_signing_key(key),
                                  sink=checkpoints.open_sink(checkpoints.default_sink_location(settings)),
                                  keyring=checkpoints.signing_keyring(key))
        return made.id


def log_vkey_file(settings: Settings, folder: Path) -> Path:
    key = checkpoints.load_or_create_signing_key(checkpoints.default_key_path(settings))
    path = folder / "log.vkey"
    path.write_text(checkpoints.log_verifier(ORIGIN, key.public_key()) + "\n")
    return path


class ThreadWitness:
    """The real witness server in a thread, on a free port."""

    def __init__(self, state: Path, name: str, log_key: Path) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.witness = witness.Witness(name=name, key=self.key, state=state,
                                       logs={ORIGIN: [witness.read_log_key(ORIGIN, log_key)]})
        self.httpd = witness.server(self.witness, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def spec(self) -> str:
        return f"{self.witness.verifier.vkey()}@{self.url}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ProcessWitness:
    """``latentops witness init`` and ``serve`` as a subprocess; the URL is read from its first line."""

    def __init__(self, state: Path, name: str, log_key: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTOPS_") or k.startswith("LATENTOPS_TEST")}
        command = [sys.executable, "-m", "latentops.platform.cli.main", "witness"]
        init = subprocess.run([*command, "init", "--name", name, "--state", str(state)], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=60, check=True)
        self.vkey = init.stdout.strip()
        self.process = subprocess.Popen([*command, "serve", "--port", "0", "--state", str(state),
                                         "--log", f"{ORIGIN}={log_key}"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it listens (or exits)
        if "listening on " not in line:
            self.process.kill()
            raise AssertionError(f"the witness did not start: {line!r} {self.process.communicate()[1]}")
        self.url = line.split("listening on ")[1].split()[0]

    @property
    def spec(self) -> str:
        return f"{self.vkey}@{self.url}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def configure(monkeypatch: pytest.MonkeyPatch, *specs: str, timeout: float = 2.0, cli=None) -> Settings:  # type: ignore[no-untyped-def]
    """The origin and witnesses, for this process and the CLI subprocesses of ``cli``."""
    values = {"LATENTOPS_AUDIT_ORIGIN": ORIGIN, "LATENTOPS_AUDIT_WITNESSES": json.dumps(list(specs)),
              "LATENTOPS_AUDIT_WITNESS_TIMEOUT_S": str(timeout)}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    if cli is not None:
        cli.env.update(values)
    get_settings.cache_clear()
    return get_settings()


def cosigners(url: str, checkpoint_id: int) -> list[str]:
    with session_scope(url) as db:
        return sorted(db.execute(sa.select(AuditCosignature.witness)
                                 .where(AuditCosignature.checkpoint_id == checkpoint_id)).scalars())


def statuses(url: str) -> dict[str, AuditWitnessStatus]:
    with session_scope(url) as db:
        rows = db.execute(sa.select(AuditWitnessStatus)).scalars().all()
        db.expunge_all()
        return {row.witness.split("+")[0]: row for row in rows}


@pytest.fixture
def log_key(settings_env: Settings, tmp_path: Path) -> Path:
    return log_vkey_file(settings_env, tmp_path)


# --- the note format ---------------------------------------------------------------------------


def test_checkpoint_is_a_c2sp_note_and_verifies_with_its_vkey(settings_env: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    configure(monkeypatch)
    append(settings_env.database_url, 3)
    made = checkpoint(settings_env)
    with session_scope(settings_env.database_url) as db:
        row = db.get(checkpoints.AuditCheckpoint, made)
        item = checkpoints.statement(row)
    note = signed_note.parse_note(item["note"])
    lines = note.text.splitlines()
    assert lines[0] == ORIGIN and lines[1] == "3"
    assert base64.b64decode(lines[2]).hex() == item["root_hash"]
    assert lines[3] == f"head {item['head_hash']}" and lines[4] == f"time {item['at']}"
    assert item["signature"].startswith("\u2014 " + ORIGIN + " ")
    public = checkpoints.load_signing_key(checkpoints.default_key_path(settings_env)).public_key()
    vkey = signed_note.parse_vkey(checkpoints.log_verifier(ORIGIN, public))
    assert vkey.key_hash == __import__("hashlib").sha256(ORIGIN.encode() + b"\n\x01"
                                                         + signed_note.raw_public_key(public)).digest()[:4]
    assert signed_note.signature_valid(note.text, note.signatures[0], vkey)
    assert checkpoints.signature_valid(item, public)
    assert not checkpoints.signature_valid({**item, "root_hash": "00" * 32}, public)


def _old_form_checkpoint(settings: Settings) -> None:
    """A checkpoint exactly as the first form wrote it: bare base64 over ``latentops audit checkpoint v1``."""
    from latentops.core.orm import utcnow
    from latentops.governance import audit_chain, integration
    from latentops.governance.tables import AuditCheckpoint, AuditEntry

    key = checkpoints.load_or_create_signing_key(checkpoints.default_key_path(settings))
    with session_scope(settings.database_url) as db:
        integration.catch_up(db)
        hashes = db.execute(sa.select(AuditEntry.hash).order_by(AuditEntry.seq)).scalars().all()
        frontier = merkle.Frontier()
        for value in hashes:
            frontier.append(merkle.leaf_hash(audit_chain.leaf_data(value)))
        at = utcnow()
        body = checkpoints.statement_body(len(hashes), frontier.root().hex(), hashes[-1], audit_chain.format_time(at))
        row = AuditCheckpoint(tree_size=len(hashes), root_hash=frontier.root().hex(), head_hash=hashes[-1], at=at,
                              key_id=checkpoints.key_id(key.public_key()),
                              signature=base64.b64encode(key.sign(body)).decode(), frontier=json.dumps(frontier.to_hex()))
        db.add(row)
        db.flush()
        checkpoints.open_sink(checkpoints.default_sink_location(settings)).append(checkpoints.statement(row))


def test_old_checkpoints_keep_verifying_beside_new_ones(settings_env: Settings, cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        monkeypatch) -> None:
    configure(monkeypatch, cli=cli)
    append(settings_env.database_url, 3)
    _old_form_checkpoint(settings_env)
    append(settings_env.database_url, 2, start=3)
    checkpoint(settings_env)  # the new form extends the old one (its signature is checked first)
    result = cli("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "2 checkpoints (2 in the sink) verified" in " ".join(result.stdout.split())
    out = tmp_path / "export.jsonl"
    assert cli("audit", "export", "--out", str(out)).returncode == 0
    proofs = json.loads(out.with_name(out.name + ".proofs.json").read_text())
    assert proofs["consistency"][0]["checkpoint"]["signature"][0] != "\u2014"  # the old form, kept
    assert proofs["checkpoint"]["signature"].startswith("\u2014 ")
    pub = tmp_path / "log.pub"
    assert cli("audit", "public-key", "--out", str(pub)).returncode == 0
    done = subprocess.run([sys.executable, str(VERIFIER), str(out), "--public-key", str(pub), "--checkpoints",
                           settings_env.audit_sink], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    # A note whose root was changed no longer verifies, in the standalone verifier too.
    proofs["checkpoint"]["root_hash"] = "ab" * 32
    forged = tmp_path / "forged.proofs.json"
    forged.write_text(json.dumps(proofs))
    done = subprocess.run([sys.executable, str(VERIFIER), str(out), "--public-key", str(pub), "--proofs", str(forged)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "forged_checkpoint" in done.stderr, done.stderr


# --- the witness protocol, request by request --------------------------------------------------


def _post(url: str, body: bytes) -> tuple[int, str, str]:
    request = urllib.request.Request(f"{url}/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def _note(tree: merkle.MerkleTree, size: int, key: Ed25519PrivateKey, origin: str = ORIGIN) -> str:
    text = signed_note.Checkpoint(origin, size, tree.root(size), ("head x", "time y")).text()
    return signed_note.Note(text, [signed_note.sign(text, origin, key)]).render()


def test_witness_answers_as_the_specification_says(tmp_path: Path) -> None:
    log_key = Ed25519PrivateKey.generate()
    vkey = tmp_path / "log.vkey"
    vkey.write_text(signed_note.verifier(ORIGIN, signed_note.ED25519, log_key.public_key()).vkey())
    served = ThreadWitness(tmp_path / "w", "witness.example/w1", vkey)
    try:
        tree = merkle.MerkleTree(merkle.leaf_hash(bytes([i])) for i in range(20))
        fork = merkle.MerkleTree(merkle.leaf_hash(bytes([i, 1])) for i in range(20))
        body = witness_client.request_body
        note8 = _note(tree, 8, log_key)
        assert _post(served.url, b"old 0\n\n" + note8.encode())[0] == 200
        # Every refusal, in the specification's terms.
        assert _post(served.url, body(0, [], _note(tree, 8, log_key, "other.example/log")))[0] == 404
        assert _post(served.url, body(8, [], _note(tree, 8, Ed25519PrivateKey.generate())))[0] == 403
        forged = note8.replace(base64.b64encode(tree.root(8)).decode(), base64.b64encode(tree.root(9)).decode())
        assert _post(served.url, body(8, [], forged))[0] == 403  # known key, signature fails
        assert _post(served.url, body(9, [], note8))[0] == 400  # old size above the checkpoint's
        assert _post(served.url, b"old 08\n\n" + note8.encode())[0] == 400
        assert _post(served.url, b"nonsense")[0] == 400
        status, content_type, answer = _post(served.url, body(0, [], _note(tree, 12, log_key)))
        assert (status, content_type, answer) == (409, "text/x.tlog.size", "8\n")
        assert _post(served.url, body(8, tree.consistency_proof(8, 12)[1:], _note(tree, 12, log_key)))[0] == 422
        assert _post(served.url, body(8, fork.consistency_proof(8, 12), _note(fork, 12, log_key)))[0] == 422  # fork
        assert _post(served.url, body(8, [], _note(fork, 8, log_key)))[0] == 422  # same size, another root
        assert _post(served.url, body(8, [], _note(tree, 5, log_key)))[0] == 400  # rollback: smaller tree
        # The valid extension is cosigned, with a cosignature/v1 that verifies over the note text.
        note12 = _note(tree, 12, log_key)
        status, _, answer = _post(served.url, body(8, tree.consistency_proof(8, 12), note12))
        assert status == 200 and answer.startswith("\u2014 witness.example/w1 ")
        line = signed_note.parse_signature_line(answer)
        stamp = signed_note.cosignature_time(signed_note.parse_note(note12).text, line, served.witness.verifier)
        assert stamp is not None and abs(stamp - time.time()) < 60
        assert served.witness.latest(ORIGIN)[0] == 12  # type: ignore[index]
        # The state survives a restart: a new witness on the same folder still holds 12.
        again = witness.Witness(name="witness.example/w1", key=served.key, state=tmp_path / "w",
                                logs={ORIGIN: [witness.read_log_key(ORIGIN, vkey)]})
        assert again.add_checkpoint(body(8, tree.consistency_proof(8, 20), _note(tree, 20, log_key))).status == 409
        import hashlib

        with urllib.request.urlopen(f"{served.url}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint") as got:
            assert got.read().decode().count("\u2014 ") == 2  # the log's signature and the witness's
    finally:
        served.stop()


# --- end to end --------------------------------------------------------------------------------


def test_cosigned_end_to_end_with_a_witness_process_and_m_of_n(settings_env: Settings, log_key: Path, cli,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path, monkeypatch) -> None:
    process = ProcessWitness(tmp_path / "w1", "witness.example/w1", log_key)
    threaded = ThreadWitness(tmp_path / "w2", "witness.example/w2", log_key)
    try:
        configure(monkeypatch, process.spec, threaded.spec, cli=cli)
        url = settings_env.database_url
        append(url, 5)
        first = checkpoint(settings_env)
        assert witness_client.wait_idle(20)
        assert cosigners(url, first) == ["witness.example/w1", "witness.example/w2"]
        append(url, 4, start=5)
        second = checkpoint(settings_env)  # submitted with the consistency proof from 5
        assert witness_client.wait_idle(20)
        assert cosigners(url, second) == ["witness.example/w1", "witness.example/w2"]
        # A witness whose size this deployment lost track of answers 409 with it and gets the proof on retry.
        with session_scope(url) as db:
            db.execute(sa.update(AuditWitnessStatus).values(cosigned_size=None))
        append(url, 3, start=9)
        third = checkpoint(settings_env)
        assert witness_client.wait_idle(20)
        assert cosigners(url, third) == ["witness.example/w1", "witness.example/w2"]
        assert threaded.witness.latest(ORIGIN)[0] == 12  # type: ignore[index]

        keys = ["--witness-key", process.vkey, "--witness-key", threaded.witness.verifier.vkey()]
        result = cli("audit", "verify", *keys, "--witnesses-required", "2")
        assert result.returncode == 0, result.stderr
        assert "witnesses: 2 of 2 cosigned the latest checkpoint (tree size 12" in " ".join(result.stdout.split())
        out = tmp_path / "export.jsonl"
        assert cli("audit", "export", "--out", str(out)).returncode == 0
        pub = tmp_path / "log.pub"
        assert cli("audit", "public-key", "--out", str(pub)).returncode == 0
        done = subprocess.run([sys.executable, str(VERIFIER), str(out), "--public-key", str(pub),
                               "--witness-key", process.vkey, "--witness-key", threaded.witness.verifier.vkey()],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "cosigned by 2 of 2 witnesses" in done.stdout

        # One witness goes away: the next checkpoint is made anyway; 1 of 2 passes M=1, fails M=2.
        threaded.stop()
        append(url, 2, start=12)
        checkpoint(settings_env)
        assert witness_client.wait_idle(20)
        assert cli("audit", "verify", *keys, "--witnesses-required", "1").returncode == 0
        result = cli("audit", "verify", *keys, "--witnesses-required", "2")
        assert result.returncode == 1
        message = " ".join(result.stderr.split())
        assert "1 of 2 witnesses cosigned the latest checkpoint (tree size" in message, message
        assert "2 required; missing: witness.example/w2+" in message
        assert "unreachable" in result.stderr
        out2 = tmp_path / "export2.jsonl"
        assert cli("audit", "export", "--out", str(out2)).returncode == 0
        done = subprocess.run([sys.executable, str(VERIFIER), str(out2), "--public-key", str(pub),
                               "--witness-key", process.vkey, "--witness-key", threaded.witness.verifier.vkey(),
                               "--witnesses-required", "2"], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and "witness_missing" in done.stderr and "witness.example/w2" in done.stderr
    finally:
        process.stop()
        threaded.stop() if threaded.thread.is_alive() else None


def test_fork_and_rollback_are_refused_and_reported(settings_env: Settings, log_key: Path, cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    monkeypatch, request: pytest.FixtureRequest) -> None:
    served = ThreadWitness(tmp_path / "w", "witness.example/w1", log_key)
    backend = "postgres" if settings_env.database_url.startswith("postgresql") else "sqlite"
    forks: list[Iterator[str]] = []
    try:
        configure(monkeypatch, served.spec, cli=cli)
        append(settings_env.database_url, 8)
        honest = checkpoint(settings_env)
        assert witness_client.wait_idle(20) and cosigners(settings_env.database_url, honest) == ["witness.example/w1"]

        for name, count in (("fork", 12), ("rollback", 5)):
            # Another database, same origin and signing key, another history: what an operator who
            # rewrote (or restored an older copy of) the log would sign and submit.
            (tmp_path / name).mkdir()
            generator = fresh_database(backend, tmp_path / name, request)
            forks.append(generator)
            other = next(generator)
            # Its own copy of the sink too: the operator controls that as well; the witness they do not.
            moved = {"LATENTOPS_DATABASE_URL": other, "LATENTOPS_AUDIT_SINK": str(tmp_path / name / "sink.jsonl")}
            for variable, value in moved.items():
                monkeypatch.setenv(variable, value)
            cli.env.update(moved)
            get_settings.cache_clear()
            with session_scope(other) as db:
                audit.record(db, actor="mallory@example.com", action="job.submit", resource="job:x", details={})
            append(other, count - 1, start=100)
            made = checkpoint(get_settings())  # made and stored although the witness refuses it
            assert witness_client.wait_idle(20)
            assert cosigners(other, made) == []
            status = statuses(other)["witness.example/w1"]
            if name == "fork":
                assert status.last_status == 422 and "does not verify: a fork" in (status.last_error or "")
            else:
                assert status.last_status == 409 and "larger than this checkpoint's 5: the log was rolled back" \
                    in (status.last_error or "")
            result = cli("audit", "verify", "--witness-key", served.witness.verifier.vkey(), "--witnesses-required", "1")
            assert result.returncode == 1
            assert f"0 of 1 witnesses cosigned the latest checkpoint (tree size {count})" in " ".join(result.stderr.split())
        assert served.witness.latest(ORIGIN)[0] == 8  # type: ignore[index]
    finally:
        served.stop()
        for generator in forks:
            for _ in generator:
                pass


# --- witnesses that fail never block -----------------------------------------------------------


class _Misbehaving(BaseHTTPRequestHandler):
    release: threading.Event
    cosign_with: Ed25519PrivateKey | None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.cosign_with is None:
            self.release.wait(30)  # slow: holds the request past the client's timeout
            body = b""
        else:  # a cosignature line from the right name and key hash whose signature is garbage
            good = signed_note.cosign("x\n", "witness.example/bad", self.cosign_with, 5)
            body = signed_note.Signature(good.name, good.key_hash, bytes(72)).line().encode()
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def _misbehaving(release: threading.Event, key: Ed25519PrivateKey | None) -> ThreadingHTTPServer:
    handler = type("Handler", (_Misbehaving,), {"release": release, "cosign_with": key})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_unreachable_slow_and_lying_witnesses_do_not_block_and_are_reported(  # type: ignore[no-untyped-def]
        settings_env: Settings, cli, monkeypatch) -> None:
    from latentops.platform.api.health import _audit_witnesses
    from latentops.platform.metrics.db import DatabaseCollector

    release = threading.Event()
    slow, bad_key = _misbehaving(release, None), Ed25519PrivateKey.generate()
    lying = _misbehaving(release, bad_key)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    specs = [
        (f"{signed_note.verifier('witness.example/down', 4, Ed25519PrivateKey.generate().public_key()).vkey()}"
        f"@http://127.0.0.1:{closed}"),
        (f"{signed_note.verifier('witness.example/slow', 4, Ed25519PrivateKey.generate().public_key()).vkey()}"
        f"@http://127.0.0.1:{slow.server_address[1]}"),
        (f"{signed_note.verifier('witness.example/bad', 4, bad_key.public_key()).vkey()}"
        f"@http://127.0.0.1:{lying.server_address[1]}"),
    ]
    try:
        settings = configure(monkeypatch, *specs, timeout=0.5, cli=cli)
        append(settings.database_url, 3)
        started = time.monotonic()
        made = checkpoint(settings)
        append(settings.database_url, 2, start=3)  # appends go on while the submissions wait
        took = time.monotonic() - started
        assert took < 0.5, f"checkpoint and appends took {took:.2f}s: they waited for the witnesses"
        assert witness_client.wait_idle(20)
        with session_scope(settings.database_url) as db:
            assert db.get(checkpoints.AuditCheckpoint, made) is not None
        found = statuses(settings.database_url)
        assert found["witness.example/down"].last_status == 0 and "unreachable" in found["witness.example/down"].last_error
        assert "unreachable" in (found["witness.example/slow"].last_error or "")  # timed out
        assert found["witness.example/bad"].last_error == "bad_signature: a cosignature from its key that does not verify"
        assert cosigners(settings.database_url, made) == []

        health = _audit_witnesses(settings)
        assert health["status"] == "missing" and len(health["witnesses"]) == 3
        assert not any(item["cosigned_latest"] for item in health["witnesses"].values())
        metrics = {m.name: m for m in DatabaseCollector(settings.database_url).collect()}
        assert metrics["latentops_audit_checkpoint_cosignatures"].samples[0].value == 0
        assert sorted(s.labels["witness"].split("+")[0] for s in metrics["latentops_audit_witness_cosigned_latest"].samples
                      if s.value == 0) == ["witness.example/bad", "witness.example/down", "witness.example/slow"]
        with session_scope(settings.database_url) as db:
            report = witness_policy.check(db, [w.key for w in witness_client.configured()], 1)
        assert not report.ok and {k.split("+")[0] for k in report.missing} == {
            "witness.example/down", "witness.example/slow", "witness.example/bad"}
        result = cli("audit", "verify")  # configured witnesses: reported, not required
        assert result.returncode == 0, result.stderr
        assert "warning: 0 of 3 witnesses cosigned the latest checkpoint" in " ".join(result.stderr.split())
    finally:
        release.set()
        for httpd in (slow, lying):
            httpd.shutdown()
            httpd.server_close()
