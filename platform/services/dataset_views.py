"""What a caller may see and take of the datasets: visibility, JSON, the card and the zip export.

Shared by ``/api/v1/datasets`` and the portal's dataset pages. Reading is team-isolated like jobs
(another team's dataset is ``NotFound``, like a missing one); a download is an ``export`` under
the datasets policy (members of the owning team), decided and audited. The dataset service
(images and screening) is imported on first use, so reading this module stays light.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from latentops.core.errors import Conflict, NotFound
from latentops.governance import access, audit, policy
from latentops.governance.access import Principal
from latentops.platform.services import teams
from latentops.platform.services.jobs.views import job_json, visible_team_ids
from latentops.platform.tables import Asset, Dataset, Job, Team


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


# --- the portal's view of a dataset -------------------------------------------------------------

MIN_TRAIN_PER_CLASS = 5  # fewer training images per class than this is no useful split
THUMBNAILS = 12
MANIFEST_PREVIEW_CHARS = 4000


def shown_state(data: dict[str, Any]) -> str:
    """The dataset's state as a person should read it: a queued dataset whose job already runs (or
    ended without it) shows the job's state, since the row only changes when the run completes."""
    job = data.get("job") or {}
    if data["state"] in {"pending", "queued"} and job.get("state") in {"running", "failed", "cancelled"}:
        return str(job["state"])
    return str(data["state"])


def split_problem(spec: Any) -> str | None:
    """Why the spec's validation split leaves too few training images per class, or None when it does not.

    The validation share is at least one image per class once it is above zero, so 10% of 3 images
    leaves at most 2 to train on."""
    fraction = spec.split.validation
    if fraction <= 0:
        return None
    for cls in spec.classes:
        count = spec.count(cls)
        train = count - max(1, round(count * fraction))
        if train < MIN_TRAIN_PER_CLASS:
            return (f"split.validation: {fraction:g} of {count} images per class (class {cls.name!r}) leaves about "
                    f"{max(train, 0)} to train on; at least {MIN_TRAIN_PER_CLASS} per class are needed: raise per_class "
                    f"to {math.ceil((MIN_TRAIN_PER_CLASS + 1) / (1 - fraction))} or more, or set split.validation to 0")
    return None


def thumbnail_ids(session: Session, row: Dataset, limit: int = THUMBNAILS) -> list[int]:
    """Released images of the dataset that are in its files (the filters may have dropped others)."""
    listed = _listed_asset_ids(row)
    query = sa.select(Asset.id).where(Asset.dataset_id == row.id, Asset.status == "released").order_by(Asset.id)
    if listed is not None:
        query = query.where(Asset.id.in_(sorted(listed)[: limit * 4] or [-1]))
    return list(session.scalars(query.limit(limit)))


def _listed_asset_ids(row: Dataset) -> set[int] | None:
    if not row.path:
        return None
    files = sorted(Path(row.path).glob("*/metadata.jsonl"))
    if not files:
        return None
    ids: set[int] = set()
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                value = json.loads(line).get("asset_id")
                if isinstance(value, int):
                    ids.add(value)
    return ids


def dataset_image(session: Session, row: Dataset, asset_id: int) -> bytes:
    asset = session.get(Asset, asset_id)
    if asset is None or asset.dataset_id != row.id or asset.status != "released" or not asset.path \
            or not Path(asset.path).is_file():
        raise NotFound(f"image: dataset {row.id} has no released image {asset_id}")
    return Path(asset.path).read_bytes()


def manifest_text(row: Dataset) -> str:
    """The dataset's Croissant manifest (``croissant.json``) as written; Conflict until it is ready."""
    if row.state != "ready" or not row.path:
        raise Conflict(f"dataset {row.id} is {row.state}; its manifest is written when it is ready")
    name = str((row.stats or {}).get("manifest") or "croissant.json")
    path = Path(row.path) / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
        raise NotFound(f"manifest: dataset {row.id} has no manifest")
    return path.read_text(encoding="utf-8")


def manifest_preview(row: Dataset) -> dict[str, Any]:
    """What the dataset page shows of the manifest: its main facts, its files and the start of the JSON."""
    text = manifest_text(row)
    document = json.loads(text)
    generation = document.get("latentops:generation") or {}
    files = [{"name": d.get("name"), "format": d.get("encodingFormat"), "sha256": str(d.get("sha256") or "")[:16]}
             for d in document.get("distribution") or [] if d.get("@type") == "cr:FileObject"]
    preview = json.dumps(document, indent=2, sort_keys=True)
    return {"name": document.get("name"), "license": document.get("license"), "conforms_to": document.get("conformsTo"),
            "counts": generation.get("counts") or {}, "images": generation.get("images"),
            "model": generation.get("model") or {}, "files": files,
            "json": preview[:MANIFEST_PREVIEW_CHARS], "truncated": len(preview) > MANIFEST_PREVIEW_CHARS}


# --- the dataset card as safe HTML -----------------------------------------------------------------

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^\s)]+)\)")


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and http(s) links; nothing else of the source becomes markup."""
    out, last = [], 0
    pattern = re.compile(f"{_INLINE.pattern}|{_LINK.pattern}")
    for match in pattern.finditer(text):
        out.append(str(escape(text[last:match.start()])))
        code, bold, label, url = match.groups()
        if code is not None:
            out.append(f"<code>{escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{escape(bold)}</strong>")
        else:
            out.append(f'<a href="{escape(url)}" rel="nofollow noopener">{escape(label)}</a>')
        last = match.end()
    out.append(str(escape(text[last:])))
    return "".join(out)


def card_html(text: str) -> Markup:
    """The dataset card (Markdown with YAML front matter) as safe HTML: headings, paragraphs, lists,
    tables, code, bold and http(s) links. Raw HTML in the card is shown as text, never rendered."""
    lines = text.replace("\r\n", "\n").split("\n")
    html: list[str] = []
    if lines and lines[0].strip() == "---" and "---" in (line.strip() for line in lines[1:]):
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        html.append('<pre class="front-matter">' + str(escape("\n".join(lines[1:end]))) + "</pre>")
        lines = lines[end + 1:]
    paragraph: list[str] = []
    index = 0

    def flush() -> None:
        if paragraph:
            html.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()

    while index < len(lines):
        line = lines[index].rstrip()
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = min(len(heading.group(1)) + 1, 6)  # the page has its own h1
            html.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif re.match(r"^[-*]\s+", stripped):
            flush()
            items = []
            while index < len(lines) and re.match(r"^\s*[-*]\s+", lines[index]):
                items.append("<li>" + _inline(re.sub(r"^\s*[-*]\s+", "", lines[index]).strip()) + "</li>")
                index += 1
            html.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif stripped.startswith("|"):
            flush()
            rows = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                rows.append([cell.strip() for cell in lines[index].strip().strip("|").split("|")])
                index += 1
            body = [r for r in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in r if c)]
            head, rest = (body[0], body[1:]) if len(rows) > 1 and body else ([], body)
            table = ['<div class="table-scroll"><table class="grid compact">']
            if head:
                table.append("<thead><tr>" + "".join(f'<th scope="col">{_inline(c)}</th>' for c in head) + "</tr></thead>")
            table.append("<tbody>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                                             for r in rest) + "</tbody></table></div>")
            html.append("".join(table))
            continue
        else:
            paragraph.append(stripped)
        index += 1
    flush()
    return Markup("\n".join(html))
