"""The SDK's calls for compliance officers and admins: policy data as revisions (in force, history, diff,
edit, rollback, job quotas) and the screening set-up (status, calibration). ``Client.policies`` and
``Client.screening`` carry them (``resources.Policies`` and ``resources.Screening``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from latentops.client.http import Http


class PolicyData:
    """``/policies/data`` and ``/policies/jobs/quotas``."""

    _http: Http

    def data(self, *, domain: str | None = None) -> dict[str, Any]:
        """The policy data in force per domain, with the bundle revision and the latest edit id."""
        return cast(dict[str, Any], self._http.json("GET", "/policies/data", params={"domain": domain}))

    def data_history(self, *, key: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """The data edits (revisions), newest first: ``{items: [{id, key, value, actor, note, at, revision}], total, next_offset}``."""
        return cast(dict[str, Any], self._http.json("GET", "/policies/data/history",
                                                    params={"key": key, "offset": offset, "limit": limit}))

    def data_diff(self, to: int, *, since: int | None = None) -> dict[str, Any]:
        """The changes from revision ``since`` (default: the one before) to revision ``to``, per dotted key."""
        return cast(dict[str, Any], self._http.json("GET", "/policies/data/diff", params={"to": to, "from": since}))

    def set_data(self, key: str, value: Any, *, note: str) -> dict[str, Any]:
        """Edit one key (checked, a new revision, audited); ``InvalidInput`` names the key and the reason."""
        return cast(dict[str, Any], self._http.json("POST", "/policies/data", body={"key": key, "value": value, "note": note}))

    def rollback(self, to: int, *, note: str) -> dict[str, Any]:
        """Restore revision ``to``'s data (0: the policy files') with new, audited edits."""
        return cast(dict[str, Any], self._http.json("POST", "/policies/data/rollback", body={"to": to, "note": note}))

    def quotas(self) -> dict[str, Any]:
        """Per team: quotas, the GPU-hour period and when it began, and the team's use now."""
        return cast(dict[str, Any], self._http.json("GET", "/policies/jobs/quotas"))


class ScreeningAdmin:
    """``/screening/status`` and ``/screening/calibrate``."""

    _http: Http

    def status(self) -> dict[str, Any]:
        """The detectors in force and, per category (``categories``), the detectors covering it and its threshold."""
        return cast(dict[str, Any], self._http.json("GET", "/screening/status"))

    def calibrate(self, labels: Path | tuple[str, bytes], images: Sequence[Path | tuple[str, bytes]], *,
                  target_fpr: float = 0.01) -> dict[str, Any]:
        """Fit thresholds on a labelled set (CSV or ``.jsonl`` with ``file`` and ``label`` columns, and the
        images by file name); stored as a new policy-data revision. Answers the per-category report."""
        label_name, label_data = _named(labels)
        parts = [("labels", (label_name, label_data, "text/plain"))]
        parts += [("images", (name, data, "application/octet-stream")) for name, data in map(_named, images)]
        return cast(dict[str, Any], self._http.json("POST", "/screening/calibrate", data={"target_fpr": str(target_fpr)},
                                                    files=parts))


def _named(item: Path | tuple[str, bytes]) -> tuple[str, bytes]:
    return (item.name, item.read_bytes()) if isinstance(item, Path) else item
