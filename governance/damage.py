"""Damage to the audit trail: what a check found wrong, and where.

``verification.verify`` reports its findings as a list of these (the kinds are listed there);
``guards.missing`` finds the ``guard_missing`` ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Damage:
    kind: str
    seq: int | None
    detail: str

    def line(self) -> str:
        where = f" at seq {self.seq}" if self.seq is not None else ""
        return f"{self.kind}{where}: {self.detail}"
