"""``/api/v1/datasets``: queue synthetic dataset jobs, follow them, read the card, download.

``POST`` takes the spec as JSON (the same keys as the YAML file) and runs the same checks as the
CLI before queueing: the spec (422 naming the field), the model, the ``datasets`` policy (403 with
reasons). Reading is team-isolated like jobs; a download is an ``export`` under the datasets
policy (members of the owning team), decided and audited, and streams a zip of the dataset
(both rules in ``services.dataset_views``). ``POST /datasets/{id}/packages`` queues the same
archive as a ``dataset_package`` job on the ``cpu`` queue (after the same ``export`` decision) and
answers the job; ``GET /datasets/{id}/packages/{job_id}`` downloads the finished zip (decided and
audited again: who downloads need not be who packaged).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, PlainTextResponse

from latentops.pipelines.datasets.spec import DatasetSpec
from latentops.platform.api.deps import PrincipalDep, SessionDep, SettingsDep
from latentops.platform.services.dataset_views import (
    card_text,
    dataset_json,
    export_zip,
    list_visible,
    visible_dataset,
)

router = APIRouter(tags=["datasets"])


@router.post("/datasets", status_code=201)
def create(spec: DatasetSpec, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a dataset job from a spec (JSON with the YAML spec's keys; unknown keys are refused)."""
    from latentops.platform.services import datasets as datasets_service

    row, job = datasets_service.submit_request(session, settings, principal, spec)
    return {"dataset_id": row.id, "job_id": job.id}


@router.get("/datasets")
def list_all(session: SessionDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """Datasets the caller may see, newest first."""
    return list_visible(session, principal)


@router.get("/datasets/{dataset_id}")
def show(dataset_id: int, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return dataset_json(session, visible_dataset(session, principal, dataset_id))


@router.get("/datasets/{dataset_id}/card", response_class=PlainTextResponse)
def card(dataset_id: int, session: SessionDep, principal: PrincipalDep) -> str:
    """The dataset card (Markdown)."""
    return card_text(visible_dataset(session, principal, dataset_id))


@router.get("/datasets/{dataset_id}/download", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}})
def download(dataset_id: int, session: SessionDep, principal: PrincipalDep) -> Response:
    """The dataset as a zip; decided by the datasets policy (export) and audited."""
    row = visible_dataset(session, principal, dataset_id)
    data = export_zip(session, principal, row)
    return Response(content=data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{row.name}.zip"'})




@router.post("/datasets/{dataset_id}/packages", status_code=201)
def package(dataset_id: int, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Queue a ``dataset_package`` job (cpu queue): the dataset as one zip, with manifest and card."""
    from latentops.platform.services import cpu_jobs
    from latentops.platform.services.jobs.views import submitted_json

    row = visible_dataset(session, principal, dataset_id)
    job = cpu_jobs.submit_dataset_package(session, settings, actor=principal.email, dataset_id=row.id,
                                          policy_actor=principal.user)
    return submitted_json(session, job)


@router.get("/datasets/{dataset_id}/packages/{job_id}", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}}})
def package_download(dataset_id: int, job_id: int, session: SessionDep, settings: SettingsDep,
                     principal: PrincipalDep) -> FileResponse:
    """The zip of a finished ``dataset_package`` job of this dataset (409 while it runs; decided and audited)."""
    from latentops.core.errors import NotFound
    from latentops.platform.services import cpu_jobs
    from latentops.platform.services.jobs.views import visible_job

    row = visible_dataset(session, principal, dataset_id)
    job = visible_job(session, principal, job_id)
    if job.kind != "dataset_package" or (job.params or {}).get("dataset_id") != row.id:
        raise NotFound(f"job: no package job {job_id} of dataset {row.id}")
    path = cpu_jobs.result_file(settings, job, kind="dataset_package")
    cpu_jobs.check_package_download(session, row, principal.user)
    cpu_jobs.record_download(session, actor=principal.email, job=job, path=path, action="dataset.export",
                             resource=f"dataset:{row.id}")
    return FileResponse(path, media_type="application/zip", filename=path.name)
