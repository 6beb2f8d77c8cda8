"""The job kinds: each kind's handler, queue and parameter check, named by import string.

Handlers are plain functions ``run(ctx: JobContext) -> dict`` registered by kind in ``JOB_KINDS``
as import strings, so the API never imports torch. A kind's params are built by the server
(``services.job_requests``); its validator checks them when the job is written, and the worker
checks them again, with what ties them to the job, before the handler runs
(``services.job_params.verify``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobKind:
    handler: str  # "module:function" run on the worker
    queue: str  # gpu | cpu (a worker's --queues; a cpu kind never waits for an accelerator)
    description: str
    validator: str | None = None  # "module:function" checking params at submit time


JOB_KINDS: dict[str, JobKind] = {
    "diagnostics": JobKind(
        "latentops.platform.services.diagnostics:run", "gpu", "checks the worker's accelerator and numerics",
        validator="latentops.platform.services.diagnostics:validate",
    ),
    "finetune": JobKind(
        "latentops.platform.services.finetune:run", "gpu", "LoRA / DreamBooth-LoRA fine-tuning of a base model",
        validator="latentops.platform.services.job_params:validate_finetune",
    ),
    "generate": JobKind("latentops.platform.services.generation:run_job", "gpu", "governed image generation",
                        validator="latentops.platform.services.job_params:validate_generate"),
    "dataset": JobKind("latentops.platform.services.datasets:run_job", "gpu", "synthetic dataset generation",
                       validator="latentops.platform.services.job_params:validate_dataset"),
    # The cpu queue: work that needs no accelerator but outlasts a request (services.cpu_jobs).
    "copyright_index": JobKind("latentops.platform.services.cpu_jobs:run_copyright_index", "cpu",
                               "indexes a folder of protected works for copyright screening",
                               validator="latentops.platform.services.cpu_jobs:validate_copyright_index"),
    "audit_export": JobKind("latentops.platform.services.cpu_jobs:run_audit_export", "cpu",
                            "exports audit entries with proofs and a signed checkpoint, as a zip",
                            validator="latentops.platform.services.cpu_jobs:validate_audit_export"),
    "dataset_package": JobKind("latentops.platform.services.cpu_jobs:run_dataset_package", "cpu",
                               "packages a ready dataset as one zip, manifest and card included",
                               validator="latentops.platform.services.cpu_jobs:validate_dataset_package"),
}
# The validators check params the server built (``services.job_params``); clients send typed
# requests (``services.job_requests``), never params.


def load_function(target: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (handlers and validators, imported on first use)."""
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)
