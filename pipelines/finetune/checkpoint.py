"""Training checkpoints: the full state of a run, written atomically, resumed at the exact step.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding

* ``trainable.safetensors``: every trainable (LoRA) tensor by name, and ``ema.safetensors`` for
  the EMA shadow when EMA is on;
* ``optimizer.pt`` and ``scheduler.pt``: optimizer and learning-rate scheduler state;
* ``rng.pt``: torch (CPU and CUDA), NumPy and Python RNG states;
* ``state.json``: global step, the recipe config and its fingerprint, base model and dataset
  hashes, the data order (the batch plan) and the loss history so far.

It is written into a hidden staging folder, every file fsynced, then renamed into place, and only
then does ``latest`` (itself replaced atomically) point at it. A crash or a full disk at any
moment leaves the previous checkpoint whole and ``latest`` pointing at it; the staging folder is
removed and the run fails with :class:`TrainingFailed` naming the step and the reason.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from latentops.core.errors import LatentopsError

logger = logging.getLogger(__name__)
LATEST = "latest"


class TrainingFailed(LatentopsError):
    """A run stopped on an error of its own (NaN loss, checkpoint not writable); checkpoints kept."""

    status_code = 500
    error = "training_failed"


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]


def capture_rng() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save(root: Path, *, step: int, trainable: dict[str, torch.Tensor], optimizer: dict[str, Any],
         scheduler: dict[str, Any], state: dict[str, Any], ema: dict[str, torch.Tensor] | None = None,
         keep: int = 2) -> Path:
    """Write the checkpoint for ``step`` under ``root`` atomically; prune to the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = root / f".staging-{step:06d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(staging / "trainable.safetensors"))
        if ema is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(staging / "ema.safetensors"))
        torch.save(optimizer, staging / "optimizer.pt")
        torch.save(scheduler, staging / "scheduler.pt")
        torch.save(capture_rng(), staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps({**state, "global_step": step}, sort_keys=True))
        for item in staging.iterdir():
            _fsync_file(item)
        _fsync_dir(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        _fsync_file(pointer)
        os.replace(pointer, root / LATEST)
        _fsync_dir(root)
    except Exception as error:  # noqa: BLE001 - safetensors and torch.save wrap OS errors in their own types
        shutil.rmtree(staging, ignore_errors=True)
        previous = latest_step(root)
        why = _why(error)
        kept = f"previous checkpoint (step {previous}) intact" if previous is not None else "no earlier checkpoint"
        raise TrainingFailed(f"checkpoint at step {step} could not be written ({why}); {kept}") from None
    _prune(root, keep)
    logger.info("checkpoint step %d written to %s", step, final)
    return final


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "disk full"
    text = str(error)
    if any(marker in text for marker in ("No space left", "File too large", "Disk quota", "os error 28", "os error 27")):
        return "disk full"
    return text or type(error).__name__


def _prune(root: Path, keep: int) -> None:
    folders = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_step(root: Path) -> int | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not (root / name / "state.json").exists():
        return None
    return int(name.removeprefix("step-"))


def load_latest(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None when there is none."""
    step = latest_step(root)
    if step is None:
        return None
    path = root / f"step-{step:06d}"
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingFailed(f"checkpoint {path}: unreadable state.json ({error})") from None
    return Checkpoint(step=step, path=path, state=state)


def read_tensors(checkpoint: Checkpoint, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.path / name))


def read_torch(checkpoint: Checkpoint, name: str) -> Any:
    # Our own files (optimizer and RNG states hold Python objects such as NumPy's state tuple).
    return torch.load(checkpoint.path / name, map_location="cpu", weights_only=False)
