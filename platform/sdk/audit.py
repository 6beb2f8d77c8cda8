"""The audit trail over REST: queries and reveals, verification, checkpoints and proofs, exports
(in the request or queued on the cpu queue) and evidence packs (docs/audit.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from latentops.client.http import Http, download
from latentops.client.types import AuditPage, Job, PublicKeys, VerifyReport


class Audit:
    def __init__(self, http: Http) -> None:
        self._http = http

    def query(self, *, since: str | None = None, until: str | None = None, actor: str | None = None,
              action: str | None = None, resource: str | None = None, outcome: str | None = None,
              after: int | None = None, limit: int = 50, reveal: bool = False) -> AuditPage:
        """One page in sequence order; pass ``next_after`` back as ``after`` for the next. Actors are
        pseudonyms; ``reveal`` (compliance officers and admins; recorded in the trail) adds each
        entry's ``identity`` and the page's ``identities`` (pseudonym -> identity, None once erased)."""
        params = {"since": since, "until": until, "actor": actor, "action": action, "resource": resource,
                  "outcome": outcome, "after": after, "limit": limit}
        if reveal:  # a POST: the reveal writes an audit entry
            return cast(AuditPage, self._http.json("POST", "/audit/entries/reveal", params=params))
        return cast(AuditPage, self._http.json("GET", "/audit/entries", params=params))

    def verify(self) -> VerifyReport:
        """Recompute the chain and the Merkle tree on the server and check every checkpoint (audited)."""
        return cast(VerifyReport, self._http.json("POST", "/audit/verify", timeout=None))

    def checkpoint(self, *, force: bool = False) -> dict[str, Any]:
        """Sign the current tree; the latest checkpoint comes back unchanged when nothing was added, unless ``force``."""
        return cast(dict[str, Any], self._http.json("POST", "/audit/checkpoints", params={"force": force or None}))

    def public_keys(self) -> PublicKeys:
        """The checkpoint public keys as PEM: the current key and the keyring (rotated-out keys too)."""
        return cast(PublicKeys, self._http.json("GET", "/audit/public-keys"))

    def inclusion(self, seq: int) -> dict[str, Any]:
        return cast(dict[str, Any], self._http.json("GET", "/audit/proofs/inclusion", params={"seq": seq}))

    def consistency(self, old: int, new: int) -> dict[str, Any]:
        return cast(dict[str, Any], self._http.json("GET", "/audit/proofs/consistency", params={"old": old, "new": new}))

    def consistency_from(self, from_size: int) -> dict[str, Any]:
        """Consistency proofs from tree size ``from_size`` (an export's) to every later signed checkpoint."""
        return cast(dict[str, Any], self._http.json("GET", "/audit/proofs/later", params={"from_size": from_size}))

    def export(self, dest: Path, *, format: str = "jsonl", since: str | None = None, until: str | None = None,
               actor: str | None = None, action: str | None = None, resource: str | None = None,
               outcome: str | None = None, name: str | None = None) -> Path:
        """Download the evidence zip (entries with proofs, signed checkpoint, public keys) to ``dest``;
        ``name`` names the entries file inside it (default ``audit.<format>``)."""
        params = {"format": format, "since": since, "until": until, "actor": actor, "action": action,
                  "resource": resource, "outcome": outcome, "name": name}
        # A POST: the export signs a checkpoint and writes an audit entry.
        return download(self._http, "/audit/export", Path(dest), params, "latentops-audit-export.zip", method="POST")

    def queue_export(self, *, format: str = "jsonl", since: str | None = None, until: str | None = None,
                     actor: str | None = None, action: str | None = None, resource: str | None = None,
                     outcome: str | None = None, name: str | None = None) -> Job:
        """Queue the same export as an ``audit_export`` job on the cpu queue; follow it with
        ``jobs.wait`` and fetch its zip with :meth:`download_export`."""
        params = {"format": format, "since": since, "until": until, "actor": actor, "action": action,
                  "resource": resource, "outcome": outcome, "name": name}
        return cast(Job, self._http.json("POST", "/audit/exports", params=params))

    def download_export(self, job_id: int, dest: Path) -> Path:
        """The zip of a finished ``audit_export`` job (``dest``: a file, or a folder for the server's name)."""
        return download(self._http, f"/audit/exports/{job_id}", Path(dest), {}, f"latentops-audit-export-{job_id}.zip")

    def evidence(self, dest: Path, *, start: str, end: str) -> Path:
        """The evidence pack of ``[start, end)`` to ``dest`` (docs/audit.md#evidence-pack); signs and is audited."""
        return download(self._http, "/audit/evidence", Path(dest), {"from": start, "to": end}, "evidence.zip", method="POST")
