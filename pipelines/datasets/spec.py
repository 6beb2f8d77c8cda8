"""The synthetic dataset spec: what to generate, per class, and how to filter, split and write it.

A spec is YAML (or the same keys as JSON through the API)::

    name: digits-aug
    model: digits-demo            # NAME, NAME@alias or NAME@version
    per_class: 200
    seed: 0
    format: imagefolder           # or webdataset
    classes:
      - name: "7"
        prompts: ["a handwritten digit seven", "a photo of a {name}"]

Optional keys: ``lora`` (default adapter; a class may name its own), ``steps``, ``guidance``,
``negative_prompt`` (per class too), ``batch_size``, ``height``/``width``, ``filters``
(``clip_min_score``, ``dedupe_distance``, ``classifier``), ``split`` (``validation`` fraction),
``licence``, ``description``, ``team``. Unknown keys, missing classes, zero or huge counts and
unknown formats are refused with the field named (``classes.0.prompts: ...``); the model is
checked against the catalogue by the service.

Image ``k`` of class ``c`` (classes in spec order) always has seed ``seed + c * SEED_STRIDE + k``
and prompt ``prompts[k % len(prompts)]``, so an image does not depend on batching or on what
else was generated: the basis of byte-identical reruns and of resuming an interrupted job.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from latentops.core import text as core_text
from latentops.core.errors import InvalidInput

MAX_PER_CLASS = 10_000
MAX_CLASSES = 1_000
MAX_PROMPT = 20_000
SEED_STRIDE = 1_000_000  # > MAX_PER_CLASS: seeds of two classes never overlap
FORMATS = ("imagefolder", "webdataset")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ClassifierFilter(_Strict):
    """A registered classifier (TorchScript; ``latentops datasets import-classifier`` gives its id):
    keep images it assigns to their class with at least ``min_confidence``. Input (N, 3, H, W)
    floats in [0, 1]; output logits (N, classes) with the columns in spec class order."""

    id: str = Field(pattern=r"^[0-9a-f]{64}$", description="The classifier's store id (its SHA-256).")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)


class Filters(_Strict):
    clip_min_score: float | None = Field(None, ge=-1.0, le=1.0)
    dedupe_distance: int | None = Field(4, ge=0, le=64)
    classifier: ClassifierFilter | None = None


class Split(_Strict):
    validation: float = Field(0.0, ge=0.0, lt=1.0)


class ClassSpec(_Strict):
    name: str
    prompts: list[str] = Field(min_length=1, max_length=50)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    lora: str | None = Field(None, max_length=200)
    per_class: int | None = Field(None, ge=1, le=MAX_PER_CLASS)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value) or value in {".", ".."}:
            raise ValueError(f"{value!r} is not a usable class name (letters, digits, space, '._+-'; it names a folder)")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str]) -> list[str]:
        for index, prompt in enumerate(value):
            if core_text.is_blank(prompt):
                raise ValueError(f"prompt {index} is empty once control and zero-width characters are removed")
            if len(prompt) > MAX_PROMPT:
                raise ValueError(f"prompt {index} is longer than {MAX_PROMPT} characters")
            try:
                prompt.format(name="x")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"prompt {index} {prompt!r}: only the {{name}} placeholder is allowed ({error})") from None
        return value

    def rendered_prompts(self) -> list[str]:
        return [p.format(name=self.name) for p in self.prompts]


class DatasetSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    lora: str | None = Field(None, max_length=200)
    per_class: int = Field(ge=1, le=MAX_PER_CLASS)
    seed: int = Field(0, ge=0, lt=2**40)
    format: Literal["imagefolder", "webdataset"] = "imagefolder"
    classes: list[ClassSpec] = Field(min_length=1, max_length=MAX_CLASSES)
    steps: int = Field(20, ge=1, le=500)
    guidance: float = Field(5.0, ge=0.0, le=50.0)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)
    batch_size: int = Field(16, ge=1, le=64)
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    filters: Filters = Filters()
    split: Split = Split()
    licence: str = Field("CC-BY-4.0", max_length=200)
    description: str = Field("", max_length=10_000)
    team: str | None = Field(None, max_length=100)

    @model_validator(mode="after")
    def _unique_classes(self) -> DatasetSpec:
        names = [c.name for c in self.classes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"classes: names must be unique (repeated: {', '.join(duplicates)})")
        return self

    # --- derived --------------------------------------------------------------------------------
    def count(self, cls: ClassSpec) -> int:
        return cls.per_class or self.per_class

    @property
    def total_images(self) -> int:
        return sum(self.count(c) for c in self.classes)

    def seed_of(self, class_index: int, k: int) -> int:
        return self.seed + class_index * SEED_STRIDE + k

    def prompt_of(self, cls: ClassSpec, k: int) -> str:
        prompts = cls.rendered_prompts()
        return prompts[k % len(prompts)]

    def negative_of(self, cls: ClassSpec) -> str | None:
        return cls.negative_prompt if cls.negative_prompt is not None else self.negative_prompt

    def lora_of(self, cls: ClassSpec) -> str | None:
        return cls.lora if cls.lora is not None else self.lora

    def resolution(self) -> int:
        return max(self.height or 0, self.width or 0)

    def fingerprint(self) -> str:
        """Identity of what is generated (not of how it is filtered or written): resuming needs it equal."""
        keep = self.model_dump(mode="json", include={"model", "lora", "per_class", "seed", "classes", "steps", "guidance",
                                                     "negative_prompt", "batch_size", "height", "width"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def _field(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "spec"


def parse(data: Any, *, source: str = "spec") -> DatasetSpec:
    """A validated spec from a mapping; ``InvalidInput`` naming the field(s) otherwise."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a dataset spec is a mapping of keys (name, model, per_class, classes, ...)")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = _field(item.get("loc", ()))
            message = item.get("msg", "invalid")
            if item.get("type") == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{where}: {message.removeprefix('Value error, ')}")
        raise InvalidInput(f"{source}: " + "; ".join(problems), reasons=problems) from None


def load(path: Path) -> DatasetSpec:
    """Parse a YAML (or JSON) spec file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"spec: cannot read {path} ({error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput(f"spec: {path} is not valid YAML ({error})") from None
    return parse(data, source=str(path))
