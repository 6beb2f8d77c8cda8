"""Labelled image sets for calibrating the screening thresholds: the labels files people write.

Two layouts, both one row per image, whose ``file`` is a name in the images folder (never a path):

* ``file,label`` CSV (or JSON Lines, ``.jsonl``): ``label`` names the image's categories (several
  separated by ``;`` or ``|``), or ``none`` for a benign image; the categories fitted are those some
  row names (:func:`read_labelled_set`, what the API, the SDK and the portal take);
* ``file,<category>,...`` CSV with ``0``/``1`` per category, the console's ``labels.csv``: every
  column is fitted, one with no ``1`` on its negatives alone (:func:`read_label_columns`;
  :func:`read_labelled_set` takes it too).

Both give ``(categories, {file: {category: 0|1}})``; a missing column, an unknown category, a file
labelled twice or a path for a file is refused naming the column, line and value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentops.core.errors import InvalidInput
from latentops.governance.detectors import CATEGORIES

NEGATIVE_LABELS = ("", "none", "benign", "safe", "negative")


def read_labelled_set(name: str, data: bytes) -> tuple[list[str], dict[str, dict[str, int]]]:
    """``(categories, {file: {category: 0|1}})`` from an uploaded labelled set, as ``calibration``
    fits it: CSV with a header, or JSON Lines (``.jsonl``), each row a ``file`` and a ``label``; or
    the console's ``file,<category>,...`` CSV (:func:`read_label_columns`).

    ``label`` names the image's categories (several separated by ``;`` or ``|``), or ``none`` (also
    ``benign``, ``safe``, ``negative`` or empty) for a benign image. The categories fitted are those
    some row names; every image not labelled with one is a negative for it. A missing column, an
    unknown category or a file given twice is refused naming the column, line and value.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"labels: {name} is not UTF-8 text") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if name.lower().endswith((".jsonl", ".ndjson")):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidInput(f"labels: line {number} of {name} is not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise InvalidInput(f"labels: line {number} of {name} must be an object with 'file' and 'label'")
            rows.append((number, row))
        for column in ("file", "label"):
            missing = [number for number, row in rows if column not in row]
            if missing:
                raise InvalidInput(f"labels: column '{column}' is missing in {name} (line {missing[0]})")
    else:
        import csv
        import io

        try:
            reader = csv.DictReader(io.StringIO(text))
            columns = {c.strip() for c in (reader.fieldnames or [])}
            others = columns - {"file"}
            if "label" not in columns and "file" in columns and others and others <= set(CATEGORIES):
                return read_label_columns(name, text)  # the console's labels.csv: a 0/1 column per category
            for column in ("file", "label"):
                if column not in columns:
                    raise InvalidInput(f"labels: column '{column}' is missing in {name} "
                                       f"(columns: {', '.join(sorted(columns)) or 'none'})")
            rows = [(number, {(k or "").strip(): v for k, v in row.items()}) for number, row in enumerate(reader, start=2)]
        except csv.Error as error:
            raise InvalidInput(f"labels: {name} is not CSV ({error})") from None
    found: dict[str, set[str]] = {}
    for number, row in rows:
        file = _labelled_file(row.get("file"), number)
        if file in found:
            raise InvalidInput(f"labels: line {number}: file {file!r} is labelled twice")
        raw = row.get("label")
        parts = raw if isinstance(raw, list) else str(raw if raw is not None else "").replace("|", ";").split(";")
        labels = {str(p).strip().lower().replace(" ", "_") for p in parts} - set(NEGATIVE_LABELS)
        unknown = sorted(labels - set(CATEGORIES))
        if unknown:
            raise InvalidInput(f"labels: line {number}: column 'label' names unknown categories {', '.join(unknown)}; "
                               f"use {', '.join(CATEGORIES)} or none")
        found[file] = labels
    if not found:
        raise InvalidInput(f"labels: {name} has no rows")
    categories = [c for c in CATEGORIES if any(c in labels for labels in found.values())]
    if not categories:
        raise InvalidInput(f"labels: column 'label' names no category in {name}; label positives with one of {', '.join(CATEGORIES)}")
    return categories, {file: {c: int(c in labels) for c in categories} for file, labels in found.items()}


def read_label_columns(name: str, text: str) -> tuple[list[str], dict[str, dict[str, int]]]:
    """``(categories, {file: {category: 0|1}})`` from CSV with a header ``file,<category>,...`` and
    ``0``/``1`` per category (``latentops screening calibrate --labels``): every column is fitted,
    one with no ``1`` on its negatives alone. Bad rows are refused by line."""
    import csv
    import io

    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise InvalidInput(f"labels: {name} is not CSV ({error})") from None
    if not rows or not rows[0] or rows[0][0].strip() != "file":
        raise InvalidInput(f"labels: {name} must start with a header 'file,<category>,...'")
    categories = [c.strip() for c in rows[0][1:]]
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise InvalidInput(f"labels: unknown or missing category columns {unknown}; use {', '.join(CATEGORIES)}")
    labels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(categories) + 1 or any(v.strip() not in {"0", "1"} for v in row[1:]):
            raise InvalidInput(f"labels: line {number} must have a file name and 0 or 1 for each of {', '.join(categories)}")
        file = _labelled_file(row[0], number)
        if file in labels:
            raise InvalidInput(f"labels: line {number}: file {file!r} is labelled twice")
        labels[file] = {c: int(v) for c, v in zip(categories, row[1:], strict=True)}
    if not labels:
        raise InvalidInput(f"labels: {name} has no rows")
    return categories, labels


def read_label_file(path: Path) -> str:
    """The text of a labels file on this machine (a leading byte-order mark dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"labels: {path} cannot be read ({error})") from None


def _labelled_file(value: Any, number: int) -> str:
    """The ``file`` of a labels row: a file name in the images folder, never a path."""
    file = str(value or "").strip()
    if not file:
        raise InvalidInput(f"labels: line {number}: column 'file' is empty")
    if file in (".", "..") or any(c in file for c in "/\\") or any(ord(c) < 32 for c in file) or len(file.encode()) > 200:
        raise InvalidInput(f"labels: line {number}: column 'file' must name an uploaded file (a name, not a path), got {file[:80]!r}")
    return file


def write_labels_csv(categories: Sequence[str], table: dict[str, dict[str, int]], target: Path) -> Path:
    """The labels as :func:`read_label_columns` reads them (``file,<category>,...``)."""
    import csv

    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *categories])
        writer.writerows([file, *(row[c] for c in categories)] for file, row in sorted(table.items()))
    return target
