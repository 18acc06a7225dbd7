"""Tokenised train splits on disk, memory-mapped (``data.storage: disk``).

A streamed split is tokenised a chunk at a time by its task type's own ``encode`` and appended
to flat binary files (CSR: one flat array and offsets per field, as in memory), so preprocessing
holds one chunk, never the split. Training then reads the files through ``np.memmap``: a batch
is a few slices, the OS pages in what is touched, and resident memory does not grow with the
dataset. The directory is named by a fingerprint of everything that decides its contents (the
file's identity: path, size, mtime, ctime, inode; the task's data settings and labels,
max_length, the tokenizer and the package version), so a second run reuses it and any change tokenises afresh. It is written under a
temporary name and renamed when complete: an interrupted run leaves no half-written cache.
A writer holds a lock on its temporary folder; one that was killed (SIGKILL, out of memory,
power cut) releases it with its process, and the next write into the cache from the same
machine removes the folder. Processes that need the same entry take turns on a lock file beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DataError
from ..fileio import fcntl, one_at_a_time, publish_mode
from .encoding import EncodedSplit, Ragged
from .loading import StreamedRows, has_text_pairs, key_digest

# 2: the manifest records whether the split was encoded as sentence pairs.
FORMAT_VERSION = 2
MANIFEST = "split.json"
CHUNK_ROWS = 20_000
FIELDS = ("input_ids", "labels", "token_type_ids", "word_index")
WRITING = ".writing"  # in a temporary folder: locked by the process writing it


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nlp_mtl" / "encoded"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Vocabulary, normaliser, pre-tokeniser and post-processor: the serialised Rust tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    digest = hashlib.sha256(text.encode())
    digest.update(f"{type(tokenizer).__name__}:{list(tokenizer.model_input_names)}".encode())
    return digest.hexdigest()


def split_fingerprint(rows: StreamedRows, tokenizer: Any, labels: list[str], max_length: int) -> str:
    spec = rows.spec
    return key_digest({"format_version": FORMAT_VERSION, "file": rows.identity(), "type": spec.type,
                       "data": asdict(spec.data), "labels": labels, "max_length": max_length,
                       "tokenizer": tokenizer_fingerprint(tokenizer)})


class _FieldWriter:
    """Appends one field's chunks: a flat binary file, plus offsets when rows are ragged."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.path = directory / f"{name}.bin"
        self.handle = self.path.open("wb")
        self.dtype: np.dtype | None = None
        self.size = 0
        self.ragged: bool | None = None
        self.lengths: list[np.ndarray] = []
        # Fixed-width rows (a multi-hot label matrix): the shape of one example's entry.
        self.row_shape: tuple[int, ...] = ()

    def append(self, value: Ragged | np.ndarray) -> None:
        flat = value.flat if isinstance(value, Ragged) else np.asarray(value)
        ragged = isinstance(value, Ragged)
        if self.ragged is None:
            self.ragged, self.dtype, self.row_shape = ragged, flat.dtype, flat.shape[1:]
        elif ragged != self.ragged or flat.dtype != self.dtype or flat.shape[1:] != self.row_shape:
            raise RuntimeError(f"{self.name}: chunks disagree in shape or dtype ({flat.dtype} after {self.dtype})")
        if ragged:
            self.lengths.append(value.lengths())
        self.handle.write(np.ascontiguousarray(flat).tobytes())
        self.size += flat.size

    def finish(self) -> dict[str, Any]:
        self.handle.close()
        if self.ragged:
            offsets = np.zeros(sum(len(x) for x in self.lengths) + 1, dtype=np.int64)
            if self.lengths:
                np.cumsum(np.concatenate(self.lengths), out=offsets[1:])
            np.save(self.path.with_suffix(".offsets.npy"), offsets)
        info = {"dtype": str(self.dtype), "size": self.size, "ragged": bool(self.ragged)}
        return {**info, "row_shape": list(self.row_shape)} if self.row_shape else info


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _claim(tmp: Path) -> IO[str] | None:
    """Lock ``tmp`` as being written, for as long as the returned handle stays open (None: the
    system has no file locks, and the folder is never swept)."""
    if fcntl is None:
        return None
    # Locked under another name first: a sweep that found the lock file before it was locked
    # would take a live folder for an abandoned one.
    handle = (tmp / f"{WRITING}-new").open("w")
    handle.write(socket.gethostname())
    handle.flush()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:  # a file system without locks: the sweep cannot lock it either, and keeps it
        pass
    os.replace(tmp / f"{WRITING}-new", tmp / WRITING)
    return handle


def sweep_abandoned(cache_dir: Path) -> list[Path]:
    """Remove the temporary folders in ``cache_dir`` whose writer is gone (its lock is free);
    folders being written now, by any process, are kept, and so are those written from another
    machine, whose locks a network file system may not show here. Returns what was removed."""
    removed: list[Path] = []
    if fcntl is None or not cache_dir.is_dir():
        return removed
    for tmp in cache_dir.glob(".*"):
        try:
            handle = (tmp / WRITING).open("a+")  # writable: network file systems lock through fcntl()
        except OSError:  # not a temporary folder, or one not claimed yet
            continue
        with handle:
            handle.seek(0)
            if handle.read() != socket.gethostname():
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its writer is alive
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def write_split(encoded_chunks: Iterable[EncodedSplit], directory: Path, fingerprint: str,
                expected: int | None = None, source: str = "") -> EncodedSplit:
    """Write chunks as one split at ``directory`` (atomically) and return it memory-mapped.
    ``expected``: the number of examples the checking pass counted in ``source``."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(directory.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    claim: IO[str] | None = None
    writers: dict[str, _FieldWriter] = {}
    try:
        claim = _claim(tmp)
        examples = truncated = 0
        pairs = False
        for chunk in encoded_chunks:
            pairs = pairs or chunk.pairs
            present = {name: getattr(chunk, name) for name in FIELDS if getattr(chunk, name) is not None}
            if examples and set(present) != set(writers):
                raise RuntimeError(f"chunks disagree in fields: {sorted(present)} after {sorted(writers)}")
            for name, value in present.items():
                if name not in writers:
                    writers[name] = _FieldWriter(tmp, name)
                writers[name].append(value)
            examples += len(chunk)
            truncated += chunk.truncated
        fields = {name: w.finish() for name, w in writers.items()}
        if expected is not None and examples != expected:
            raise DataError(f"{source}: {examples} examples read now, {expected} when the file was checked; "
                            "it changed while this run was reading it. Run again.")
        manifest = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "examples": examples,
                    "truncated": truncated, "pairs": pairs, "fields": fields}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        publish_mode(tmp)  # mkdtemp made it private; a shared cache must be readable like any folder
        if claim is not None:
            (tmp / WRITING).unlink()  # the lock is held until after the rename: no sweep takes the folder
        try:
            tmp.rename(directory)
        except OSError:
            if not (directory / MANIFEST).is_file():
                raise
            # Another process (a rank of the same run) finished the same split first: same contents.
            shutil.rmtree(tmp)
    except BaseException:
        for writer in writers.values():
            writer.handle.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if claim is not None:
            claim.close()
    return open_split(directory)


def open_split(directory: Path) -> EncodedSplit:
    manifest = json.loads((directory / MANIFEST).read_text())
    fields: dict[str, Ragged | np.ndarray] = {}
    for name, info in manifest["fields"].items():
        path = directory / f"{name}.bin"
        dtype = np.dtype(info["dtype"])
        # np.memmap cannot map an empty file.
        flat = np.memmap(path, dtype=dtype, mode="r", shape=(info["size"],)) if info["size"] else np.empty(0, dtype)
        if info.get("row_shape"):
            flat = flat.reshape(-1, *info["row_shape"])
        fields[name] = Ragged(flat, np.load(path.with_suffix(".offsets.npy"), mmap_mode="r")) if info["ragged"] else flat
    return EncodedSplit(input_ids=fields["input_ids"], labels=fields["labels"],
                        token_type_ids=fields.get("token_type_ids"), word_index=fields.get("word_index"),
                        truncated=int(manifest["truncated"]), pairs=bool(manifest.get("pairs", False)))


def encode_to_disk(task_type: Any, rows: StreamedRows, tokenizer: Any, labels: list[str], max_length: int,
                   cache_dir: Path, progress: Callable[[int], None] | None = None,
                   chunk_rows: int = CHUNK_ROWS) -> EncodedSplit:
    """Tokenise a streamed split chunk by chunk into ``cache_dir``, or open it if already there."""
    fingerprint = split_fingerprint(rows, tokenizer, labels, max_length)
    directory = cache_dir / f"{rows.spec.name}-{fingerprint}"

    def encoded_split() -> Iterator[EncodedSplit]:
        for chunk in _chunks(rows, chunk_rows):
            if has_text_pairs(rows):
                # In memory, one pair anywhere makes every row a pair (missing second segment: "");
                # each chunk must be encoded the same way, not by what it happens to hold.
                chunk = [row if "text_pair" in row else {**row, "text_pair": ""} for row in chunk]
            yield task_type.encode(chunk, tokenizer, labels, max_length)
            if progress:
                progress(len(chunk))

    with one_at_a_time(cache_dir / f".{directory.name}.lock"):
        if (directory / MANIFEST).is_file():  # made before, or by another process while this one waited
            return open_split(directory)
        return write_split(encoded_split(), directory, fingerprint, expected=len(rows), source=str(rows.path))
