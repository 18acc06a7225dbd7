"""Read a task's splits from disk, normalise labels and check them against each other.

Output is plain columns (``TaskData``); tokenisation happens later in ``encoding``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import CarvedSplit, TaskSpec
from ..errors import DataError
from ..registry import READERS, TASK_TYPES
from .readers import Roles, Row, read_hub
from .tags import check_tag, to_iob2

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    spec: TaskSpec
    labels: list[str]
    splits: dict[str, list[Row]] = field(default_factory=dict)
    # Where each split came from, for messages and `tasks validate`.
    sources: dict[str, str] = field(default_factory=dict)


def resolve_data_path(spec: TaskSpec, relative: str, root: Path) -> Path:
    path = Path(relative).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [root / path]
        if spec.source:
            candidates.append(Path(spec.source).parent / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(
        f"{spec.source}: data file '{relative}' not found (looked at {tried}); "
        "relative paths resolve against the data root (data.root in the experiment config, "
        "--data-root, or NLP_MTL_DATA_ROOT) and then the spec file's folder."
    )


def _read_split(spec: TaskSpec, roles: Roles, split: str, root: Path) -> tuple[list[Row], str]:
    if spec.data.format == "hub":
        if isinstance(spec.data.validation, CarvedSplit) and split == "validation":
            return [], ""
        path = None
        if spec.data.path:
            path = Path(spec.data.path).expanduser()
            if not path.is_absolute():
                candidates = [root / path] + ([Path(spec.source).parent / path] if spec.source else [])
                path = next((c for c in candidates if c.exists()), candidates[0])
        rows = read_hub(spec.data, roles, split, path)
        return (rows, f"{spec.data.path or spec.data.name}[{split}]") if rows is not None else ([], "")
    relative = getattr(spec.data, split)
    if relative is None or isinstance(relative, CarvedSplit):
        return [], ""
    path = resolve_data_path(spec, relative, root)
    reader = READERS.get(spec.data.format, f"{spec.source}: data.format")
    try:
        return reader(path, spec.data, roles), str(path)
    except DataError:
        raise
    except Exception as err:  # a config mistake raised inside a reader: add the spec file
        if hasattr(err, "exit_code"):
            raise type(err)(f"{spec.source}: {err}") from None
        raise


def _carve(rows: list[Row], carve: CarvedSplit) -> tuple[list[Row], list[Row]]:
    order = list(range(len(rows)))
    random.Random(carve.seed).shuffle(order)
    n_valid = max(1, round(len(rows) * carve.from_train))
    held = set(order[:n_valid])
    train = [r for i, r in enumerate(rows) if i not in held]
    valid = [r for i, r in enumerate(rows) if i in held]
    return train, valid


def _line(spec: TaskSpec, row: Row, token_index: int = 0) -> int:
    """The file line of a token: CoNLL has one token per line, other formats one example."""
    return row["line"] + token_index if spec.data.format == "conll" else row["line"]


def _normalise_labels(spec: TaskSpec, rows: list[Row], roles: Roles, source: str) -> None:
    label_map = spec.data.label_map
    for row in rows:
        if roles.token_level:
            for i, tag in enumerate(row["tags"]):
                problem = check_tag(tag, spec.data.tag_scheme)
                if problem:
                    raise DataError(f"{source}:{_line(spec, row, i)}: {problem} (data.tag_scheme: {spec.data.tag_scheme}).")
            row["tags"] = to_iob2(row["tags"], spec.data.tag_scheme)
        elif label_map:
            if row["label"] not in label_map:
                raise DataError(f"{source}:{row['line']}: label '{row['label']}' is not in data.label_map ({', '.join(label_map)}).")
            row["label"] = label_map[row["label"]]


def _labels_of(rows: list[Row], token_level: bool) -> list[str]:
    seen: set[str] = set()
    for row in rows:
        if token_level:
            seen.update(row["tags"])
        else:
            seen.add(row["label"])
    return sorted(seen)


def infer_labels(rows: list[Row], token_level: bool, scheme: str = "iob2") -> list[str]:
    """Stable label order: independent of file order. IOB tags: 'O' first, then by type, B before I."""
    labels = _labels_of(rows, token_level)
    if token_level and scheme != "none":
        return sorted(labels, key=lambda t: (t != "O", t[2:], t[:1]))
    return labels


def load_task_data(spec: TaskSpec, root: Path, limit: dict[str, int] | None = None) -> TaskData:
    task_type = TASK_TYPES.get(spec.type, f"{spec.source}: type")
    roles: Roles = task_type.roles
    splits: dict[str, list[Row]] = {}
    sources: dict[str, str] = {}
    for split in SPLITS:
        rows, source = _read_split(spec, roles, split, root)
        if source:
            splits[split], sources[split] = rows, source
    if not splits.get("train"):
        where = sources.get("train", f"{spec.source}: data.train")
        raise DataError(f"{where}: the train split is empty; a task needs training examples.")
    if isinstance(spec.data.validation, CarvedSplit):
        splits["train"], splits["validation"] = _carve(splits["train"], spec.data.validation)
        sources["validation"] = f"{sources['train']} (carved: {spec.data.validation.from_train:g} of train, seed {spec.data.validation.seed})"
    splits = {s: splits[s] for s in SPLITS if s in splits}
    for split, rows in list(splits.items()):
        if not rows:
            raise DataError(f"{sources[split]}: the {split} split is empty.")
        _normalise_labels(spec, rows, roles, sources[split])
    if spec.labels is not None:
        labels = list(spec.labels)
        allowed, origin = set(labels), "the labels declared in the spec"
    else:
        labels = infer_labels(splits["train"], roles.token_level, spec.data.tag_scheme)
        allowed, origin = set(labels), "the train split"
    for split, rows in splits.items():
        if spec.labels is None and split == "train":
            continue
        for row in rows:
            values = row["tags"] if roles.token_level else [row["label"]]
            for i, value in enumerate(values):
                if value not in allowed:
                    raise DataError(
                        f"{sources[split]}:{_line(spec, row, i)}: label '{value}' never appears in {origin}; "
                        f"known labels: {', '.join(labels)}. Declare it under 'labels:' in {spec.source} "
                        "if it is real, or fix the data."
                    )
    if limit:
        for split, n in limit.items():
            if split in splits:
                splits[split] = splits[split][:n]
    return TaskData(spec=spec, labels=labels, splits=splits, sources=sources)


def summarise(data: TaskData) -> dict[str, Any]:
    token_level = TASK_TYPES.get(data.spec.type).roles.token_level
    out: dict[str, Any] = {"task": data.spec.name, "type": data.spec.type, "labels": data.labels, "splits": {}}
    for split, rows in data.splits.items():
        info: dict[str, Any] = {"examples": len(rows), "source": data.sources[split]}
        if token_level:
            info["tokens"] = sum(len(r["tags"]) for r in rows)
            if data.spec.data.tag_scheme != "none":
                info["entities"] = sum(t.startswith("B-") for r in rows for t in r["tags"])
        else:
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["label"]] = counts.get(r["label"], 0) + 1
            info["label_counts"] = dict(sorted(counts.items()))
        out["splits"][split] = info
    return out
