"""A fine-tuning request as plain data: what a user asks for, from the CLI, a ``job.toml``, the
portal or the API. Light to import: the CLI builds one before anything heavy loads, and the remote
CLI sends one to a server without loading the training stack at all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    model: str
    instance_dir: Path
    values: dict[str, Any]  # recipe settings (steps, rank, lr, instance_prompt, ...), validated by the service
    model_version: int | None = None
    class_dir: Path | None = None
    team: str | None = None
    adapter_name: str | None = None
    attest_licence: bool = False
    attest_consent: bool = False
    priority: int | None = None  # None: the default the jobs policy gives the submitter's role
