"""The portal's dataset pages for data scientists: write a spec, watch its job, preview and download.

A refused spec (YAML error with line and column, a field the schema or the policy refuses) is
shown on the form with the text kept; the dataset page polls its job until it has finished.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from latentops.core.errors import InvalidInput, LatentopsError
from latentops.governance import access
from latentops.platform.api.deps import SessionDep, SettingsDep
from latentops.platform.services import dataset_views
from latentops.platform.web.pages import keep_only_evidence, shown
from latentops.platform.web.portal import PortalUser, render

router = APIRouter(include_in_schema=False)


DATASET_EXAMPLE = """name: digits-aug
model: digits-demo
per_class: 50
seed: 0
format: imagefolder
steps: 20
guidance: 4.0
split: {validation: 0.1}
classes:
  - name: "7"
    prompts: ["a handwritten digit seven"]
  - name: "1"
    prompts: ["a handwritten digit one"]
"""


def _datasets_page(request: Request, session: Any, principal: Any, *, spec: str = DATASET_EXAMPLE, error: str = "",
                   reasons: list[str] | None = None, where: dict[str, int] | None = None,
                   status_code: int = 200) -> HTMLResponse:
    datasets = dataset_views.list_visible(session, principal)
    for item in datasets:
        item["shown_state"] = dataset_views.shown_state(item)
    return render(request, "datasets.html", session=session, principal=principal, available=True, datasets=datasets,
                  spec=spec, error=error, reasons=reasons or [], where=where or {}, status_code=status_code,
                  can_create=access.allowed(session, principal=principal, action="datasets.create"))


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    return _datasets_page(request, session, principal)


@router.post("/datasets", response_class=HTMLResponse)
def datasets_submit(request: Request, session: SessionDep, settings: SettingsDep, principal: PortalUser,
                    spec: Annotated[str, Form(min_length=1, max_length=200_000)]) -> Response:
    """Queue a dataset from its YAML spec; a problem is shown on the form, the spec text kept as typed."""
    import yaml

    from latentops.pipelines.datasets import spec as spec_module
    from latentops.platform.services import datasets as datasets_service

    try:
        data = yaml.safe_load(spec)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = {"line": mark.line + 1, "column": mark.column + 1} if mark is not None else {}
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        at = f" at line {where['line']}, column {where['column']}" if where else ""
        return _datasets_page(request, session, principal, spec=spec, error=f"spec: not valid YAML{at}: {problem}",
                              where=where, status_code=422)
    try:
        parsed = spec_module.parse(data)
        problem = dataset_views.split_problem(parsed)
        if problem:
            raise InvalidInput(problem)
        row, _job = datasets_service.submit_request(session, settings, principal, parsed)
    except LatentopsError as error:
        keep_only_evidence(session, error)
        reasons = [shown(str(r)) for r in error.reasons if str(r) != error.detail]
        return _datasets_page(request, session, principal, spec=spec, error=shown(error.detail), reasons=reasons,
                              status_code=error.status_code)
    return RedirectResponse(f"/datasets/{row.id}", status_code=303)


def _dataset_view(session: Any, principal: Any, dataset_id: int) -> dict[str, Any]:
    row = dataset_views.visible_dataset(session, principal, dataset_id)
    data = dataset_views.dataset_json(session, row)
    data["shown_state"] = dataset_views.shown_state(data)
    ready = row.state == "ready"
    return {"dataset": data, "card": dataset_views.card_html(dataset_views.card_text(row)) if ready else "",
            "thumbnails": dataset_views.thumbnail_ids(session, row) if ready else [],
            "manifest": dataset_views.manifest_preview(row) if ready else None}


@router.get("/datasets/{dataset_id:int}", response_class=HTMLResponse)
def dataset_page(dataset_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    return render(request, "dataset.html", session=session, principal=principal,
                  **_dataset_view(session, principal, dataset_id))


@router.get("/datasets/{dataset_id:int}/status", response_class=HTMLResponse)
def dataset_status(dataset_id: int, request: Request, session: SessionDep, principal: PortalUser) -> HTMLResponse:
    """The dataset's live part; it replaces itself every two seconds until the run has ended."""
    return render(request, "fragments/dataset_live.html", principal=principal,
                  **_dataset_view(session, principal, dataset_id))


@router.get("/datasets/{dataset_id:int}/images/{asset_id:int}")
def dataset_image(dataset_id: int, asset_id: int, request: Request, session: SessionDep,
                  principal: PortalUser) -> Response:
    row = dataset_views.visible_dataset(session, principal, dataset_id)
    return Response(content=dataset_views.dataset_image(session, row, asset_id), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/datasets/{dataset_id:int}/manifest")
def dataset_manifest(dataset_id: int, request: Request, session: SessionDep, principal: PortalUser) -> Response:
    """The dataset's Croissant manifest (JSON-LD), to read or load without downloading the images."""
    row = dataset_views.visible_dataset(session, principal, dataset_id)
    return Response(content=dataset_views.manifest_text(row), media_type="application/ld+json",
                    headers={"Content-Disposition": f'inline; filename="{row.name}-croissant.json"'})


@router.get("/datasets/{dataset_id:int}/download")
def dataset_download(dataset_id: int, request: Request, session: SessionDep, principal: PortalUser) -> Response:
    row = dataset_views.visible_dataset(session, principal, dataset_id)
    return Response(content=dataset_views.export_zip(session, principal, row), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{row.name}.zip"'})
