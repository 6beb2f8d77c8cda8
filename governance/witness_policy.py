"""Whether enough witnesses cosigned the log: the M-of-N check of ``latentops audit verify``.

Given N witness keys (cosignature/v1 vkeys) and M, the latest checkpoint must carry valid
cosignatures from at least M of them. Every stored cosignature from a given key, on any checkpoint,
must verify: one that does not is evidence that the stored note or cosignature was altered. The
standalone verifier makes the same check on an export (``check_cosignatures`` there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from latentops.core.errors import InvalidInput
from latentops.governance import checkpoints, signed_note
from latentops.governance.tables import AuditCheckpoint
from latentops.governance.tables.witness import AuditCosignature, AuditWitnessStatus


@dataclass
class WitnessReport:
    required: int
    keys: list[str]  # name+keyhash of each key checked
    tree_size: int | None = None  # the latest checkpoint's
    cosigned: list[str] = field(default_factory=list)  # keys that cosigned the latest checkpoint
    missing: dict[str, str] = field(default_factory=dict)  # key -> why (the witness's last answer)
    bad: list[str] = field(default_factory=list)  # cosignatures that do not verify

    @property
    def ok(self) -> bool:
        return not self.bad and len(self.cosigned) >= self.required

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "required": self.required, "keys": self.keys, "tree_size": self.tree_size,
                "cosigned": self.cosigned, "missing": self.missing, "bad": self.bad}

    def failure(self) -> str:
        """One line naming what is wrong (for ``IntegrityViolation``)."""
        if self.bad:
            return f"witness cosignature does not verify: {self.bad[0]}"
        missing = "; ".join(f"{key} ({why})" for key, why in self.missing.items())
        return (f"{len(self.cosigned)} of {len(self.keys)} witnesses cosigned the latest checkpoint (tree size "
                f"{self.tree_size}), {self.required} required; missing: {missing}")


def read_keys(values: Sequence[str]) -> list[signed_note.Verifier]:
    """Witness keys given as vkeys, ``vkey@url`` (as configured), or files holding one of those."""
    from pathlib import Path

    keys = []
    for value in values:
        text = value.strip()
        if text.count("+") < 2 and Path(text).expanduser().is_file():
            text = Path(text).expanduser().read_text(encoding="utf-8").strip()
        vkey = text.rpartition("@")[0] if "@" in text else text
        key = signed_note.parse_vkey(vkey)
        if key.kind != signed_note.COSIGNATURE_V1:
            raise InvalidInput(f"--witness-key {key.name}: type {key.kind:#04x}, a witness key has type 0x04")
        keys.append(key)
    return keys


def _id(key: signed_note.Verifier) -> str:
    return f"{key.name}+{key.key_hash.hex()}"


def check(session: Session, keys: Sequence[signed_note.Verifier], required: int) -> WitnessReport:
    """Check every stored cosignature by ``keys`` and that ``required`` of them cosigned the latest."""
    if not 0 <= required <= len(keys):
        raise InvalidInput(f"--witnesses-required: must be between 0 and the {len(keys)} witness keys given "
                           f"(got {required})")
    report = WitnessReport(required, [_id(key) for key in keys])
    by_id = {(key.name, key.key_hash.hex()): key for key in keys}
    rows = session.execute(sa.select(AuditCosignature, AuditCheckpoint).join(
        AuditCheckpoint, AuditCheckpoint.id == AuditCosignature.checkpoint_id)).all()
    for cosignature, checkpoint in rows:
        key = by_id.get((cosignature.witness, cosignature.key_hash))
        if key is None:
            continue
        note = checkpoints.statement(checkpoint).get("note")
        valid = note is not None and _cosigned(signed_note.parse_note(note).text, cosignature.line, key)
        if not valid:
            report.bad.append(f"{_id(key)} on checkpoint {checkpoint.id} (tree size {checkpoint.tree_size})")
    latest = checkpoints.latest(session)
    if latest is None:
        report.missing = {_id(key): "no checkpoint yet" for key in keys}
        return report
    report.tree_size = latest.tree_size
    item = checkpoints.cosigned_statement(session, latest)
    if "note" not in item:
        report.missing = {_id(key): "the latest checkpoint is of the first form (no note to cosign)" for key in keys}
        return report
    note = signed_note.parse_note(item["note"])
    statuses = {row.witness: row for row in session.execute(sa.select(AuditWitnessStatus)).scalars()}
    for key in keys:
        if any(signed_note.cosignature_time(note.text, line, key) is not None for line in note.signatures):
            report.cosigned.append(_id(key))
            continue
        status = statuses.get(_id(key))
        if status is None:
            report.missing[_id(key)] = "never answered a submission from this deployment"
        else:
            report.missing[_id(key)] = status.last_error or f"last cosigned a tree of {status.cosigned_size} entries"
    return report


def _cosigned(text: str, line: str, key: signed_note.Verifier) -> bool:
    try:
        return signed_note.cosignature_time(text, signed_note.parse_signature_line(line), key) is not None
    except InvalidInput:
        return False


def health(session: Session, witnesses: Sequence[Any]) -> dict[str, Any]:
    """The health report's ``audit_witnesses``: ``ok`` when every configured witness cosigned the
    newest checkpoint, else ``missing`` with each witness's last answer."""
    report = check(session, [witness.key for witness in witnesses], 0)
    statuses = {row.witness: row for row in session.execute(sa.select(AuditWitnessStatus)).scalars()}
    each = {}
    for key in report.keys:
        status = statuses.get(key)
        each[key] = {"cosigned_latest": key in report.cosigned,
                     "last_cosigned_size": None if status is None else status.cosigned_size,
                     "seconds_since_cosignature": None if status is None else _age(status.last_success_at)}
        if key in report.missing:
            each[key]["detail"] = report.missing[key]
    return {"status": "ok" if not report.missing and not report.bad else "missing", "tree_size": report.tree_size,
            "witnesses": each}


def _age(at: Any) -> float | None:
    import datetime as dt

    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return round(max((dt.datetime.now(dt.UTC) - at).total_seconds(), 0.0), 1)
