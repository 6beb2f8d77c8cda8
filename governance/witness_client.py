"""Submitting checkpoints to witnesses (C2SP tlog-witness) and keeping their cosignatures.

Each witness is configured as ``name+keyhash+base64key@url`` (``Settings.audit_witnesses``: its
cosignature/v1 vkey and its submission prefix). After a checkpoint commits, ``submit_after_commit``
starts one thread that posts it to every witness at once (``POST <url>/add-checkpoint``: ``old N``,
the RFC 6962 consistency proof from N, a blank line, the signed note) with a short timeout
(``Settings.audit_witness_timeout_s``). Nothing waits for it: a witness that is down, slow, refuses
or answers a bad signature leaves the checkpoint made and stored; the outcome goes to
``audit_witness_status`` and to ``latentops_audit_witness_submissions_total{witness,outcome}``, and
``audit verify``, the health report and the metrics report the missing cosignature. A 409 names
the size the witness last cosigned: the request is made again once with the proof from that size.
A witness that missed the latest checkpoint is asked again by the periodic integrator
(``resubmit_due``, every ``Settings.audit_witness_retry_s``).

A cosignature is stored (``audit_cosignatures``) only after it verified with the configured key.
"""

from __future__ import annotations

import atexit
import base64
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.core.orm import utcnow
from latentops.governance import merkle, merkle_store, signed_note
from latentops.governance.tables import AuditCheckpoint
from latentops.governance.tables.witness import AuditCosignature, AuditWitnessStatus

log = logging.getLogger(__name__)

SUBMISSIONS = Counter("latentops_audit_witness_submissions_total",
                      "Checkpoint submissions to witnesses, by witness and outcome "
                      "(cosigned, superseded, refused, unreachable, bad_signature)", ["witness", "outcome"])
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Witness:
    key: signed_note.Verifier  # cosignature/v1 (type 0x04)
    url: str  # submission prefix

    @property
    def id(self) -> str:
        """``name+keyhash``: how reports, metrics and ``audit_witness_status`` name the witness."""
        return f"{self.key.name}+{self.key.key_hash.hex()}"


def parse_witness(spec: str) -> Witness:
    """``name+keyhash+base64key@url`` into a witness; the key must be a cosignature/v1 (0x04) key."""
    vkey, at, url = spec.strip().rpartition("@")
    if not at or not url.startswith(("http://", "https://")):
        raise InvalidInput(f"witness: expected name+keyhash+base64key@http(s)://url (got {spec.strip()[:100]!r})")
    key = signed_note.parse_vkey(vkey)
    if key.kind != signed_note.COSIGNATURE_V1:
        raise InvalidInput(f"witness {key.name}: its vkey has type {key.kind:#04x}, a witness cosigns with 0x04")
    return Witness(key, url.rstrip("/"))


def configured() -> list[Witness]:
    from latentops.core.settings import get_settings

    return [parse_witness(spec) for spec in get_settings().audit_witnesses]


def cosignature_lines(session: Session, checkpoint_id: int) -> list[str]:
    """The stored cosignature lines of a checkpoint, each ending in a newline, in a stable order."""
    rows = session.execute(sa.select(AuditCosignature.line).where(AuditCosignature.checkpoint_id == checkpoint_id)
                           .order_by(AuditCosignature.witness, AuditCosignature.key_hash)).scalars()
    return [line + "\n" for line in rows]


# --- one submission -----------------------------------------------------------------------------


@dataclass
class Outcome:
    witness: str
    outcome: str  # cosigned, superseded, refused, unreachable, bad_signature
    status: int  # HTTP status, 0 when no answer came
    detail: str = ""  # for "cosigned": the signature line
    cosigned_size: int | None = None  # the size a 409 named
    timestamp: int = 0  # the cosignature's


def request_body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    """The add-checkpoint body: ``old N``, one base64 proof line per hash, a blank line, the note."""
    lines = [f"old {old}"] + [base64.b64encode(node).decode("ascii") for node in proof]
    return ("".join(line + "\n" for line in lines) + "\n" + note).encode("utf-8")


def _post(url: str, body: bytes, timeout: float) -> tuple[int, str, str]:
    request = urllib.request.Request(f"{url}/add-checkpoint", data=body, method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), \
                response.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")


def _proof(session: Session, old: int, size: int) -> list[bytes]:
    if old in (0, size):
        return []
    tree = merkle_store.StoredTree(session, size)
    return tree.prepared(lambda mth: merkle.consistency_path(old, size, mth))


def _exchange(engine: Engine, witness: Witness, note: str, size: int, old: int, timeout: float) -> Outcome:
    """Post the checkpoint, once more from the size a 409 names; verify what comes back."""
    text = signed_note.parse_note(note).text
    for attempt in range(2):
        with Session(engine) as session:
            body = request_body(old, _proof(session, old, size), note)
        status, content_type, answer = _post(witness.url, body, timeout)
        if status == 409 and content_type.split(";")[0].strip() == SIZE_CONTENT_TYPE and attempt == 0:
            try:
                known = int(answer.strip())
            except ValueError:
                return Outcome(witness.id, "refused", status, f"409 with an unreadable size {answer[:40]!r}")
            if known > size:
                return Outcome(witness.id, "refused", status, f"the witness has cosigned a tree of {known} entries, "
                               f"larger than this checkpoint's {size}: the log was rolled back or forked",
                               cosigned_size=known)
            old = known
            continue
        if status != 200:
            return Outcome(witness.id, "refused", status, f"{status}: {answer.strip()[:200]}")
        for line in answer.splitlines():
            try:
                signature = signed_note.parse_signature_line(line)
            except InvalidInput:
                continue
            timestamp = signed_note.cosignature_time(text, signature, witness.key)
            if timestamp is not None:
                return Outcome(witness.id, "cosigned", status, signature.line().rstrip("\n"), timestamp=timestamp)
            if signature.name == witness.key.name and signature.key_hash == witness.key.key_hash:
                return Outcome(witness.id, "bad_signature", status, "a cosignature from its key that does not verify")
        return Outcome(witness.id, "bad_signature", status, "no cosignature from its configured key in the answer")
    return Outcome(witness.id, "refused", 409, "409 twice")


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(witness: Witness) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(witness.id, threading.Lock())


def submit_one(engine: Engine, witness: Witness, checkpoint_id: int, note: str, *, timeout: float) -> Outcome:
    """Submit one checkpoint to one witness and record the outcome; never raises."""
    size = 0
    with _lock(witness):  # one request per witness at a time, so two checkpoints do not race each other
        try:
            size = signed_note.parse_checkpoint(signed_note.parse_note(note).text).size
            with Session(engine) as session:
                status = session.get(AuditWitnessStatus, witness.id)
                known = status.cosigned_size if status is not None and status.cosigned_size is not None else 0
                if session.execute(sa.select(AuditCosignature.id).where(
                        AuditCosignature.checkpoint_id == checkpoint_id, AuditCosignature.witness == witness.key.name,
                        AuditCosignature.key_hash == witness.key.key_hash.hex())).first() is not None:
                    return Outcome(witness.id, "cosigned", 200, "already cosigned")
                if known > size:  # a later checkpoint was cosigned meanwhile: nothing to do
                    return Outcome(witness.id, "superseded", 200, f"the witness already cosigned {known} entries")
            outcome = _exchange(engine, witness, note, size, known, timeout)
        except (OSError, TimeoutError) as error:
            outcome = Outcome(witness.id, "unreachable", 0, f"{type(error).__name__}: {error}")
        except (LatentopsError, ValueError, sa.exc.SQLAlchemyError) as error:
            outcome = Outcome(witness.id, "refused", 0, f"{type(error).__name__}: {error}")
        try:
            _record(engine, witness, checkpoint_id, size if outcome.outcome == "cosigned" else None, outcome)
        except sa.exc.SQLAlchemyError as error:
            log.warning("witness %s: the outcome could not be stored: %s", witness.id, error)
        SUBMISSIONS.labels(witness.id, outcome.outcome).inc()
        if outcome.outcome != "cosigned":
            log.warning("witness %s did not cosign checkpoint %s: %s %s", witness.id, checkpoint_id, outcome.outcome,
                        outcome.detail)
        return outcome


def _record(engine: Engine, witness: Witness, checkpoint_id: int, size: int | None, outcome: Outcome) -> None:
    now = utcnow()
    with Session(engine) as session, session.begin():
        if session.get(AuditCheckpoint, checkpoint_id) is None:
            return  # its transaction rolled back after all
        status = session.get(AuditWitnessStatus, witness.id)
        if status is None:
            status = AuditWitnessStatus(witness=witness.id, url=witness.url)
            session.add(status)
        status.url, status.last_attempt_at, status.last_status = witness.url, now, outcome.status
        if outcome.outcome == "cosigned" and size is not None:
            status.last_success_at, status.last_error = now, None
            status.cosigned_size = max(size, status.cosigned_size or 0)
            if outcome.detail != "already cosigned":
                session.add(AuditCosignature(checkpoint_id=checkpoint_id, witness=witness.key.name,
                                             key_hash=witness.key.key_hash.hex(), tree_size=size,
                                             timestamp=outcome.timestamp, line=outcome.detail))
        else:
            status.last_error = f"{outcome.outcome}: {outcome.detail}"[:2000]


def submit(engine: Engine, checkpoint_id: int, note: str, witnesses: Sequence[Witness] | None = None,
           *, timeout: float | None = None) -> list[Outcome]:
    """Submit to every witness in parallel and wait for all (at most about twice the timeout)."""
    from latentops.core.settings import get_settings

    chosen = list(configured() if witnesses is None else witnesses)
    limit = get_settings().audit_witness_timeout_s if timeout is None else timeout
    results: list[Outcome] = []
    threads = [threading.Thread(target=lambda w=w: results.append(submit_one(engine, w, checkpoint_id, note,
                                                                                      timeout=limit)),
                                name=f"witness-{w.key.name}", daemon=True) for w in chosen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# --- in the background --------------------------------------------------------------------------

_running: set[threading.Thread] = set()
_running_guard = threading.Lock()


def _start(target: Callable[[], object], name: str) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except Exception:
            log.exception("witness submission failed")
        finally:
            with _running_guard:
                _running.discard(thread)

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _running_guard:
        _running.add(thread)
    thread.start()
    return thread


def wait_idle(timeout: float) -> bool:
    """Wait until no submission runs (tests, and a short-lived CLI before it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        with _running_guard:
            pending = list(_running)
        if not pending:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        pending[0].join(remaining)


@atexit.register
def _finish_at_exit() -> None:
    from latentops.core.settings import get_settings

    try:
        wait_idle(2 * get_settings().audit_witness_timeout_s + 1)
    except LatentopsError:
        pass


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def submit_after_commit(session: Session, checkpoint_id: int, note: str) -> None:
    """Submit the checkpoint to the configured witnesses once the session commits, in a thread."""
    try:
        witnesses = configured()
    except LatentopsError as error:
        log.warning("audit witnesses not used: %s", error)
        return
    if not witnesses:
        return
    engine = _engine_of(session)

    def committed(_session: Session) -> None:
        _start(lambda: submit(engine, checkpoint_id, note, witnesses), f"witness-submit-{checkpoint_id}")

    sa.event.listen(session, "after_commit", committed, once=True)


_last_retry: dict[tuple[str, str], float] = {}


def resubmit_due(engine: Engine, latest: Callable[[Session], tuple[int, str] | None]) -> None:
    """Ask again, in the background, every witness that has not cosigned the latest checkpoint and
    was last asked more than ``Settings.audit_witness_retry_s`` ago by this process."""
    from latentops.core.settings import get_settings

    settings = get_settings()
    try:
        witnesses = configured()
        with Session(engine) as session:
            found = latest(session)
            if found is None:
                return
            checkpoint_id, note = found
            done = {(name, key_hash) for name, key_hash in session.execute(
                sa.select(AuditCosignature.witness, AuditCosignature.key_hash)
                .where(AuditCosignature.checkpoint_id == checkpoint_id))}
    except (LatentopsError, sa.exc.SQLAlchemyError) as error:
        log.warning("audit witnesses not asked again now: %s", error)
        return
    now = time.monotonic()
    due = []
    for witness in witnesses:
        if (witness.key.name, witness.key.key_hash.hex()) in done:
            continue
        key = (str(engine.url), witness.id)
        if now - _last_retry.get(key, -1e9) >= settings.audit_witness_retry_s:
            _last_retry[key] = now
            due.append(witness)
    if due:
        _start(lambda: submit(engine, checkpoint_id, note, due), f"witness-retry-{checkpoint_id}")

