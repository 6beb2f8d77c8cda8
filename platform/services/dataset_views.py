"""What a caller may see and take of the datasets: visibility, JSON, the card and the zip export.

Shared by ``/api/v1/datasets`` and the portal's dataset pages. Reading is team-isolated like jobs
(another team's dataset is ``NotFound``, like a missing one); a download is an ``export`` under
the datasets policy (members of the owning team), decided and audited. The dataset service
(images and screening) is imported on first use, so reading this module stays light.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from latentops.core.errors import Conflict
from latentops.governance import access, audit, policy
from latentops.governance.access import Principal
from latentops.platform.services import teams
from latentops.platform.services.jobs.views import job_json, visible_team_ids
from latentops.platform.tables import Dataset, Job, Team


def visible_dataset(session: Session, principal: Principal, dataset_id: int) -> Dataset:
    """The dataset if the caller may read it; another team's dataset is NotFound, like a missing one."""
    return teams.visible_row(session, principal, Dataset, dataset_id, action="datasets.read",
                             missing=f"dataset: no dataset with id {dataset_id}")


def dataset_json(session: Session, row: Dataset) -> dict[str, Any]:
    from latentops.platform.services import datasets as datasets_service

    data = datasets_service.as_dict(session, row)
    job = session.get(Job, row.job_id) if row.job_id else None
    data["job"] = job_json(session, job) if job else None
    data.pop("path", None)  # a server path is of no use to a client
    return data


def list_visible(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The datasets of the caller's teams (every team's for roles that see them all), newest first."""
    from latentops.platform.services import datasets as datasets_service

    access.check(session, principal=principal, action="datasets.read")
    team_ids = visible_team_ids(session, principal, "datasets.read")
    rows = datasets_service.list_datasets(session, team_ids=None if team_ids is None else [*team_ids])
    return [dataset_json(session, r) for r in rows]


def card_text(row: Dataset) -> str:
    card = Path(row.path) / "README.md" if row.path else None
    if row.state != "ready" or card is None or not card.is_file():
        raise Conflict(f"dataset {row.id} is {row.state}; its card is written when it is ready")
    return card.read_text(encoding="utf-8")


def export_zip(session: Session, principal: Principal, row: Dataset) -> bytes:
    """The dataset folder as a zip (without the run's working files); an audited ``export`` decision."""
    if row.state != "ready":
        raise Conflict(f"dataset {row.id} is {row.state}; it can be downloaded when it is ready")
    team = session.get(Team, row.team_id) if row.team_id else None
    # A denial raises out of the request's session_scope, which commits it: it is evidence.
    policy.require("datasets", {"action": "export", "team": team.name if team else "",
                                "dataset": {"images": int(row.stats.get("images", 0)), "team": team.name if team else ""}},
                   session=session, actor=principal.user)
    root = Path(row.path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and ".latentops" not in p.relative_to(root).parts):
            archive.write(path, arcname=f"{row.name}/{path.relative_to(root).as_posix()}")
    audit.record(session, actor=principal.email, action="dataset.export", resource=f"dataset:{row.id}",
                 details={"bytes": buffer.tell()})
    return buffer.getvalue()
