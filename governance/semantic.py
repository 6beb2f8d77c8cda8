"""Semantic prompt screening: a score per content category, judged by meaning, not by keywords.

The host embeds the normalised prompt with all-MiniLM-L6-v2 (``sentence_encoder``), tuned for
screening by a low-rank adapter (``governance/semantic_adapter.npz``, merged into the encoder's
weights at load), and scores every category of the screening model
(``governance/semantic_model.json``):

* a **head** per category: logistic regression on the embedding, fitted with the adapter on the
  benchmark's train split (``bench/prompt_screening.py fit``). Its probability is the category's
  ``score``. The content categories listed under ``exclusive`` share one softmax with benign as
  the reference class (logit 0): a prompt's probability is split between benign and the
  categories, so a nude photo scores high for ``sexual`` and not for ``self_harm``, and the reason
  names the right category. Other heads (the ``minors`` presence signal) are sigmoids. The model file records the SHA-256 of the adapter its heads belong to; an encoder
  with another adapter (or none) makes the model unavailable rather than score with mismatched heads.
* a **spelling head** (``spelling`` in the model file, optional): multinomial logistic regression
  on character n-grams of the normalised prompt without digits (2 to 5 characters within words, TF-IDF with
  sublinear counts, as scikit-learn's ``TfidfVectorizer(analyzer="char_wb")`` computes them),
  fitted on the same prompts. It catches what word pieces split apart: misspellings, inflections
  and the other languages' words, which all-MiniLM-L6-v2 reads poorly. For the exclusive
  categories the logits of both heads are blended, ``(1 - weight) x meaning + weight x spelling``,
  before the softmax; ``weight`` is chosen on dev with the cuts. A long prompt's windows share
  the spelling logits of the whole prompt.
* **exemplars** per category: short descriptions of what the category refuses (the train split's
  harmful prompts among them). The nearest exemplar and its cosine similarity are the evidence a
  submitter sees ("closest to: ..."), and the reason compliance can read.

A prompt longer than 64 word pieces is scored per window of 32 (``sentence_encoder``) and the
highest score per category counts, so a harmful clause in a long prompt is not diluted.

The host only measures; the prompt policy decides. It maps each score to a severity level with
the cuts in policy data (``prompt.semantic.cuts``) and blocks at the level policy data sets per
category and per team (``prompt.block_at``, ``prompt.team_block_at``). The ``semantic`` section
of the policy input::

    {"available": true, "model": "<sha256 of the model file, 12 hex>",
     "scores": {category: {"score": 0.93, "exemplar": "...", "similarity": 0.71}}}
    {"available": false, "error": "<file>: <reason>"}      # model missing or corrupt

When the model is unavailable, policy data (``prompt.semantic.unavailable``) says whether the
policy denies (``"deny"``, the default: fail closed) or decides by keyword rules alone
(``"keywords_only"``); it never silently allows.

Cost: one encode per prompt (its windows in one batch), then a (categories x 384) product. On the
reference machine (2 cores) an encode takes about 4.6 ms at the median with the torch pass the API
server runs, about 10 ms with the NumPy pass; it grows with the number of word pieces
(``bench/prompt_screening.py --backend torch|numpy`` reports p50/p99 per decision).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentops.governance import sentence_encoder
from latentops.governance.sentence_encoder import Encoder, EncoderUnavailable

MODEL_FILE = Path(__file__).resolve().parent / "semantic_model.json"
FORMAT = 1


class ModelUnavailable(Exception):
    """The screening model file is missing or malformed; the message names it."""


def benign_softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, categories) logits against benign, whose logit is 0: each category's share of a
    softmax over benign and the categories (what is left is benign's)."""
    top = np.maximum(logits.max(1, keepdims=True), 0.0)
    exp = np.exp(logits - top)
    return exp / (np.exp(-top) + exp.sum(1, keepdims=True))


@dataclass(frozen=True)
class CategoryModel:
    name: str
    weights: np.ndarray  # (384,)
    bias: float
    exemplars: tuple[str, ...]
    vectors: np.ndarray  # (exemplars, 384) unit rows


_DIGITS = re.compile(r"\d+")


def spelling_text(text: str) -> str:
    """What the spelling head reads: the prompt lowercased, without digits. Numbers are years,
    sizes and seeds in image prompts; as n-grams they made "a poster from 1920" look like the
    number codes of hate prompts. (The term lists keep such codes; "cutt1ng" reads as "cuttng".)"""
    return _DIGITS.sub("", text.lower())


@dataclass(frozen=True)
class SpellingHead:
    """Character n-gram logits for the exclusive categories (see the module docstring)."""

    low: int
    high: int
    index: dict[str, int]  # n-gram -> column
    idf: np.ndarray  # (n-grams,)
    matrix: np.ndarray  # (exclusive categories, n-grams), in the model's category order
    biases: np.ndarray
    weight: float

    def grams(self, text: str) -> list[str]:
        """Every n-gram of every word of :func:`spelling_text` padded with one space, as
        scikit-learn's ``char_wb`` analyser makes them (a word shorter than n counts once, padded,
        for the first such n). Words are split at any run of whitespace, so the analyser's
        collapsing of runs to one space changes nothing here."""
        grams: list[str] = []
        for word in spelling_text(text).split():
            padded = f" {word} "
            for n in range(self.low, self.high + 1):
                offset = 0
                grams.append(padded[:n])
                while offset + n < len(padded):
                    offset += 1
                    grams.append(padded[offset:offset + n])
                if offset == 0:
                    break
        return grams

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The prompt's TF-IDF row, sparse: columns and L2-normalised values (1 + ln count) x idf."""
        index = self.index
        counts = Counter(column for column in map(index.get, self.grams(text)) if column is not None)
        columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[columns]
        norm = float(np.sqrt((values * values).sum()))
        return columns, (values / norm if norm else values)

    def logits(self, text: str) -> np.ndarray:
        columns, values = self.features(text)
        return self.matrix[:, columns] @ values + self.biases


@dataclass(frozen=True)
class ScreeningModel:
    """The fitted heads and exemplars, with the encoder they belong to."""

    sha: str
    categories: tuple[CategoryModel, ...]
    encoder: Encoder
    matrix: np.ndarray  # (categories, 384): every head in one product
    biases: np.ndarray
    exclusive: np.ndarray  # (categories,) bool: in the softmax shared with benign
    spelling: SpellingHead | None = None

    def probabilities(self, vectors: np.ndarray, text: str | None = None) -> np.ndarray:
        """(windows, categories): softmax against benign for the exclusive heads (their logits
        blended with the spelling head's for ``text`` when the model has one), sigmoid for the rest."""
        logits = vectors @ self.matrix.T + self.biases
        out = 1.0 / (1.0 + np.exp(-logits))
        if self.exclusive.any():
            exclusive = logits[:, self.exclusive]
            if self.spelling is not None and text is not None:
                exclusive = (1.0 - self.spelling.weight) * exclusive + self.spelling.weight * self.spelling.logits(text)
            out[:, self.exclusive] = benign_softmax(exclusive)
        return out

    def score_vectors(self, vectors: np.ndarray, text: str | None = None) -> dict[str, dict[str, Any]]:
        """Per category the highest head probability over ``vectors`` (windows of ``text``), with evidence."""
        probabilities = self.probabilities(vectors, text)  # (windows, categories)
        best_window = probabilities.argmax(0)
        result: dict[str, dict[str, Any]] = {}
        for i, category in enumerate(self.categories):
            window = vectors[best_window[i]]
            similarities = category.vectors @ window
            nearest = int(similarities.argmax())
            result[category.name] = {
                "score": round(float(probabilities[best_window[i], i]), 4),
                "exemplar": category.exemplars[nearest],
                "similarity": round(float(similarities[nearest]), 4),
            }
        return result

    def score(self, text: str) -> dict[str, dict[str, Any]]:
        return self.score_vectors(self.encoder.encode_windows(text), text)


def _unpack(value: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.frombuffer(base64.b64decode(value, validate=True), dtype="<f2").astype(np.float32)
        return array.reshape(shape)
    except (ValueError, TypeError) as error:
        raise ModelUnavailable(f"{where}: not {shape} float16 base64 ({error})") from None


def pack(array: np.ndarray) -> str:
    """float16 little-endian, base64: how the model file stores vectors."""
    return base64.b64encode(np.asarray(array, dtype="<f2").tobytes()).decode("ascii")


def load_model(path: Path = MODEL_FILE, encoder: Encoder | None = None) -> ScreeningModel:
    """Read the model file; exemplar vectors are recomputed when they were made by another encoder."""
    raw = sentence_encoder.read_model_file(path, ModelUnavailable)
    try:
        document = json.loads(raw)
        if document.get("format") != FORMAT:
            raise ModelUnavailable(f"{path}: format {document.get('format')!r} is not {FORMAT}")
        width = int(document["width"])
        entries = document["categories"]
        exclusive = set(document.get("exclusive", []))
        if not exclusive <= set(entries):
            raise ModelUnavailable(f"{path}: exclusive: {', '.join(sorted(exclusive - set(entries)))} are not categories")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelUnavailable(f"{path}: not a screening model ({error})") from None
    encoder = encoder or sentence_encoder.shared()
    adapter = document.get("adapter", "")
    if adapter != encoder.adapter_sha:
        raise ModelUnavailable(f"{path}: fitted with adapter {adapter[:12] or 'none'}, but the encoder has "
                               f"{encoder.adapter_sha[:12] or 'none'} ({encoder.adapter or 'no adapter file'})")
    categories = []
    for name, entry in sorted(entries.items()):
        where = f"{path}: categories.{name}"
        try:
            exemplars = tuple(str(e) for e in entry["exemplars"])
            weights = _unpack(entry["weights"], (width,), where + ".weights")
            bias = float(entry["bias"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelUnavailable(f"{where}: {error}") from None
        if not exemplars:
            raise ModelUnavailable(f"{where}.exemplars: must not be empty")
        vectors = (_unpack(entry["vectors"], (len(exemplars), width), where + ".vectors")
                   if entry.get("encoder") == encoder_id(encoder) and "vectors" in entry else encoder.encode(list(exemplars)))
        categories.append(CategoryModel(name, weights, bias, exemplars, vectors))
    if not categories:
        raise ModelUnavailable(f"{path}: no categories")
    order = [c.name for c in categories if c.name in exclusive]
    spelling = spelling_head(document["spelling"], order, f"{path}: spelling") if "spelling" in document else None
    return ScreeningModel(
        sha=hashlib.sha256(raw).hexdigest(), categories=tuple(categories), encoder=encoder,
        matrix=np.stack([c.weights for c in categories]), biases=np.array([c.bias for c in categories], dtype=np.float32),
        exclusive=np.array([c.name in exclusive for c in categories]), spelling=spelling,
    )


def spelling_head(entry: Any, order: list[str], where: str) -> SpellingHead:
    """The ``spelling`` section: ``analyzer`` ("char_wb"), ``ngram_range``, ``weight`` (0-1),
    ``vocabulary`` (n-grams in column order), ``idf``, and per exclusive category its ``weights``
    (packed) and ``bias``."""
    try:
        if entry["analyzer"] != "char_wb":
            raise ModelUnavailable(f"{where}.analyzer: {entry['analyzer']!r} is not 'char_wb'")
        low, high = (int(n) for n in entry["ngram_range"])
        weight = float(entry["weight"])
        vocabulary = [str(g) for g in entry["vocabulary"]]
        heads = entry["categories"]
        if not 1 <= low <= high or not 0.0 <= weight <= 1.0 or not vocabulary:
            raise ModelUnavailable(f"{where}: ngram_range {low}-{high}, weight {weight} or an empty vocabulary is not usable")
        if sorted(heads) != sorted(order):
            raise ModelUnavailable(f"{where}.categories: {', '.join(sorted(heads))} are not the exclusive categories "
                                   f"({', '.join(order)})")
        size = (len(vocabulary),)
        return SpellingHead(
            low, high, {gram: i for i, gram in enumerate(vocabulary)}, _unpack(entry["idf"], size, where + ".idf"),
            np.stack([_unpack(heads[name]["weights"], size, f"{where}.categories.{name}.weights") for name in order]),
            np.array([float(heads[name]["bias"]) for name in order], dtype=np.float32), weight,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelUnavailable(f"{where}: {error!r}") from None


def encoder_id(encoder: Encoder) -> str:
    """Identifies the encoder weights and adapter (exemplar vectors are only reused for the same ones)."""
    cached = getattr(encoder, "_latentops_id", None)
    if cached is None:
        digest = hashlib.sha256()
        with open(encoder.directory / "model.safetensors", "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cached = digest.hexdigest()[:16]
        if encoder.adapter_sha:
            cached += "+" + encoder.adapter_sha[:16]
        encoder._latentops_id = cached
    return cached


def _load_shared() -> ScreeningModel:
    try:
        return load_model(MODEL_FILE)
    except EncoderUnavailable as error:
        raise ModelUnavailable(str(error)) from None


_model = sentence_encoder.LoadOnce(_load_shared, ModelUnavailable)


def shared_model() -> ScreeningModel:
    """The process's screening model, loaded once; raises ``ModelUnavailable`` (also on later calls)."""
    return _model.get()


def reset() -> None:
    """Forget the loaded model and encoder (tests; after the model file was refitted)."""
    _model.reset()
    sentence_encoder.reset_shared()


def analyse(text: str) -> dict[str, Any]:
    """The ``semantic`` section of the prompt policy input (see the module docstring)."""
    try:
        model = shared_model()
    except ModelUnavailable as error:
        return {"available": False, "error": str(error)}
    return {"available": True, "model": model.sha[:12], "scores": model.score(text)}
