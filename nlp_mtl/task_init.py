"""``nlp-mtl tasks init DATA_FILE``: draft a task spec from a data file.

The file's format (CoNLL columns, JSONL, CSV/TSV, ``LABEL text`` lines), the roles of its fields,
the tag scheme and the label set are guessed from the data, each guess with its reason. The
draft is then read through the same readers and checks as ``nlp-mtl tasks validate`` before it
is written, so a spec that comes out loads; where the data does not decide a guess, the command
refuses and names the option that settles it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .config import TaskSpec, default_data_root
from .data.tags import split_tag
from .errors import ConfigError, DataError, UserError
from .schema import from_mapping

# Enough to see a file's shape; labels and counts come from reading all of it afterwards.
SAMPLE_BYTES = 4 << 20
SAMPLE_ROWS = 2000
# The two shapes of data this drafts specs for, as the roles a task type's rows hold: one tag
# per word, or one label per text. The spec names the registered type with those roles.
WORD_ROLES = ("tokens", "tags")
TEXT_ROLES = ("text", "label")


def type_with_roles(required: tuple[str, ...]) -> str:
    """The registered task type whose rows hold exactly the roles ``required``."""
    from .registry import TASK_TYPES

    for name in TASK_TYPES.names():
        if TASK_TYPES.get(name).roles.required == required:
            return name
    raise UserError(f"tasks init: no registered task type reads rows with {', '.join(required)}.")


def _words_of_type(task_type: str) -> bool:
    """--type TYPE as a shape: True for one tag per word, False for one label per text."""
    from .registry import TASK_TYPES

    roles = TASK_TYPES.get(task_type, "--type").roles
    if roles.required not in (WORD_ROLES, TEXT_ROLES):
        raise UserError(f"--type {task_type}: tasks init drafts specs with one tag per word "
                        f"({type_with_roles(WORD_ROLES)}) or one label per text ({type_with_roles(TEXT_ROLES)}); "
                        "write this one from the task-spec reference.")
    return roles.required == WORD_ROLES

# Field names that say a role, most telling first.
NAMES = {
    "tokens": ("tokens", "words", "token", "word", "toks", "sentence", "text"),
    "tags": ("tags", "ner_tags", "ner", "labels", "label", "tag", "entities", "pos_tags", "pos", "chunk_tags"),
    "text": ("text", "sentence", "sentence1", "question", "premise", "content", "review", "document",
             "utterance", "query", "input", "text_a", "question1", "sent", "body", "comment", "tweet"),
    "text_pair": ("text_pair", "sentence2", "hypothesis", "question2", "text_b", "context", "passage"),
    "label": ("label", "labels", "class", "category", "polarity", "sentiment", "target", "y", "gold",
              "intent", "topic", "gold_label", "coarse_label"),
}
SPLIT_WORDS = {"validation": ("valid", "validation", "dev", "val", "testa"), "test": ("test", "testb")}


@dataclass
class Draft:
    """A spec in the making: its mapping, what each guess rests on, and comments for the YAML."""

    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # key ("data.format", "labels", ...) -> comment written beside it
    comments: dict[str, str] = field(default_factory=dict)


def _refuse(path: Path, message: str) -> UserError:
    return DataError(f"{path}: {message}")


# ---- reading a sample ---------------------------------------------------------------------------

def _sample(path: Path) -> tuple[list[str], str, str]:
    """The first lines of the file, its encoding, and why that encoding."""
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    if not path.is_file():
        raise DataError(f"{path}: not a file; give the data file of the train split.")
    with path.open("rb") as f:
        raw = f.read(SAMPLE_BYTES)
    if not raw.strip():
        raise _refuse(path, "the file is empty.")
    if raw[:2] == b"\x1f\x8b" or raw[:4] == b"PK\x03\x04":
        raise _refuse(path, "a compressed file (gzip or zip); decompress it and run tasks init on the text file.")
    if b"\x00" in raw:
        raise _refuse(path, "binary data (NUL bytes); expected text: CoNLL columns, JSONL, CSV/TSV or 'LABEL text' lines.")
    truncated = len(raw) == SAMPLE_BYTES
    encoding, why = "utf-8", "decodes as UTF-8"
    if raw.startswith(b"\xef\xbb\xbf"):
        encoding, why = "utf-8-sig", "UTF-8 with a byte-order mark"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        if truncated and err.start >= len(raw) - 4:  # a character cut off by the sample's end
            text = raw[: err.start].decode(encoding)
        else:
            line = raw.count(b"\n", 0, err.start) + 1
            encoding, why = "latin-1", f"line {line} has byte {raw[err.start]:#04x}, which is not UTF-8"
            text = raw.decode(encoding)
    lines = text.splitlines()
    if truncated and lines:
        lines.pop()  # the last line may be cut
    return lines, encoding, why


# ---- formats ------------------------------------------------------------------------------------

def _conll_shape(lines: list[str]) -> tuple[int, str | None] | None:
    """(columns, delimiter) when the lines are token rows in blank-line-separated sentences."""
    rows = [ln for ln in lines if ln.strip() and not ln.startswith("-DOCSTART-")]
    blocks = sum(1 for i, ln in enumerate(lines) if not ln.strip() and i > 0 and lines[i - 1].strip())
    if len(rows) < 2 or blocks == 0 or len(rows) / (blocks + 1) < 2:
        return None
    for delimiter in (None, "\t"):
        widths = Counter(len(ln.split(delimiter)) for ln in rows)
        if len(widths) == 1:
            return next(iter(widths)), delimiter
    return None


def _delimited_shape(lines: list[str]) -> tuple[str, list[list[str]]] | None:
    """(format, records) when every line splits into the same number (>= 2) of fields."""
    body = [ln for ln in lines if ln.strip()]
    if not body:
        return None
    for fmt, delimiter in (("tsv", "\t"), ("csv", ",")):
        if sum(delimiter in ln for ln in body) < 0.9 * len(body):
            continue
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        records = [r for r in csv.reader(body, delimiter=delimiter, quoting=quoting) if any(c.strip() for c in r)]
        widths = Counter(len(r) for r in records)
        if len(widths) == 1 and next(iter(widths)) >= 2:
            return fmt, records
    return None


def _looks_like_header(records: list[list[str]]) -> bool:
    """A first row of distinct, name-like cells whose values do not recur below them."""
    first, rest = records[0], records[1:SAMPLE_ROWS]
    if not rest or len(set(first)) != len(first):
        return False
    if not all(re.fullmatch(r"[A-Za-z_][\w .\-]{0,40}", cell.strip()) for cell in first):
        return False
    return all(cell not in {r[i] for r in rest} for i, cell in enumerate(first))


def _label_first_pattern(lines: list[str]) -> tuple[str, str] | None:
    """A regex pattern (and why) for lines 'LABEL text...' with few distinct labels."""
    body = [ln for ln in lines if ln.strip()]
    firsts = [ln.split(None, 1) for ln in body]
    if len(body) < 10 or any(len(f) < 2 for f in firsts):
        return None
    labels = Counter(f[0] for f in firsts)
    if not 2 <= len(labels) <= max(2, min(200, len(body) // 10)):
        return None
    if all(label.startswith("__label__") for label in labels):
        return r"^__label__(?P<label>\S+)\s+(?P<text>.+)$", "fastText lines ('__label__X text')"
    return r"^(?P<label>\S+)\s+(?P<text>.+)$", (f"'LABEL text' lines: the first word takes {len(labels)} values "
                                                 f"in {len(body):,} lines")


# ---- roles --------------------------------------------------------------------------------------

def _words(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return value.split()
    return None


def _token_pairs(rows: list[dict[Any, Any]], keys: list[Any]) -> list[tuple[Any, Any]]:
    """(tokens key, tags key) candidates: fields whose lists (or space-separated strings) have equal
    lengths in every row; tokens are the field with more distinct values."""
    pairs = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            la = [_words(r.get(a)) for r in rows]
            lb = [_words(r.get(b)) for r in rows]
            if any(x is None or y is None or len(x) != len(y) for x, y in zip(la, lb)):
                continue
            lists = all(isinstance(r.get(a), list) and isinstance(r.get(b), list) for r in rows)
            strings = all(isinstance(r.get(a), str) and isinstance(r.get(b), str) for r in rows)
            # A text and a list of labels is not a sentence and its tags; nor are one-word cells.
            if not lists and (not strings or sum(len(x) for x in la) < 1.5 * len(rows)):
                continue
            va = {str(t) for x in la for t in x}
            vb = {str(t) for x in lb for t in x}
            pairs.append((a, b) if len(va) >= len(vb) else (b, a))
    return pairs


def _by_name(candidates: list[Any], role: str) -> Any:
    names = {str(k).lower(): k for k in candidates}
    return next((names[n] for n in NAMES[role] if n in names), None)


def _describe(key: Any) -> str:
    return f"column {key}" if isinstance(key, int) else f"'{key}'"


def _guess_token_roles(rows: list[dict[Any, Any]], pairs: list[tuple[Any, Any]], forced: dict[str, Any],
                       path: Path, notes: list[str]) -> dict[str, Any]:
    if "tokens" in forced and "tags" in forced:
        return {"tokens": forced["tokens"], "tags": forced["tags"]}
    tokens = forced.get("tokens") or _by_name([p[0] for p in pairs], "tokens") or pairs[0][0]
    tag_keys = [b for a, b in pairs if a == tokens] + [a for a, b in pairs if b == tokens]
    if "tags" in forced:
        tags = forced["tags"]
    elif len(tag_keys) == 1:
        tags = tag_keys[0]
    else:
        tags = _by_name(tag_keys, "tags")
        if tags is None:
            raise _refuse(path, f"several fields could be the tags of {_describe(tokens)}: "
                                f"{', '.join(_describe(k) for k in tag_keys)}; choose one with --column tags=NAME.")
    if tags not in tag_keys and "tags" not in forced:
        raise _refuse(path, f"{_describe(tags)} does not have one tag per token of {_describe(tokens)}.")
    values = [t for r in rows for t in (_words(r.get(tags)) or [])]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise _refuse(path, f"the tags in {_describe(tags)} are integers (class ids); nlp-mtl needs the tag names "
                            "(B-PER, O, ...) in the file.")
    others = [k for k in tag_keys if k != tags]
    notes.append(f"tokens: {_describe(tokens)}, tags: {_describe(tags)} (one tag per token in every row"
                 + (f"; also one per token: {', '.join(_describe(k) for k in others)}, chosen with --column tags=..."
                    if others else "") + ")")
    return {"tokens": tokens, "tags": tags}


def _guess_sequence_roles(rows: list[dict[Any, Any]], keys: list[Any], forced: dict[str, Any], path: Path,
                          notes: list[str]) -> dict[str, Any]:
    scalar = [k for k in keys if all(isinstance(r.get(k), (str, int, bool)) for r in rows)]
    listed = [k for k in keys if any(isinstance(r.get(k), list) for r in rows)]

    def mean_length(key: Any) -> float:
        return sum(len(str(r.get(key, ""))) for r in rows) / max(1, len(rows))

    def distinct(key: Any) -> int:
        return len({str(r.get(key)) for r in rows})

    label = forced.get("label")
    why_label = "given"
    if label is None:
        label = _by_name(scalar, "label")
        why_label = "by its name"
        if label is None:
            few = [k for k in scalar if distinct(k) <= max(2, min(100, len(rows) // 4)) and mean_length(k) < 40]
            if len(few) != 1:
                listed_label = _by_name(listed, "label")
                if listed_label is not None:
                    raise _refuse(path, f"{_describe(listed_label)} holds lists: several labels per example "
                                        "(multi-label) is not a task type of nlp-mtl.")
                found = ", ".join(_describe(k) for k in few) or "none"
                raise _refuse(path, f"cannot tell which field is the label (fields with few values: {found}); "
                                    "name it with --column label=NAME.")
            label, why_label = few[0], "the only field with few distinct values"
    text = forced.get("text")
    why_text = "given"
    if text is None:
        texts = [k for k in scalar if k != label and any(isinstance(r.get(k), str) for r in rows)]
        text = _by_name(texts, "text")
        why_text = "by its name"
        if text is None:
            if not texts:
                raise _refuse(path, "no text field besides the label; name it with --column text=NAME.")
            text, why_text = max(texts, key=mean_length), "the longest text field"
    pair = forced.get("text_pair") or _by_name([k for k in scalar if k not in (label, text)], "text_pair")
    n_labels = distinct(label)
    notes.append(f"text: {_describe(text)} ({why_text}), label: {_describe(label)} ({why_label}; "
                 f"{n_labels} distinct in the first {len(rows):,} rows)"
                 + (f", text_pair: {_describe(pair)} (by its name)" if pair is not None else ""))
    unused = [k for k in keys if k not in (label, text, pair)]
    if unused:
        notes.append(f"not used: {', '.join(_describe(k) for k in unused)}")
    roles = {"text": text, "label": label}
    if pair is not None:
        roles["text_pair"] = pair
    return roles


def _roles_for_records(rows: list[dict[Any, Any]], keys: list[Any], words: bool | None,
                       forced: dict[str, Any], path: Path, notes: list[str]) -> tuple[str, dict[str, Any]]:
    for role, key in forced.items():
        if key not in keys:
            raise _refuse(path, f"--column {role}={key}: no such field; fields: {', '.join(str(k) for k in keys)}.")
    pairs = _token_pairs(rows, keys)
    sequence_forced = any(r in forced for r in ("text", "label", "text_pair"))
    token_forced = any(r in forced for r in ("tokens", "tags"))
    if words is None:
        if token_forced or (pairs and not sequence_forced):
            scalar_label = _by_name([k for k in keys if all(isinstance(r.get(k), (str, int)) for r in rows)], "label")
            if pairs and scalar_label is not None and scalar_label not in {k for p in pairs for k in p} \
                    and not token_forced:
                raise _refuse(path, f"could be a token task ({_describe(pairs[0][0])} with one tag per token) or a "
                                    f"sequence task (label {_describe(scalar_label)}); choose with --type "
                                    f"{type_with_roles(WORD_ROLES)} or --type {type_with_roles(TEXT_ROLES)}.")
            words = True
        else:
            words = False
    if words:
        if not pairs and not ("tokens" in forced and "tags" in forced):
            raise _refuse(path, "no two fields with one tag per token in every row (lists, or space-separated "
                                "strings of equal length); a token task needs tokens and tags.")
        return True, _guess_token_roles(rows, pairs or [(forced["tokens"], forced["tags"])], forced, path, notes)
    return False, _guess_sequence_roles(rows, keys, forced, path, notes)


# ---- tag scheme ---------------------------------------------------------------------------------

def guess_tag_scheme(sentences: list[list[str]], path: Path) -> tuple[str, str]:
    """The tag scheme of these tag sequences, and why."""
    kinds = Counter(split_tag(t)[0] for tags in sentences for t in tags)
    prefixes = {p for p in kinds if p not in ("", "O")}
    if not prefixes:
        if set(kinds) == {"O"}:
            raise _refuse(path, "every tag is 'O': there is nothing to learn.")
        distinct = len({t for tags in sentences for t in tags})
        return "none", f"plain tags without B-/I- prefixes ({distinct} distinct): scored per token"
    if kinds[""]:
        plain = sorted({t for tags in sentences for t in tags if split_tag(t)[0] == ""})[:3]
        raise _refuse(path, f"tags mix B-/I- prefixed and plain names ({', '.join(plain)}); cannot tell the "
                            "scheme: give it with --tag-scheme iob1, iob2, bioes or none.")
    if prefixes & {"L", "U"}:
        raise _refuse(path, "BILOU tags (L-/U- prefixes) are not a tag scheme of nlp-mtl; "
                            "write them as BIOES (E- for L-, S- for U-).")
    if prefixes & {"E", "S"}:
        return "bioes", "tags with B-/I-/E-/S- prefixes"
    starts = 0
    for tags in sentences:
        previous = ""
        for tag in tags:
            prefix, kind = split_tag(tag)
            if prefix == "I" and previous != kind:
                starts += 1
            previous = kind if prefix in "BI" else ""
    if starts:
        return "iob1", f"{starts:,} entities start with I- (IOB1: B- only between two adjacent entities of one type)"
    return "iob2", "every entity starts with B-, and no I- follows O or another type"


# ---- files beside the train file ----------------------------------------------------------------

def find_siblings(train: Path) -> dict[str, Path]:
    """Validation/test files named like the train file with 'train' replaced (train.txt ->
    valid.txt, ner_train.jsonl -> ner_dev.jsonl, eng.train -> eng.testa)."""
    found: dict[str, Path] = {}
    match = re.search("train", train.name, flags=re.IGNORECASE)
    if not match:
        return found
    for split, words in SPLIT_WORDS.items():
        for word in words:
            candidate = train.with_name(train.name[: match.start()] + word + train.name[match.end():])
            if candidate.is_file() and candidate.resolve() != train.resolve() and candidate not in found.values():
                found[split] = candidate
                break
    return found


def spec_path(file: Path, out: Path | None, root: Path) -> str:
    """How the spec names a data file: relative to the data root when it lies there (as the
    built-in specs do), else relative to the spec's folder, else absolute. A relative path that
    the data root would resolve to another file is written absolute."""
    file = file.resolve()
    if root.is_dir() and file.is_relative_to(root.resolve()):
        return file.relative_to(root.resolve()).as_posix()
    if out is not None:
        relative = Path(os.path.relpath(file, out.resolve().parent))
        if not (root / relative).exists():
            return relative.as_posix()
    return str(file)


def default_name(train: Path) -> str:
    stem = re.sub("train", "", train.stem, flags=re.IGNORECASE).strip("_-. ")
    if not stem or stem.isdigit():
        stem = train.resolve().parent.name
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")
    return name or "task"


# ---- drafting -----------------------------------------------------------------------------------

def _records(fmt: str, lines: list[str], path: Path) -> tuple[list[dict[Any, Any]], list[Any], bool]:
    """Sample rows as field -> value, the fields, and whether the file has a header."""
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _refuse(path, f"line {number} is not JSON ({err.msg}); JSONL needs one object per line.") from None
            if not isinstance(obj, dict):
                raise _refuse(path, f"line {number}: expected a JSON object per line.")
            rows.append(obj)
            if len(rows) >= SAMPLE_ROWS:
                break
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return rows, keys, True
    shape = _delimited_shape(lines)
    assert shape is not None
    records = shape[1]
    header = _looks_like_header(records)
    if header:
        names = [c.strip() for c in records[0]]
        return [dict(zip(names, r)) for r in records[1:SAMPLE_ROWS + 1]], names, True
    return [dict(enumerate(r)) for r in records[:SAMPLE_ROWS]], list(range(len(records[0]))), False


def _parse_columns(pairs: list[str], fmt: str, header: bool) -> dict[str, Any]:
    forced: dict[str, Any] = {}
    for text in pairs:
        role, sep, key = text.partition("=")
        if not sep or role not in NAMES or not key:
            raise ConfigError(f"--column {text}: expected ROLE=COLUMN with ROLE one of {', '.join(NAMES)}, "
                              "e.g. --column tags=1 or --column label=polarity.")
        forced[role] = int(key) if key.lstrip("-").isdigit() and (fmt == "conll" or not header) else key
    return forced


def draft(path: Path, task_type: str | None = None, columns: list[str] | None = None,
          tag_scheme: str | None = None, name: str | None = None) -> Draft:
    """Guess format, roles and tag scheme from the start of ``path``; splits and labels come later."""
    words = None if task_type is None else _words_of_type(task_type)  # one tag per word, or a label per text
    lines, encoding, why_encoding = _sample(path)
    notes = [f"encoding: {encoding} ({why_encoding})"]
    data: dict[str, Any] = {"format": None}
    first = next(ln for ln in lines if ln.strip()).lstrip()
    conll = _conll_shape(lines)
    if first.startswith("{"):
        fmt, why = "jsonl", "one JSON object per line"
    elif first.startswith("["):
        raise _refuse(path, "a JSON array; nlp-mtl reads JSONL (one JSON object per line).")
    elif conll is not None:
        fmt, why = "conll", f"{conll[0]} columns per token, sentences separated by blank lines"
    elif (shape := _delimited_shape(lines)) is not None:
        fmt, why = shape[0], f"{len(shape[1][0])} {'tab' if shape[0] == 'tsv' else 'comma'}-separated columns in every row"
    elif (pattern := _label_first_pattern(lines)) is not None:
        fmt, why = "regex", pattern[1]
        data["pattern"] = pattern[0]
    else:
        raise _refuse(path, "cannot tell the format: not JSONL, not CoNLL (token rows in blank-line-separated "
                            "sentences), not CSV/TSV (the same number of columns in every row), not 'LABEL text' "
                            "lines (few distinct first words).")
    notes.append(f"format: {fmt} ({why})")
    data["format"] = fmt
    if encoding != "utf-8":
        data["encoding"] = encoding

    if fmt == "conll":
        width, delimiter = conll  # type: ignore[misc]
        if words is False:
            raise _refuse(path, "CoNLL columns hold one token per line, which is a token task, not --type "
                                f"{task_type}.")
        sentences = _conll_columns(path, lines, width, delimiter, columns, data, notes)
        words = True
    else:
        rows, keys, header = _records(fmt, lines, path) if fmt != "regex" else ([], ["text", "label"], True)
        if fmt == "regex":
            if words:
                raise _refuse(path, "'LABEL text' lines have one label per line, not one tag per token.")
            words, roles = False, {"text": "text", "label": "label"}
            labels = {ln.split(None, 1)[0] for ln in lines if ln.strip()}
            if all(":" in label for label in labels):
                coarse = sorted({label.split(":", 1)[0] for label in labels})
                notes.append(f"labels look like COARSE:fine ({len(labels)} in the sample, {len(coarse)} coarse: "
                             f"{', '.join(coarse[:8])}); for the coarse classes use the pattern in the comment")
                data["_coarse"] = r"^(?P<label>[^:\s]+):\S+\s+(?P<text>.+)$"
        else:
            if not rows:
                raise _refuse(path, "no data rows (only a header?).")
            if fmt != "jsonl":
                data["header"] = header
                notes.append("header: " + (f"yes ({', '.join(keys)})" if header else
                                           "none (the first row looks like data); columns are 0-based indices"))
            words, roles = _roles_for_records(rows, keys, words, _parse_columns(columns or [], fmt, header),
                                                  path, notes)
            data["columns"] = roles
        sentences = [[str(t) for t in _words(r.get(roles["tags"])) or []] for r in rows] if words else []
    if words:
        if tag_scheme is None:
            tag_scheme, why_scheme = guess_tag_scheme(sentences, path)
            notes.append(f"tag scheme: {tag_scheme} ({why_scheme})")
        data["tag_scheme"] = tag_scheme
    spec = {"name": name or default_name(path), "type": type_with_roles(WORD_ROLES if words else TEXT_ROLES),
            "data": data}
    return Draft(spec=spec, notes=notes)


def _conll_columns(path: Path, lines: list[str], width: int, delimiter: str | None, columns: list[str] | None,
                   data: dict[str, Any], notes: list[str]) -> list[list[str]]:
    """Which CoNLL columns are tokens and tags (into ``data``); the sample's tag sentences."""
    if width < 2:
        raise _refuse(path, "one column per line: tokens without tags.")
    forced = _parse_columns(columns or [], "conll", False)
    if set(forced) - {"tokens", "tags"}:
        raise ConfigError(f"--column {', '.join(sorted(set(forced) - {'tokens', 'tags'}))}: CoNLL columns hold "
                          "tokens and tags only.")
    tokens, tags = int(forced.get("tokens", 0)), int(forced.get("tags", width - 1))
    if not (0 <= tags < width and 0 <= tokens < width) or tags == tokens:
        raise _refuse(path, f"--column: the file has columns 0..{width - 1}, and tokens and tags must differ.")
    notes.append(f"tokens: column {tokens}, tags: column {tags}"
                 + (" (given)" if "tags" in forced else " (the last: CoNLL files keep the NER tags there; "
                                                       "another column with --column tags=N)"))
    data["columns"] = {"tokens": tokens, "tags": tags}
    if delimiter:
        data["delimiter"] = delimiter
    return _conll_sentences(lines, tags, delimiter)


def _conll_sentences(lines: list[str], column: int, delimiter: str | None) -> list[list[str]]:
    sentences: list[list[str]] = [[]]
    for line in lines:
        if not line.strip() or line.startswith("-DOCSTART-"):
            if sentences[-1]:
                sentences.append([])
            continue
        sentences[-1].append(line.split(delimiter)[column])
    return [s for s in sentences if s]


def _length_guess(rows: list[dict[str, Any]], token_level: bool) -> tuple[int, str]:
    """max_length from the train split's word counts at ~1.5 word pieces a word: the longest
    sentence for a token task (a cut-off word gets no tag), the 99th percentile for a sequence task."""
    counts = sorted(len(r["tokens"]) if token_level else len(r["text"].split()) + len(r.get("text_pair", "").split())
                    for r in rows)
    if token_level:
        words, why = counts[-1], f"the longest train sentence has {counts[-1]} words"
    else:
        words = counts[min(len(counts) - 1, int(0.99 * len(counts)))]
        why = f"99 % of train examples have at most {words} words"
    length = min(512, max(32, 8 * math.ceil((words * 1.5 + 3) / 8)))
    return length, f"{why}, ~1.5 word pieces each"


def complete(d: Draft, path: Path, root: Path, out: Path | None, validation: Path | None = None,
             test: Path | None = None) -> TaskSpec:
    """Add splits, labels and max_length by reading every split through the real readers; the
    returned spec is the one the YAML describes."""
    from .data.loading import load_task_data
    from .data.pipeline import check_spec
    from .registry import TASK_TYPES

    data = d.spec["data"]
    siblings = find_siblings(path)
    files = {"train": path, "validation": validation or siblings.get("validation"), "test": test or siblings.get("test")}
    data["train"] = spec_path(path, out, root)
    missing = {"validation": "10 % of train is held out", "test": "add data.test when there is one"}
    for split, given in (("validation", validation), ("test", test)):
        if files[split] is not None:
            data[split] = spec_path(files[split], out, root)
            d.notes.append(f"{split}: {files[split]}" + ("" if given else " (named like the train file)"))
        else:
            d.notes.append(f"{split}: no file named like the train file; {missing[split]}")
            if split == "validation":
                data[split] = {"from_train": 0.1, "seed": 42}
    present = [s for s in ("train", "validation", "test") if files[s] is not None]
    spec_map = {k: v for k, v in d.spec.items()}
    spec_map["data"] = {k: v for k, v in data.items() if not k.startswith("_")}
    spec_map["labels"] = {"from_splits": present}
    source = str(out.resolve()) if out is not None else ""
    where = out.name if out is not None else "tasks init"
    spec = replace(from_mapping(TaskSpec, spec_map, where), source=source)
    check_spec(spec)
    loaded = load_task_data(spec, root)
    token_level = TASK_TYPES.get(spec.type).roles.token_level
    per_split = {s: {lab for r in rows for lab in (r["tags"] if token_level else [r["label"]])}
                 for s, rows in loaded.splits.items()}
    if len(loaded.labels) < 2:
        raise _refuse(path, f"one label only ({', '.join(loaded.labels)}), so there is nothing to tell apart; "
                            "is the label column right? (--column label=... or --column tags=...)")
    only_later = sorted(set().union(*per_split.values()) - per_split["train"])
    if only_later:
        d.spec["labels"] = {"from_splits": present}
        d.comments["labels"] = (f"{', '.join(only_later[:6])} {'is' if len(only_later) == 1 else 'are'} only in "
                                "validation/test; this gives them outputs "
                                "(never trained on). Delete the line to refuse them instead.")
        d.notes.append(f"labels: {', '.join(only_later[:6])} only in validation/test, so labels come from "
                       f"{', '.join(present)}")
    length, why_length = _length_guess(loaded.splits["train"], token_level)
    d.spec["max_length"] = length
    d.comments["max_length"] = why_length
    if not token_level and set(loaded.labels) <= {"0", "1"}:
        d.comments["data.columns"] = ('labels are 0/1: name them with label_map, e.g. '
                                     'label_map: {"0": negative, "1": positive}')
    d.spec["metric"] = TASK_TYPES.get(spec.type).main_metric(spec)
    counts = ", ".join(f"{s} {len(rows):,}" for s, rows in loaded.splits.items())
    shown = ", ".join(loaded.labels[:12]) + (", ..." if len(loaded.labels) > 12 else "")
    d.comments["name"] = f"{counts} examples; {len(loaded.labels)} labels: {shown}"
    return spec


# ---- YAML ---------------------------------------------------------------------------------------

def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=1 << 16).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def render(d: Draft, source: Path) -> str:
    """The spec as commented YAML: the guesses in a header, each key's reason beside it."""
    lines = [f"# Drafted by `nlp-mtl tasks init {source}`; check it with `nlp-mtl tasks validate`.",
             "# What was guessed, and why:"]
    lines += [f"#   {note}" for note in d.notes]

    def put(key: str, value: Any, indent: str = "") -> None:
        comment = d.comments.get(key)
        lines.append(f"{indent}{key.rsplit('.', 1)[-1]}: {_flow(value)}" + (f"  # {comment}" if comment else ""))

    spec = d.spec
    put("name", spec["name"])
    put("type", spec["type"])
    lines.append("data:")
    data = spec["data"]
    for key, value in data.items():
        if key.startswith("_"):
            continue
        put(f"data.{key}", value, "  ")
        if key == "pattern" and "_coarse" in data:
            lines.append(f"  # coarse classes: pattern: {_flow(data['_coarse'])}")
    for key in ("labels", "max_length", "metric"):
        if key in spec:
            put(key, spec[key])
    return "\n".join(lines) + "\n"


# ---- the command --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_file", help="the train split's data file (CoNLL columns, JSONL, CSV/TSV, 'LABEL text' lines)")
    parser.add_argument("--type", help="task type: token_classification or sequence_classification (default: guessed)")
    parser.add_argument("--out", metavar="SPEC.yaml", help="write the spec here (default: print it)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--name", help="task name (default: from the file or folder name)")
    parser.add_argument("--column", action="append", default=[], metavar="ROLE=COLUMN",
                        help="fix a role's column: tokens, tags, text, text_pair or label = a 0-based index "
                             "(CoNLL, CSV/TSV without header) or a field/header name, e.g. --column tags=1 for "
                             "the POS column of CoNLL-2003 (repeatable)")
    parser.add_argument("--tag-scheme", choices=["iob1", "iob2", "bioes", "none"], help="tag scheme (default: guessed)")
    parser.add_argument("--validation", metavar="FILE", help="validation file (default: one named like the train file)")
    parser.add_argument("--test", metavar="FILE", help="test file (default: one named like the train file)")
    parser.add_argument("--data-root", help="data root the spec's paths are written relative to")


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.data_file).expanduser()
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not args.force:
        raise UserError(f"--out {out}: exists; pass --force to replace it.")
    root = Path(args.data_root).expanduser().resolve() if args.data_root else default_data_root()
    extra = {}
    for split in ("validation", "test"):
        value = getattr(args, split)
        if value is not None:
            extra[split] = Path(value).expanduser()
            if not extra[split].is_file():
                raise UserError(f"--{split} {value}: file not found.")
    d = draft(path, args.type, args.column, args.tag_scheme, args.name)
    complete(d, path, root, out, **extra)
    text = render(d, path)
    # What is written must read back as the spec that was checked.
    from_mapping(TaskSpec, yaml.safe_load(text), "tasks init output")
    if out is None:
        sys.stdout.write(text)
        return 0
    from .fileio import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    print("\n".join(d.notes))
    print(f"wrote {out}; check it with: nlp-mtl tasks validate {out}")
    return 0
