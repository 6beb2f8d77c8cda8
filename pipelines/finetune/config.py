"""One validated configuration per fine-tuning recipe.

``LoraConfig`` describes a LoRA run on the denoiser (UNet or transformer), optionally with LoRA on
the text encoder(s). ``DreamBoothConfig`` adds prior preservation: a class prompt, how many class
images to keep the model's prior with, and how much their loss weighs.

The config is the job's whole description: it is saved in every checkpoint and logged to the MLflow
run, and a resumed run refuses a checkpoint written under a different config. Values out of range
fail early with an ``InvalidInput`` that names the field (``lr: must be <= 0.01, got 0.5``). The
seed is never ``None``: it defaults to ``DEFAULT_SEED`` and that value is what the run records.

``processes`` asks for that many training processes (data parallel, see
:mod:`latentops.pipelines.finetune.distributed`); ``batch_size`` stays per process, so a step
trains on ``batch_size * processes`` images.

Memory modes (docs/finetune.md, "Memory modes"): ``gradient_checkpointing`` is ``false``, ``true``
(every block of the denoiser) or a whole number n (every n-th block); ``base_quantization`` stores
the frozen Linear weights of the denoiser in ``int8`` or ``fp8`` (torchao) or ``nf4``
(bitsandbytes); ``offload_encoders`` frees the text encoders and VAE (moves them off the GPU) once
the feature cache holds everything they compute; ``compile = "blocks"`` compiles each repeated
block with ``torch.compile``. :mod:`latentops.pipelines.finetune.memory` applies them.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from latentops.core.errors import InvalidInput

DEFAULT_SEED = 20_240_607
MAX_PROCESSES = 8
Method = Literal["lora", "dreambooth"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Optimizer = Literal["auto", "adamw", "adamw_8bit"]
Crop = Literal["center", "random"]
Schedule = Literal["constant", "constant_with_warmup", "cosine", "linear"]
Quantization = Literal["none", "int8", "fp8", "nf4"]
Compile = Literal[False, "blocks"]
MAX_CHECKPOINT_INTERVAL = 64


class LoraConfig(BaseModel):
    """LoRA on the denoiser (and optionally the text encoders) of a base model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "lora"
    instance_prompt: str = Field(min_length=1, max_length=500)
    steps: int = Field(default=500, ge=1, le=100_000)
    rank: int = Field(default=8, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0, le=1024)  # None: equal to rank (scale 1)
    lr: float = Field(default=1e-4, gt=0, le=1e-2)
    text_encoder_lr: float | None = Field(default=None, gt=0, le=1e-2)
    lr_schedule: Schedule = "constant"
    warmup_steps: int = Field(default=0, ge=0, le=10_000)
    resolution: int = Field(default=512, ge=32, le=2048)
    batch_size: int = Field(default=1, ge=1, le=64)  # per process: a step sees batch_size * processes
    processes: int = Field(default=1, ge=1, le=MAX_PROCESSES)
    seed: int = Field(default=DEFAULT_SEED, ge=0, lt=2**31)
    checkpoint_every: int = Field(default=100, ge=1, le=100_000)
    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    train_text_encoder: bool = False
    max_grad_norm: float = Field(default=1.0, gt=0, le=1000)
    weight_decay: float = Field(default=1e-2, ge=0, le=1)
    min_snr_gamma: float | None = Field(default=None, gt=0, le=100)
    noise_offset: float = Field(default=0.0, ge=0, le=1)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    mixed_precision: MixedPrecision = "auto"
    gradient_checkpointing: bool | int = False  # true: every block; n: every n-th block of the denoiser
    base_quantization: Quantization = "none"  # the frozen Linear weights of the denoiser
    offload_encoders: bool = False  # text encoders and VAE leave the device once the feature cache is full
    compile: Compile = False  # "blocks": torch.compile each repeated block of the denoiser
    optimizer: Optimizer = "auto"
    crop: Crop = "center"
    flip: bool = True
    caption_dropout: float = Field(default=0.0, ge=0, le=1)  # share of instance samples trained on the empty prompt
    validation_split: float = Field(default=0, ge=0, le=100_000)  # held-out images: a fraction below 1, or a count
    validation_prompts: tuple[str, ...] = ()
    validation_every: int = Field(default=0, ge=0, le=100_000)  # 0: only the final sample grid
    samples: bool = True  # render the final sample grid (through the governed generation path)
    validation_steps: int = Field(default=20, ge=1, le=200)
    sample_seed: int = Field(default=0, ge=0, lt=2**31)

    @field_validator("instance_prompt")
    @classmethod
    def _prompt_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _every_nth_block(cls, value: Any) -> bool | int:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and 1 <= value <= MAX_CHECKPOINT_INTERVAL:
            return value
        raise ValueError(f"must be true, false or a whole number n from 1 to {MAX_CHECKPOINT_INTERVAL} "
                         "(checkpoint every n-th block)")

    @field_validator("validation_split")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value >= 1 and not float(value).is_integer():
            raise ValueError("must be a fraction below 1 or a whole number of images")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LoraConfig:
        if self.warmup_steps >= self.steps and self.lr_schedule != "constant":
            raise ValueError(f"warmup_steps: must be below steps ({self.steps}), got {self.warmup_steps}")
        if self.text_encoder_lr is not None and not self.train_text_encoder:
            raise ValueError("text_encoder_lr: set only with train_text_encoder = true")
        return self

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def checkpoint_interval(self) -> int:
        """Gradient checkpointing every n-th block of the denoiser; 0 when it is off."""
        value = self.gradient_checkpointing
        return (1 if value else 0) if isinstance(value, bool) else int(value)

    @property
    def effective_batch_size(self) -> int:
        """Images per optimizer step, over all processes."""
        return self.batch_size * self.processes

    def fingerprint(self) -> str:
        """SHA-256 of the config: what must match for a checkpoint to be resumed.

        A single-process config hashes without ``processes``, as it did before the setting
        existed, so checkpoints of earlier runs still resume; so do ``caption_dropout`` and
        ``validation_split`` at their defaults (off), and the memory modes at theirs.
        """
        values = self.model_dump(mode="json")
        for key, default in (("processes", 1), ("caption_dropout", 0.0), ("validation_split", 0),
                             ("base_quantization", "none"), ("offload_encoders", False), ("compile", False)):
            if values[key] == default:
                del values[key]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()

    def params(self) -> dict[str, Any]:
        """Flat values for MLflow params and the jobs policy."""
        return self.model_dump(mode="json")


class DreamBoothConfig(LoraConfig):
    """DreamBooth-LoRA: LoRA plus prior preservation with class images."""

    method: Method = "dreambooth"
    class_prompt: str = Field(min_length=1, max_length=500)
    prior_loss_weight: float = Field(default=1.0, ge=0, le=10)
    num_class_images: int = Field(default=50, ge=1, le=2000)
    class_generation_steps: int = Field(default=20, ge=1, le=200)

    @model_validator(mode="after")
    def _prompts_differ(self) -> DreamBoothConfig:
        if self.class_prompt.strip() == self.instance_prompt.strip():
            raise ValueError("class_prompt: must differ from instance_prompt (it describes the class, not the subject)")
        return self


FinetuneConfig = LoraConfig | DreamBoothConfig


def build_config(values: dict[str, Any]) -> FinetuneConfig:
    """The recipe's config from plain values; ``InvalidInput`` naming the first bad field."""
    values = {k: v for k, v in values.items() if v is not None}
    method = values.get("method", "lora")
    if method not in ("lora", "dreambooth"):
        raise InvalidInput(f"method: must be 'lora' or 'dreambooth', got {method!r}")
    if isinstance(values.get("validation_prompts"), list):
        values["validation_prompts"] = tuple(values["validation_prompts"])
    cls: type[LoraConfig] = DreamBoothConfig if method == "dreambooth" else LoraConfig
    if method == "lora" and values.get("class_prompt"):
        raise InvalidInput("class_prompt: only the dreambooth method uses a class prompt")
    try:
        return cls(**values)
    except ValidationError as error:
        raise InvalidInput(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "config"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if message.split(":", 1)[0] in {"warmup_steps", "text_encoder_lr", "class_prompt"}:
        return message  # the cross-field checks name their own field
    if first.get("type") == "extra_forbidden":
        return f"{field}: unknown setting"
    got = first.get("input")
    return f"{field}: {message}" + (f", got {got!r}" if first.get("type") != "missing" and not isinstance(got, dict) else "")


def load_toml(path: Path) -> dict[str, Any]:
    """A ``job.toml``: the same keys as the command-line options (``batch-size`` or ``batch_size``)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"config: {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"config: {path} is not valid TOML ({error})") from None
    table = raw.get("finetune", raw)
    if not isinstance(table, dict):
        raise InvalidInput(f"config: {path}: [finetune] must be a table")
    return {str(key).replace("-", "_"): value for key, value in table.items()}
