"""The console's side of the ``cpu`` job kinds (``services.cpu_jobs``): queue them on this
machine's database and broker, and take their files from the shared home."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from latentops.platform.cli import context
from latentops.platform.cli.backends.base import AuditFilters, unpack_export


class LocalCpuJobs:
    def package_dataset(self, dataset_id: int) -> dict[str, Any]:
        from latentops.platform.services import cpu_jobs, jobs

        with context.session() as db:  # a denial commits its decision; the job goes to the broker once this commits
            job = cpu_jobs.submit_dataset_package(db, context.settings(), actor=context.actor(), dataset_id=dataset_id)
            return jobs.as_dict(job)

    def fetch_dataset_package(self, dataset_id: int, job_id: int, out: Path) -> Path:
        import shutil

        from latentops.platform.services import cpu_jobs, jobs

        with context.session() as db:
            path = cpu_jobs.result_file(context.settings(), jobs.get(db, job_id), kind="dataset_package")
        target = out / path.name if out.is_dir() else out
        shutil.copyfile(path, target)
        return target

    def audit_export_queue(self, *, name: str, fmt: str, filters: AuditFilters) -> dict[str, Any]:
        from latentops.platform.services import cpu_jobs, jobs

        with context.session() as db:  # the job goes to the broker once this commits
            job = cpu_jobs.submit_audit_export(db, context.settings(), actor=context.actor(), fmt=fmt, name=name,
                                               filters=dataclasses.asdict(filters))
            return jobs.as_dict(job)

    def audit_export_fetch(self, job_id: int, out: Path) -> dict[str, Any]:
        from latentops.platform.services import cpu_jobs, jobs

        with context.session() as db:
            path = cpu_jobs.result_file(context.settings(), jobs.get(db, job_id), kind="audit_export")
        return unpack_export(path, out)

    def copyright_queue(self, *, directory: Path, owner: str, licence: str) -> list[dict[str, Any]]:
        """One ``copyright_index`` job for the folder; a cpu worker reads it where it lies."""
        from latentops.platform.services import cpu_jobs, jobs

        with context.session() as db:  # the job goes to the broker once this commits
            job = cpu_jobs.submit_copyright_index(db, context.settings(), actor=context.actor(), folder=directory,
                                                  owner=owner, licence=licence)
            return [jobs.as_dict(job)]
