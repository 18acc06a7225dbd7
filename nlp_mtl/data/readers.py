"""Data-format readers: one function per ``data.format``, registered by name.

A reader turns one file into an iterator of rows: ``{role: value, ..., "line": n}`` where roles are
``tokens``/``tags`` for token tasks and ``text``/``text_pair``/``label`` for sequence tasks (``labels``,
a list of zero or more strings, for tasks whose examples carry a label set), and
``line`` is where the example starts (for error messages). Readers check shape (columns present,
equal lengths, non-empty); label validity is checked later, against the whole task.

Readers stream: a file is read line by line and each row is yielded as soon as it is complete,
so a task larger than memory can be validated and tokenised in one pass (``data.storage: disk``).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataSpec
from ..errors import ConfigError, DataError
from ..registry import READERS

Row = dict[str, Any]


@dataclass(frozen=True)
class Roles:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    token_level: bool = False

    @property
    def all(self) -> tuple[str, ...]:
        return self.required + self.optional

    @property
    def label_set(self) -> bool:
        """Whether an example carries a set of labels (role ``labels``, zero or more) instead of one."""
        return "labels" in self.all

    def labels_of(self, row: Row) -> list[str]:
        """Every label a row carries: one per token, its label set, or its one label."""
        if self.token_level:
            return row["tags"]
        return row["labels"] if self.label_set else [row["label"]]


def read_text(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except LookupError:
        raise ConfigError(f"{path}: unknown encoding '{encoding}' in data.encoding.") from None
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: cannot decode byte {raw[err.start]:#04x} as {encoding}; "
            "set data.encoding in the task spec (for example 'latin-1')."
        ) from None


BOM = "\ufeff"


def _open_text(path: Path, encoding: str) -> Iterator[str]:
    """The file's lines, streamed; a decoding error is reported with its line (read_text finds it).
    A byte-order mark at the start is dropped, in every format and every encoding."""
    try:
        with path.open(encoding=encoding, newline="") as handle:
            first = next(handle, None)
            if first is None:
                return
            yield first[1:] if first.startswith(BOM) else first
            yield from handle
    except LookupError:
        raise ConfigError(f"{path}: unknown encoding '{encoding}' in data.encoding.") from None
    except UnicodeDecodeError:
        read_text(path, encoding)  # raises the DataError that names the line
        raise


def _lines(path: Path, spec: DataSpec) -> Iterator[tuple[int, str]]:
    # newline="" splits at "\n", "\r\n" and a bare "\r" alike and keeps the ending, stripped here.
    for number, line in enumerate(_open_text(path, spec.encoding), 1):
        yield number, line.rstrip("\r\n")


def _columns(spec: DataSpec, roles: Roles, defaults: dict[str, int | str]) -> dict[str, int | str]:
    if spec.label_separator is not None and not roles.label_set:
        raise ConfigError("data.label_separator: splits a label field into a label set; this task type "
                          "takes one label per example (or per token), so remove it.")
    for role in spec.columns:
        if role not in roles.all:
            raise ConfigError(
                f"data.columns.{role}: unknown role for this task type; expected {', '.join(roles.all)}."
            )
    columns = {role: spec.columns.get(role, defaults.get(role)) for role in roles.all}
    return {role: col for role, col in columns.items() if col is not None}


def _check_text(value: Any, role: str, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: missing value for '{role}'.")
    if not isinstance(value, str):
        raise DataError(f"{where}: '{role}' must be a string, got {_shown(value)}.")
    if not value.strip():
        raise DataError(f"{where}: empty '{role}'; every example needs non-empty text.")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _label(value: Any, what: str, where: str) -> str:
    """Labels and tags are strings or integers (class ids); anything else (NaN, a list, true) is refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: {what} must be a string or an integer, got {_shown(value)}.")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: empty {what}.")
    return text


def _label_set(value: Any, separator: str | None, where: str) -> list[str]:
    """A label set from a JSON list of strings, or from text split at ``data.label_separator``
    (blank text: no labels). Labels are stripped; a repeated one counts once."""
    if isinstance(value, str):
        if separator is None:
            raise DataError(f"{where}: 'labels' is the text {value[:60]!r}, not a list; set data.label_separator "
                            "(for example '|') to split it, or give a JSON list of strings.")
        parts = value.split(separator) if value.strip() else []
        labels = [part.strip() for part in parts]
        if any(not label for label in labels):
            raise DataError(f"{where}: empty label in {value[:60]!r} (data.label_separator {separator!r}).")
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"{where}: 'labels' must be a list of non-empty strings; it holds {item!r} "
                                f"({type(item).__name__}).")
        labels = [item.strip() for item in value]
    else:
        raise DataError(f"{where}: 'labels' must be a list of strings (an empty list for no labels), "
                        f"got {value!r} ({type(value).__name__}).")
    return list(dict.fromkeys(labels))


def _finish_row(row: Row, roles: Roles, where: str, spec: DataSpec) -> Row:
    if roles.token_level:
        tokens, tags = row["tokens"], row["tags"]
        if isinstance(tokens, str):
            tokens = tokens.split()
        if isinstance(tags, str):
            tags = tags.split()
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"{where}: 'tokens' and 'tags' must be lists (or space-separated strings).")
        if not tokens:
            raise DataError(f"{where}: empty sentence (no tokens).")
        if len(tokens) != len(tags):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; each token needs one tag.")
        for i, token in enumerate(tokens):
            if isinstance(token, bool) or not isinstance(token, (str, int)):
                raise DataError(f"{where}: token {i + 1} must be a string, got {_shown(token)}.")
            if not str(token).strip():
                raise DataError(f"{where}: token {i + 1} is empty; every token needs at least one character.")
        tags = [_label(t, f"the tag of token {i + 1}", where) for i, t in enumerate(tags)]
        return {"tokens": [str(t) for t in tokens], "tags": tags, "line": row["line"]}
    out = {"text": _check_text(row.get("text"), "text", where), "line": row["line"]}
    if "text_pair" in roles.all and row.get("text_pair") is not None:
        out["text_pair"] = _check_text(row["text_pair"], "text_pair", where)
    if roles.label_set:
        out["labels"] = _label_set(row.get("labels"), spec.label_separator, where)
        return out
    label = row.get("label")
    if label is None or (isinstance(label, str) and label.strip() == ""):
        raise DataError(f"{where}: missing label.")
    out["label"] = _label(label, "the label", where)
    return out


class FileReader:
    """A reader of data files: ``reader(path, data_spec, roles)`` streams a file's rows.

    Every ``data.format`` is a reader in ``READERS``; the loader asks the reader, never the
    format's name: ``reads_files`` (splits are files named in the spec, which disk storage can
    stream) or not (then ``read_split`` reads a split itself, as the hub reader does), and
    ``check`` for what the format needs in the spec."""

    reads_files = True

    def __init__(self, read: Callable[[Path, DataSpec, Roles], Iterator[Row]],
                 needs: Callable[[DataSpec, str], None] | None = None) -> None:
        self.read, self.needs = read, needs
        self.__doc__ = read.__doc__

    def __call__(self, path: Path, spec: DataSpec, roles: Roles) -> Iterator[Row]:
        return self.read(path, spec, roles)

    def check(self, spec: DataSpec, where: str) -> None:
        if not spec.train:
            raise ConfigError(f"{where}.train: missing; format '{spec.format}' needs a train file.")
        if self.needs is not None:
            self.needs(spec, where)


def file_reader(name: str, needs: Callable[[DataSpec, str], None] | None = None) -> Callable[..., FileReader]:
    """Register a function ``(path, data_spec, roles) -> rows`` as the reader of format ``name``."""
    def register(read: Callable[[Path, DataSpec, Roles], Iterator[Row]]) -> FileReader:
        return READERS.register(name)(FileReader(read, needs))

    return register


@file_reader("conll")
def read_conll(path: Path, spec: DataSpec, roles: Roles) -> Iterator[Row]:
    if not roles.token_level:
        raise ConfigError("data.format: 'conll' is for token tasks; use csv, tsv, jsonl or regex for sequence tasks.")
    columns = _columns(spec, roles, {"tokens": 0, "tags": -1})
    for role, col in columns.items():
        if not isinstance(col, int):
            raise ConfigError(f"data.columns.{role}: conll columns are 0-based indices, got {col!r}.")
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    width = None
    for number, line in _lines(path, spec):
        parts = line.split(spec.delimiter) if spec.delimiter else line.split()
        if not line.strip() or parts[0] == spec.doc_start:
            if tokens:
                yield {"tokens": tokens, "tags": tags, "line": start}
            tokens, tags = [], []
            continue
        if width is None:
            width = len(parts)
            need = max(c + 1 if c >= 0 else -c for c in columns.values())
            if width < need:
                raise DataError(
                    f"{path}:{number}: {width} columns, but data.columns asks for column "
                    f"{need - 1} ({', '.join(f'{r}={c}' for r, c in columns.items())})."
                )
        elif len(parts) != width:
            raise DataError(f"{path}:{number}: ragged row: {len(parts)} columns where earlier rows have {width}: {line!r}.")
        if not tokens:
            start = number
        if not parts[columns["tokens"]].strip():
            raise DataError(f"{path}:{number}: empty token (column {columns['tokens']}); every token needs at least one character.")
        tokens.append(parts[columns["tokens"]])
        tags.append(parts[columns["tags"]])
    if tokens:
        yield {"tokens": tokens, "tags": tags, "line": start}


@file_reader("jsonl")
def read_jsonl(path: Path, spec: DataSpec, roles: Roles) -> Iterator[Row]:
    columns = _columns(spec, roles, {r: r for r in roles.all})
    for number, line in _lines(path, spec):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno}).") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object per line.")
        row: Row = {"line": number}
        for role, key in columns.items():
            if key in obj:
                row[role] = obj[key]
            elif role in roles.required:
                raise DataError(f"{where}: missing field '{key}' (data.columns.{role}); fields present: {', '.join(obj)}.")
        yield _finish_row(row, roles, where, spec)


def _read_delimited(path: Path, spec: DataSpec, roles: Roles, delimiter: str) -> Iterator[Row]:
    columns = _columns(spec, roles, {r: r for r in roles.all} if spec.header else {})
    for role in roles.required:
        if role not in columns:
            raise ConfigError(f"data.columns.{role}: required for a file without header (a 0-based column index).")
    # QUOTE_NONE for TSV: GLUE-style TSVs contain bare quotes that are text, not quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # strict: a quote that never closes, or text right after a closing quote, is an error.
    reader = csv.reader(_open_text(path, spec.encoding), delimiter=delimiter, quoting=quoting,
                        strict=quoting != csv.QUOTE_NONE)
    index: dict[str, int] = {}
    next_start = 1
    width: int | None = None
    records = iter(reader)
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except csv.Error as err:
            raise _quoting_error(path, next_start, reader.line_num, str(err)) from None
        # Where this record starts: a quoted field may run over several lines.
        number, next_start = next_start, reader.line_num + 1
        if not record or all(not cell.strip() for cell in record):
            continue
        if width is None:
            width = len(record)
        elif reader.line_num > number:
            _check_swallowed(path, number, reader.line_num, record, width, delimiter, index.get("label"))
        if spec.header and not index:
            header = [cell.strip() for cell in record]
            for role, name in columns.items():
                if isinstance(name, int):
                    index[role] = name
                elif name in header:
                    index[role] = header.index(name)
                elif role in roles.required:
                    raise DataError(f"{path}:{number}: header has no column '{name}' (data.columns.{role}); header: {', '.join(header)}.")
            continue
        if not index:
            for role, col in columns.items():
                if not isinstance(col, int):
                    raise ConfigError(f"data.columns.{role}: without a header, columns are 0-based indices, got {col!r}.")
                index[role] = col
        where = f"{path}:{number}"
        row: Row = {"line": number}
        for role, col in index.items():
            if col >= len(record) or col < -len(record):
                if role in roles.required:
                    raise DataError(f"{where}: {len(record)} columns, but '{role}' is column {col}.")
                continue
            row[role] = record[col]
        yield _finish_row(row, roles, where, spec)


QUOTE_HINT = 'close the quote, or double a quote that is part of the text ("").'


def _quoting_error(path: Path, start: int, current: int, problem: str) -> DataError:
    if "end of data" in problem or "EOF" in problem:
        return DataError(f"{path}:{start}: a quote opened on this line is never closed (it runs to the end of the "
                         f"file, line {current}); {QUOTE_HINT}")
    if current > start:
        return DataError(f"{path}:{start}: a quote opened on this line runs to line {current}, where the quoting "
                         f"breaks ({problem}); {QUOTE_HINT}")
    return DataError(f"{path}:{current}: malformed quoting ({problem}); {QUOTE_HINT}")


def _check_swallowed(path: Path, start: int, end: int, record: list[str], width: int, delimiter: str,
                     label_col: int | None) -> None:
    """A quoted field that spans lines is fine (a review in two paragraphs) unless the lines it
    took in are rows of their own: a stray quote that swallowed them, silently, as one example."""
    swallowed = 0
    for cell in record:
        for line in cell.splitlines()[1:]:
            parts = next(csv.reader([line], delimiter=delimiter), [])
            if len(parts) != width:
                continue
            label = parts[label_col] if label_col is not None and -width <= label_col < width else parts[-1]
            if label.strip() and " " not in label.strip() and len(label.strip()) <= 40:
                swallowed += 1
    if swallowed:
        raise DataError(f"{path}:{start}: a quote opened on this line runs to line {end}, swallowing {swallowed} "
                        f"line{'s' if swallowed > 1 else ''} that look like rows of their own; {QUOTE_HINT}")


@file_reader("csv")
def read_csv(path: Path, spec: DataSpec, roles: Roles) -> Iterator[Row]:
    return _read_delimited(path, spec, roles, spec.delimiter or ",")


@file_reader("tsv")
def read_tsv(path: Path, spec: DataSpec, roles: Roles) -> Iterator[Row]:
    return _read_delimited(path, spec, roles, spec.delimiter or "\t")


def _needs_pattern(spec: DataSpec, where: str) -> None:
    if not spec.pattern:
        raise ConfigError(f"{where}.pattern: format 'regex' needs a pattern with named groups, e.g. "
                          "'^(?P<label>\\S+) (?P<text>.*)$'.")


@file_reader("regex", needs=_needs_pattern)
def read_regex(path: Path, spec: DataSpec, roles: Roles) -> Iterator[Row]:
    """One example per line, fields taken from the named groups of ``data.pattern``.

    TREC's ``COARSE:fine question`` lines, for example: ``^(?P<label>[^:]+):\\S+ (?P<text>.+)$``.
    """
    try:
        pattern = re.compile(spec.pattern or "")
    except re.error as err:
        raise ConfigError(f"data.pattern: invalid regular expression ({err}).") from None
    missing = [r for r in roles.required if r not in pattern.groupindex]
    if missing:
        raise ConfigError(f"data.pattern: needs named groups {', '.join(f'(?P<{m}>...)' for m in missing)}.")
    for number, line in _lines(path, spec):
        if not line.strip():
            continue
        match = pattern.match(line)
        where = f"{path}:{number}"
        if match is None:
            raise DataError(f"{where}: line does not match data.pattern {spec.pattern!r}: {line[:80]!r}.")
        row: Row = {"line": number, **{k: v for k, v in match.groupdict().items() if v is not None}}
        yield _finish_row(row, roles, where, spec)


class HubReader:
    """``data.format: hub``: a Hugging Face dataset (``load_dataset(name, config)``, or
    ``load_from_disk(path)``), read split by split; it is Arrow on disk already, so it is not
    streamed from files."""

    reads_files = False

    def check(self, spec: DataSpec, where: str) -> None:
        if not (spec.name or spec.path):
            raise ConfigError(f"{where}: format 'hub' needs 'name' (a Hub dataset) or 'path' (a dataset saved to disk).")

    def read_split(self, spec: DataSpec, roles: Roles, split: str, root: Path,
                   spec_folder: Path | None) -> tuple[list[Row], str]:
        """(rows, where they came from) of ``split``; none where the dataset lacks it."""
        path = None
        if spec.path:
            path = Path(spec.path).expanduser()
            if not path.is_absolute():
                candidates = [root / path] + ([spec_folder / path] if spec_folder else [])
                path = next((c for c in candidates if c.exists()), candidates[0])
        rows = read_hub(spec, roles, split, path)
        return (rows, f"{spec.path or spec.name}[{split}]") if rows is not None else ([], "")


READERS.register("hub")(HubReader())


def read_hub(spec: DataSpec, roles: Roles, split: str, path: Path | None = None) -> list[Row] | None:
    """A Hugging Face dataset: ``load_dataset(name, config)`` or ``load_from_disk(path)``."""
    import datasets

    source = str(path) if path else spec.name
    try:
        if path:
            dataset = datasets.load_from_disk(str(path))
        else:
            dataset = datasets.load_dataset(spec.name, spec.config)
    except (OSError, ValueError, ConnectionError) as err:
        raise DataError(f"data: cannot load dataset '{source}': {err}.") from None
    split_name = spec.splits.get(split, split)
    if split_name not in dataset:
        return None
    table = dataset[split_name]
    columns = _columns(spec, roles, {r: r for r in roles.all})
    rows = []
    for role, name in columns.items():
        if name not in table.column_names and role in roles.required:
            raise DataError(f"{source}[{split_name}]: no column '{name}' (data.columns.{role}); columns: {', '.join(table.column_names)}.")
    names = {role: _label_names(table.features.get(columns.get(role, ""))) for role in ("label", "labels", "tags")}
    for i, record in enumerate(table):
        row: Row = {"line": i + 1}
        for role, name in columns.items():
            if name in record:
                value = record[name]
                if names.get(role):
                    ids = value if isinstance(value, list) else [value]
                    if any(not 0 <= v < len(names[role]) for v in ids):
                        # -1 is how the Hub marks an unlabelled example (e.g. GLUE test sets).
                        raise DataError(f"{source}[{split_name}] row {i}: '{name}' holds no valid class id "
                                        f"({value}); this split is unlabelled.")
                    value = [names[role][v] for v in ids] if isinstance(value, list) else names[role][value]
                row[role] = value
        rows.append(_finish_row(row, roles, f"{source}[{split_name}] row {i}", spec))
    return rows


def _label_names(feature: Any) -> list[str] | None:
    inner = getattr(feature, "feature", feature)
    return list(getattr(inner, "names", []) or []) or None
