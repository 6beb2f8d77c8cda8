"""Writing a finished dataset: ImageFolder or WebDataset, a Croissant-style manifest and a card.

* **ImageFolder** (Hugging Face): ``<split>/<class>/<file>.png`` with ``<split>/metadata.jsonl``
  (``file_name``, ``label``, ``prompt``, ``seed``, ``model_version``, ``lora_version``,
  ``asset_id``, ``pixel_sha256``, ``scores``); ``datasets.load_dataset("imagefolder", data_dir=DIR)``
  loads it with one split per folder.
* **WebDataset**: ``shards/<split>-NNNNN.tar`` with ``KEY.png``, ``KEY.json`` (the same metadata)
  and ``KEY.cls`` (the class index) per sample; tar entries are sorted with fixed owner and time, so
  the same images give the same shards.
* **Manifest** (``croissant.json``): Croissant 1.0 JSON-LD with its Responsible-AI (``rai:``) fields
  and a ``latentops:generation`` block: model and LoRA versions, policy revision, screening
  statistics, filter statistics, classes refused by policy and the spec itself.
* **Card** (``README.md``): a Hugging Face dataset card rendered from the same facts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARD_SIZE = 1000
CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en", "@vocab": "https://schema.org/", "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/", "latentops": "https://latentops.dev/ns/dataset#",
    "citeAs": "cr:citeAs", "column": "cr:column", "conformsTo": "dct:conformsTo", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract", "field": "cr:field", "fileObject": "cr:fileObject", "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet", "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path",
    "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated",
    "replace": "cr:replace", "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform",
}


@dataclass
class Sample:
    """One released, kept image and its metadata, ready to be written."""

    source: Path  # the signed PNG in the job's staging folder
    class_name: str
    label: int
    k: int
    split: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{self.class_name}/{self.class_name}-{self.k:06d}.png"

    @property
    def key(self) -> str:
        # WebDataset splits keys from extensions at the first dot: keys must not contain one.
        return re.sub(r"[^A-Za-z0-9_-]", "_", f"{self.class_name}-{self.k:06d}")


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)  # same volume: no second copy of the pixels
    except OSError:
        shutil.copyfile(source, target)


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def write_imagefolder(out: Path, samples: Sequence[Sample]) -> list[Path]:
    """Images and one ``metadata.jsonl`` per split; returns the metadata files."""
    written = []
    for split in sorted({s.split for s in samples}):
        rows = []
        for sample in (s for s in samples if s.split == split):
            _place(sample.source, out / split / sample.file_name)
            rows.append({"file_name": sample.file_name, **sample.metadata})
        path = out / split / "metadata.jsonl"
        path.write_text(_jsonl(rows), encoding="utf-8")
        written.append(path)
    return written


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    archive.addfile(info, io.BytesIO(data))


def write_webdataset(out: Path, samples: Sequence[Sample], *, shard_size: int = SHARD_SIZE) -> list[Path]:
    """Tar shards per split; returns the shard paths."""
    folder = out / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for split in sorted({s.split for s in samples}):
        members = sorted((s for s in samples if s.split == split), key=lambda s: s.key)
        for index in range(0, len(members), shard_size):
            path = folder / f"{split}-{index // shard_size:05d}.tar"
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
                for sample in members[index:index + shard_size]:
                    _add(archive, f"{sample.key}.png", sample.source.read_bytes())
                    _add(archive, f"{sample.key}.json", json.dumps(
                        {"file_name": sample.file_name, **sample.metadata}, sort_keys=True).encode())
                    _add(archive, f"{sample.key}.cls", str(sample.label).encode())
            shards.append(path)
    return shards


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- manifest and card ----------------------------------------------------------------------------


@dataclass
class Facts:
    """Everything the manifest and the card say about a dataset."""

    name: str
    description: str
    licence: str
    format: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    model: dict[str, Any]
    loras: dict[str, str | None]
    policy_revision: str
    screening: dict[str, Any]
    filters: dict[str, Any]
    denied_classes: list[dict[str, Any]]
    spec: dict[str, Any]
    fingerprint: str
    files: list[Path]


def _fields(file_id: str) -> list[dict[str, Any]]:
    columns = [("file_name", "sc:Text"), ("label", "sc:Text"), ("prompt", "sc:Text"), ("seed", "sc:Integer"),
               ("model_version", "sc:Text"), ("asset_id", "sc:Integer"), ("pixel_sha256", "sc:Text")]
    return [{"@type": "cr:Field", "@id": f"samples/{name}", "name": name, "dataType": kind,
             "source": {"fileObject": {"@id": file_id}, "extract": {"column": name}}} for name, kind in columns]


def manifest(out: Path, facts: Facts) -> dict[str, Any]:
    """The Croissant-style JSON-LD document for the dataset in ``out``."""
    distribution = []
    for path in facts.files:
        relative = path.relative_to(out).as_posix()
        distribution.append({"@type": "cr:FileObject", "@id": relative, "name": relative, "contentUrl": relative,
                             "encodingFormat": "application/x-tar" if path.suffix == ".tar" else "application/jsonlines",
                             "sha256": sha256_file(path)})
    if facts.format == "imagefolder":
        distribution.append({"@type": "cr:FileSet", "@id": "images", "name": "images", "encodingFormat": "image/png",
                             "includes": "*/*/*.png"})
    metadata_id = distribution[0]["@id"] if distribution else "metadata"
    total = sum(sum(c.values()) for c in facts.counts.values())
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": facts.name,
        "description": facts.description or f"Synthetic images of {len(facts.classes)} classes generated by latentops.",
        "license": facts.licence,
        "creator": {"@type": "sc:Organization", "name": "latentops"},
        "keywords": ["synthetic", "image classification", "data augmentation"],
        "distribution": distribution,
        "recordSet": [{"@type": "cr:RecordSet", "@id": "samples", "name": "samples", "field": _fields(metadata_id)}],
        "rai:dataCollection": (f"Generated by the text-to-image model {facts.model.get('name')} version "
                               f"{facts.model.get('version')} (sha256 {facts.model.get('sha256', '')[:16]}) through the "
                               "latentops governed path: prompt and model-access policy, content and copyright screening, "
                               "C2PA provenance on every image."),
        "rai:dataCollectionType": "Synthetic data",
        "rai:dataCollectionRawData": "No real images; prompts per class are listed in latentops:generation.spec.",
        "rai:dataPreprocessingProtocol": json.dumps(facts.filters, sort_keys=True),
        "rai:dataBiases": ("Inherits the biases of the generating model and of its training data; classes appear in "
                           "equal numbers by construction, not by observation."),
        "rai:dataLimitations": ("Synthetic: not a sample of the real distribution. Use to augment real data and "
                                "evaluate on real held-out data only."),
        "rai:personalSensitiveInformation": "None by construction; prompts are screened by the prompt policy.",
        "rai:dataUseCases": "Training data augmentation for image classifiers.",
        "rai:dataSocialImpact": "Screened images only; flagged images were quarantined and are not part of the dataset.",
        "latentops:generation": {
            "model": facts.model, "loras": facts.loras, "policy_revision": facts.policy_revision,
            "screening": facts.screening, "filters": facts.filters, "denied_classes": facts.denied_classes,
            "counts": facts.counts, "images": total, "format": facts.format, "spec": facts.spec,
            "spec_fingerprint": facts.fingerprint,
        },
    }


def _size_category(total: int) -> str:
    return "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "n>100K"


def card(facts: Facts) -> str:
    """The dataset card (Hugging Face README.md with YAML front matter)."""
    total = sum(sum(c.values()) for c in facts.counts.values())
    lines = ["---", f"license: {facts.licence.lower()}", "task_categories:", "- image-classification",
             "size_categories:", f"- {_size_category(total)}", "tags:", "- synthetic", "- latentops", "---", "",
             f"# {facts.name}", "", facts.description or "Synthetic images generated by latentops from a dataset spec.", "",
             "## Generation", "",
             (f"- Model: `{facts.model.get('name')}` version {facts.model.get('version')} "
             f"(sha256 `{facts.model.get('sha256', '')[:16]}`)"),
             f"- LoRA adapters: {', '.join(f'{c}: `{v}`' for c, v in facts.loras.items() if v) or 'none'}",
             f"- Policy revision: `{facts.policy_revision[:16]}`",
             f"- Spec fingerprint: `{facts.fingerprint[:16]}` (same spec, seed and model version give the same pixels on CPU)",
             "", "## Contents", "", "| split | " + " | ".join(facts.classes) + " |",
             "|---|" + "---|" * len(facts.classes)]
    for split, counts in sorted(facts.counts.items()):
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in facts.classes) + " |")
    screened = facts.screening
    lines += ["", "## Screening and filters", "",
              (f"- Released {screened.get('released', 0)}, quarantined {screened.get('quarantined', 0)} "
              f"(detector: {screened.get('detector', 'none')})."),
              f"- Filters: {json.dumps(facts.filters, sort_keys=True)}"]
    if facts.denied_classes:
        lines += ["", "## Classes refused by policy", ""]
        lines += [f"- `{d['class']}`: {'; '.join(d['reasons'])}" for d in facts.denied_classes]
    loader = ('datasets.load_dataset("imagefolder", data_dir=DIR)' if facts.format == "imagefolder"
              else 'webdataset.WebDataset("DIR/shards/train-{00000..NNNNN}.tar").decode("pil")')
    lines += ["", "## Loading", "", f"`{loader}`", "", "## Limitations", "",
              "Synthetic images inherit the generating model's biases; evaluate on real held-out data.", ""]
    return "\n".join(lines)


def write_manifest_and_card(out: Path, facts: Facts) -> tuple[Path, Path]:
    manifest_path, card_path = out / "croissant.json", out / "README.md"
    manifest_path.write_text(json.dumps(manifest(out, facts), indent=2, sort_keys=True), encoding="utf-8")
    card_path.write_text(card(facts), encoding="utf-8")
    return manifest_path, card_path
