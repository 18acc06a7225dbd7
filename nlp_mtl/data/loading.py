"""Read a task's splits from disk, normalise labels and check them against each other.

Output is plain columns (``TaskData``); tokenisation happens later in ``encoding``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from ..config import CarvedSplit, LabelsFromSplits, TaskSpec, data_root_help
from ..errors import ConfigError, DataError
from ..fileio import atomic_write, one_at_a_time
from ..registry import READERS, TASK_TYPES
from .readers import Roles, Row
from .tags import check_tag, repair, sequence_problem, to_iob2

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    spec: TaskSpec
    labels: list[str]
    # The train split is a StreamedRows under data.storage 'disk'; everything else is a list.
    splits: dict[str, Any] = field(default_factory=dict)
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
        "--data-root, or NLP_MTL_DATA_ROOT) and then the spec file's folder." + data_root_help(root)
    )


def _read_split(spec: TaskSpec, roles: Roles, split: str, root: Path) -> tuple[list[Row], str]:
    reader = READERS.get(spec.data.format, f"{spec.source}: data.format")
    if not reader.reads_files:
        if isinstance(spec.data.validation, CarvedSplit) and split == "validation":
            return [], ""
        return reader.read_split(spec.data, roles, split, root, Path(spec.source).parent if spec.source else None)
    relative = getattr(spec.data, split)
    if relative is None or isinstance(relative, CarvedSplit):
        return [], ""
    path = resolve_data_path(spec, relative, root)
    return list(file_rows(spec, roles, path)), str(path)


def file_rows(spec: TaskSpec, roles: Roles, path: Path) -> Iterator[Row]:
    """The rows of one data file, streamed by the spec's reader."""
    reader = READERS.get(spec.data.format, f"{spec.source}: data.format")
    try:
        yield from reader(path, spec.data, roles)
    except DataError:
        raise
    except Exception as err:  # a config mistake raised inside a reader: add the spec file
        if hasattr(err, "exit_code"):
            raise type(err)(f"{spec.source}: {err}") from None
        raise


def _held_out(n_rows: int, carve: CarvedSplit) -> set[int]:
    """Indices of the train rows that form a carved validation split."""
    order = list(range(n_rows))
    random.Random(carve.seed).shuffle(order)
    return set(order[: max(1, round(n_rows * carve.from_train))])


def _carve(rows: list[Row], carve: CarvedSplit) -> tuple[list[Row], list[Row]]:
    held = _held_out(len(rows), carve)
    train = [r for i, r in enumerate(rows) if i not in held]
    valid = [r for i, r in enumerate(rows) if i in held]
    return train, valid


def _line(spec: TaskSpec, row: Row, token_index: int = 0) -> int:
    """The file line of a token: CoNLL has one token per line, other formats one example."""
    return row["line"] + token_index if spec.data.format == "conll" else row["line"]


def _normalise_row(spec: TaskSpec, row: Row, roles: Roles, source: str) -> Row:
    if roles.token_level:
        for i, tag in enumerate(row["tags"]):
            problem = check_tag(tag, spec.data.tag_scheme)
            if problem:
                raise DataError(f"{source}:{_line(spec, row, i)}: {problem} (data.tag_scheme: {spec.data.tag_scheme}).")
        broken = sequence_problem(row["tags"], spec.data.tag_scheme)
        if broken is not None:
            if not spec.data.repair:
                raise DataError(f"{source}:{_line(spec, row, broken[0])}: {broken[1]} (data.tag_scheme: "
                                f"{spec.data.tag_scheme}); fix the data, or set data.repair: true to start an entity there.")
            row["tags"], row["repaired"] = repair(row["tags"], spec.data.tag_scheme)
        row["tags"] = to_iob2(row["tags"], spec.data.tag_scheme)
    elif spec.data.label_map:
        label_map = spec.data.label_map
        for label in roles.labels_of(row):
            if label not in label_map:
                raise DataError(f"{source}:{row['line']}: label '{label}' is not in data.label_map ({', '.join(label_map)}).")
        if roles.label_set:
            row["labels"] = list(dict.fromkeys(label_map[label] for label in row["labels"]))
        else:
            row["label"] = label_map[row["label"]]
    return row


def _normalise_labels(spec: TaskSpec, rows: list[Row], roles: Roles, source: str) -> None:
    for row in rows:
        _normalise_row(spec, row, roles, source)


@dataclass
class StreamedRows:
    """A train split that stays in its file (``data.storage: disk``): each pass reads it again.

    Rows come out normalised like an in-memory split's; ``held`` (a carved validation split) is
    skipped and ``limit`` caps the count. ``len()`` is known from the checking pass, and a slice
    (``rows[:100]``) reads just that far, so code that peeks at a split works unchanged.
    """

    spec: TaskSpec
    roles: Roles
    path: Path
    count: int = 0
    held: frozenset[int] = frozenset()
    limit: int | None = None
    # Every role some kept row has (an optional one such as text_pair may be in few).
    roles_seen: frozenset[str] = frozenset()

    def all_rows(self) -> Iterator[Row]:
        """Every row of the file, carved-out ones included, normalised."""
        for row in file_rows(self.spec, self.roles, self.path):
            yield _normalise_row(self.spec, row, self.roles, str(self.path))

    def __iter__(self) -> Iterator[Row]:
        kept = (row for i, row in enumerate(self.all_rows()) if i not in self.held)
        return islice(kept, self.limit)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: slice) -> list[Row]:
        if not isinstance(index, slice):
            raise TypeError("a streamed split is read in order; take a slice, e.g. rows[:100]")
        return list(islice(self, index.start, index.stop, index.step))

    def identity(self) -> dict[str, Any]:
        """What the file and this view of it are, for cache keys: a changed file is a different split."""
        return {**file_identity(self.path), "held": len(self.held), "limit": self.limit}


def has_text_pairs(rows: list[Row] | StreamedRows) -> bool:
    """Whether a split is sentence-pair data. One pair anywhere makes it so, as encoding treats it
    (a row without a second segment gets ""), so the head and the encoder cannot disagree."""
    if isinstance(rows, StreamedRows):
        return "text_pair" in rows.roles_seen
    return any("text_pair" in row for row in rows)


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size and times. Inode and ctime too: copying tools restore mtime, nothing sets ctime.
    The package version stands for the code that checks and encodes."""
    from .. import __version__

    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino, "nlp_mtl": __version__}


CHECK_VERSION = 2  # 2: train labels recorded as a set, not counts


def _stream_train(spec: TaskSpec, roles: Roles, root: Path, limit: int | None,
                  cache_dir: Path | None = None) -> tuple[StreamedRows, list[Row], set[str], str]:
    """Check a train file in one streamed pass (two with a carved validation split), keeping only
    counts. What the pass found is recorded under ``cache_dir``, so an unchanged file is not read
    again to start the next run."""
    if not READERS.get(spec.data.format, f"{spec.source}: data.format").reads_files:
        raise ConfigError(f"{spec.source}: data.storage 'disk' streams data files, and format '{spec.data.format}' "
                          "reads a dataset, not files (a Hugging Face dataset is memory-mapped Arrow already); "
                          "use storage 'memory'.")
    if spec.data.train is None:
        raise DataError(f"{spec.source}: data.train: a task needs a train split.")
    stream = StreamedRows(spec, roles, resolve_data_path(spec, spec.data.train, root), limit=limit)
    if cache_dir is None:
        found = _check_train(stream)
    else:
        record = _check_record(stream, cache_dir)
        with one_at_a_time(record.with_suffix(".lock")):
            if record.is_file():  # made before, or by another process while this one waited
                found = json.loads(record.read_text(encoding="utf-8"))
            else:
                found = _check_train(stream)
                atomic_write(record, json.dumps(found))
    n_rows, validation = found["rows"], found["validation"]
    if isinstance(spec.data.validation, CarvedSplit) and n_rows:
        stream.held = frozenset(_held_out(n_rows, spec.data.validation))
    stream.roles_seen = frozenset(found["roles_seen"])
    stream.count = min(n_rows - len(stream.held), limit if limit is not None else n_rows)
    return stream, validation, set(found["train_labels"]), str(stream.path)


def key_digest(key: dict[str, Any]) -> str:
    """A short, stable name for a cache entry from everything that decides its contents."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _check_record(stream: StreamedRows, cache_dir: Path) -> Path:
    spec = stream.spec
    key = {"version": CHECK_VERSION, "file": file_identity(stream.path), "type": spec.type,
           "data": asdict(spec.data), "labels": spec.labels, "limit": stream.limit}
    return cache_dir / "checked" / f"{spec.name}-{key_digest(key)}.json"


def _check_train(stream: StreamedRows) -> dict[str, Any]:
    spec, roles, source = stream.spec, stream.roles, str(stream.path)
    carve = spec.data.validation if isinstance(spec.data.validation, CarvedSplit) else None
    keep = stream.limit if stream.limit is not None else float("inf")
    counts: Counter = Counter()
    declared = list(spec.labels) if isinstance(spec.labels, list) else []
    allowed = set(declared) if isinstance(spec.labels, list) else None
    n_rows, seen = 0, set()
    for n_rows, row in enumerate(stream.all_rows(), 1):
        if carve is None and n_rows <= keep:
            seen.update(row)  # roles of the rows training will see, as in memory
        values = roles.labels_of(row)
        counts.update(values)
        if allowed is not None:
            _check_allowed(spec, row, values, allowed, declared, source, "the labels declared in the spec")
    validation: list[Row] = []
    if carve is not None and n_rows:
        held, kept = _held_out(n_rows, carve), 0
        for i, row in enumerate(stream.all_rows()):
            if i in held:
                validation.append(row)
                counts.subtract(roles.labels_of(row))
            elif kept < keep:
                kept += 1
                seen.update(row)
    # A label seen only in the carved rows is not a train label (+ drops counts down to zero).
    return {"rows": n_rows, "train_labels": sorted(+counts), "roles_seen": sorted(seen & set(roles.all)),
            "validation": validation}


def _labels_of(rows: Iterable[Row], roles: Roles) -> set[str]:
    seen: set[str] = set()
    for row in rows:
        seen.update(roles.labels_of(row))
    return seen


def order_labels(labels: Iterable[str], token_level: bool, scheme: str = "iob2") -> list[str]:
    """Stable label order: independent of file order. IOB tags: 'O' first, then by type, B before I."""
    if token_level and scheme != "none":
        return sorted(labels, key=lambda t: (t != "O", t[2:], t[:1]))
    return sorted(labels)


def _check_allowed(spec: TaskSpec, row: Row, values: list[str], allowed: set[str], labels: list[str],
                   source: str, origin: str) -> None:
    for i, value in enumerate(values):
        if value not in allowed:
            raise DataError(
                f"{source}:{_line(spec, row, i)}: label '{value}' never appears in {origin}; "
                f"known labels: {', '.join(labels)}. Declare it under 'labels:' in {spec.source} "
                "(or take the labels of every split: labels: {from_splits: [train, validation, test]}) "
                "if it is real, or fix the data."
            )


def load_task_data(spec: TaskSpec, root: Path, limit: dict[str, int] | None = None,
                   stream_train: bool = False, cache_dir: Path | None = None) -> TaskData:
    """Read and check a task's splits. ``stream_train``: the train split stays in its file
    (StreamedRows), and what checking it found is kept under ``cache_dir`` for the next run."""
    task_type = TASK_TYPES.get(spec.type, f"{spec.source}: type")
    roles: Roles = task_type.roles
    limit = limit or {}
    splits: dict[str, list[Row] | StreamedRows] = {}
    sources: dict[str, str] = {}
    train_labels: set[str] | None = None  # streamed: found by the checking pass
    normalised: set[str] = set()  # streamed rows are normalised as they are read
    for split in SPLITS:
        if split == "train" and stream_train:
            splits["train"], carved, train_labels, sources["train"] = _stream_train(spec, roles, root, limit.get("train"),
                                                                                  cache_dir)
            normalised.add("train")
            if carved:
                splits["validation"] = carved
                normalised.add("validation")
            continue
        if split in splits:
            continue
        rows, source = _read_split(spec, roles, split, root)
        if source:
            splits[split], sources[split] = rows, source
    if not splits.get("train"):
        where = sources.get("train", f"{spec.source}: data.train")
        raise DataError(f"{where}: the train split is empty; a task needs training examples.")
    if isinstance(spec.data.validation, CarvedSplit):
        if not stream_train:
            splits["train"], splits["validation"] = _carve(splits["train"], spec.data.validation)  # type: ignore[arg-type]
        sources["validation"] = f"{sources['train']} (carved: {spec.data.validation.from_train:g} of train, seed {spec.data.validation.seed})"
    splits = {s: splits[s] for s in SPLITS if s in splits}
    for split, rows in list(splits.items()):
        if not rows:
            raise DataError(f"{sources[split]}: the {split} split is empty.")
        if split not in normalised:
            _normalise_labels(spec, rows, roles, sources[split])
    inferred_from: tuple[str, ...] = ()
    if isinstance(spec.labels, list):
        labels = list(spec.labels)
        allowed, origin = set(labels), "the labels declared in the spec"
    else:
        inferred_from = tuple(spec.labels.from_splits) if isinstance(spec.labels, LabelsFromSplits) else ("train",)
        seen: set[str] = set()
        for split in inferred_from:
            if split not in splits:
                raise ConfigError(f"{spec.source}: labels.from_splits names '{split}', and this task has no "
                                  f"{split} split (data.{split}).")
            if split == "train" and train_labels is not None:
                seen |= train_labels
            else:
                seen |= _labels_of(splits[split], roles)
        labels = order_labels(seen, roles.token_level, spec.data.tag_scheme)
        allowed = set(labels)
        origin = "the train split" if inferred_from == ("train",) else f"the {', '.join(inferred_from)} splits"
        if not labels:  # label sets may be empty, but not all of them
            raise DataError(f"{sources['train']}: no train example has a label; a task needs at least one "
                            f"label to learn (or declare them under 'labels:' in {spec.source}).")
    # One label of a label set is still a yes/no decision; one class of a classifier is none.
    if not roles.token_level and not roles.label_set and len(labels) < 2:
        mapped = " after data.label_map" if spec.data.label_map else ""
        raise DataError(f"{sources['train']}: every example has the label '{next(iter(labels), '')}'{mapped}; "
                        "a classifier needs at least two classes.")
    for split, rows in splits.items():
        if split in inferred_from or (split == "train" and isinstance(rows, StreamedRows)):
            continue  # labels are inferred from this split, or were checked while streaming
        for row in rows:
            _check_allowed(spec, row, roles.labels_of(row), allowed, labels, sources[split], origin)
    for split, n in limit.items():
        if split in splits and not isinstance(splits[split], StreamedRows):
            splits[split] = splits[split][:n]
    return TaskData(spec=spec, labels=labels, splits=splits, sources=sources)


def summarise(data: TaskData) -> dict[str, Any]:
    roles: Roles = TASK_TYPES.get(data.spec.type).roles
    token_level = roles.token_level
    out: dict[str, Any] = {"task": data.spec.name, "type": data.spec.type, "labels": data.labels, "splits": {}}
    for split, rows in data.splits.items():
        info: dict[str, Any] = {"examples": len(rows), "source": data.sources[split]}
        if token_level:
            info["tokens"] = sum(len(r["tags"]) for r in rows)
            if data.spec.data.tag_scheme != "none":
                info["entities"] = sum(t.startswith("B-") for r in rows for t in r["tags"])
            if data.spec.data.repair:
                info["repaired tags"] = sum(r.get("repaired", 0) for r in rows)
        else:
            counts: dict[str, int] = {}
            for r in rows:
                for label in roles.labels_of(r):
                    counts[label] = counts.get(label, 0) + 1
            info["label_counts"] = dict(sorted(counts.items()))
            if roles.label_set:
                info["without_labels"] = sum(not r["labels"] for r in rows)
        out["splits"][split] = info
    return out
