"""data.storage 'disk': train splits stream from their files into a memory-mapped tokenised cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nlp_mtl.cli import main
from nlp_mtl.config import load_task_spec
import nlp_mtl
from nlp_mtl.data.disk_store import encode_to_disk, sweep_abandoned, write_split
from nlp_mtl.data.encoding import EncodedSplit, Ragged
from nlp_mtl.data.loading import StreamedRows, load_task_data
from nlp_mtl.errors import ConfigError, DataError
from nlp_mtl.fileio import current_umask
from nlp_mtl.registry import TASK_TYPES

from .conftest import write_experiment


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def _spec(data_dir: Path, name: str):
    return load_task_spec(data_dir / "specs" / f"{name}.yaml")


def _same(a: EncodedSplit, b: EncodedSplit) -> None:
    assert len(a) == len(b) and a.truncated == b.truncated
    for field in ("input_ids", "labels", "token_type_ids", "word_index"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if isinstance(x, Ragged):
            np.testing.assert_array_equal(x.flat, y.flat, err_msg=field)
            np.testing.assert_array_equal(x.offsets, y.offsets, err_msg=field)
        elif x is not None:
            np.testing.assert_array_equal(x, y, err_msg=field)


def _both(data_dir: Path, name: str, tokenizer, cache: Path, chunk_rows: int = 7, limit=None):
    root = data_dir / "data"
    spec = _spec(data_dir, name)
    memory = load_task_data(spec, root, limit)
    disk = load_task_data(spec, root, limit, stream_train=True)
    task_type = TASK_TYPES.get(spec.type)
    in_memory = task_type.encode(memory.splits["train"], tokenizer, memory.labels, spec.max_length)
    on_disk = encode_to_disk(task_type, disk.splits["train"], tokenizer, disk.labels, spec.max_length, cache,
                             chunk_rows=chunk_rows)
    return memory, disk, in_memory, on_disk


@pytest.mark.parametrize("name", ["toy_ner", "toy_sent", "toy_sent_csv"])
def test_disk_split_equals_the_in_memory_one_across_chunks(data_dir, tokenizer, tmp_path, name):
    memory, disk, in_memory, on_disk = _both(data_dir, name, tokenizer, tmp_path / "cache")
    assert isinstance(disk.splits["train"], StreamedRows)
    assert len(disk.splits["train"]) == len(memory.splits["train"]) == len(on_disk)
    assert disk.labels == memory.labels
    # A carved validation split holds the same rows either way.
    assert disk.splits.get("validation") == memory.splits.get("validation")
    assert list(disk.splits["train"]) == memory.splits["train"]
    _same(in_memory, on_disk)
    assert isinstance(on_disk.input_ids.flat, np.memmap)


def test_limit_and_peeking_give_the_in_memory_rows(data_dir, tokenizer, tmp_path):
    memory, disk, in_memory, on_disk = _both(data_dir, "toy_sent", tokenizer, tmp_path / "cache", limit={"train": 50})
    assert len(on_disk) == len(disk.splits["train"]) == 50
    _same(in_memory, on_disk)
    assert disk.splits["train"][:3] == memory.splits["train"][:3]


def _cached(cache: Path) -> list[str]:
    """What a cache folder holds, without the lock files that let processes take turns."""
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock")


def _jsonl_task(folder: Path, name: str, rows: list[dict]):
    """A sentence classification spec over ``rows``, written as ``folder``/train.jsonl."""
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec_path = folder / f"{name}.yaml"
    spec_path.write_text(f"name: {name}\ntype: sequence_classification\n"
                         "data: {format: jsonl, train: train.jsonl}\nmax_length: 16\n")
    return load_task_spec(spec_path)


@pytest.mark.parametrize("limit", [None, 5])
def test_pairs_in_a_later_chunk_are_encoded_as_in_memory(tmp_path, tokenizer, limit):
    # Only the last row has a second segment: in memory every row is then a pair, and a chunk
    # holding no pair must not be encoded differently. With a limit that drops that row, no row
    # is a pair, again as in memory.
    spec = _jsonl_task(tmp_path, "pairs", [{"text": f"alice met bob {i}", "label": "pos" if i % 2 else "neg",
                                            **({"text_pair": "in paris"} if i == 9 else {})} for i in range(10)])
    limits = {"train": limit} if limit else None
    memory = load_task_data(spec, tmp_path, limits)
    disk = load_task_data(spec, tmp_path, limits, stream_train=True)
    task_type = TASK_TYPES.get(spec.type)
    in_memory = task_type.encode(memory.splits["train"], tokenizer, memory.labels, 16)
    on_disk = encode_to_disk(task_type, disk.splits["train"], tokenizer, disk.labels, 16, tmp_path / "cache",
                             chunk_rows=4)
    assert (in_memory.token_type_ids is not None) == (limit is None)
    _same(in_memory, on_disk)


@pytest.mark.parametrize("stream_train", [False, True])
def test_a_pair_late_in_the_train_split_makes_a_pair_head(tmp_path, tokenizer, stream_train):
    # Encoding makes every row a pair once any row has a second segment, and records it; the
    # head's flag (which routes pair input in predict) is read from the encoding, so it says the
    # same however late the first pair comes, read into memory or streamed from the file.
    from nlp_mtl.data.pipeline import encode_all
    from nlp_mtl.training.trainer import head_infos

    spec = _jsonl_task(tmp_path, "nli", [{"text": f"claim {i}", "label": "no" if i % 2 else "yes",
                                          **({"text_pair": "evidence"} if i == 250 else {})} for i in range(300)])
    cache = tmp_path / "cache" if stream_train else None
    data = load_task_data(spec, tmp_path, stream_train=stream_train, cache_dir=cache)
    (task,) = encode_all([data], tokenizer, quiet=True, cache_dir=cache)
    assert task.encoded["train"].pairs and head_infos([task])[0].pair


def test_a_split_finished_by_another_process_is_taken_and_a_short_read_is_refused(data_dir, tokenizer, tmp_path):
    spec = _spec(data_dir, "toy_ner")
    data = load_task_data(spec, data_dir / "data")
    encoded = TASK_TYPES.get(spec.type).encode(data.splits["train"], tokenizer, data.labels, spec.max_length)
    target = tmp_path / "cache" / "toy_ner-abc"
    first = write_split([encoded], target, "abc")
    # A second writer of the same split (another rank) renames onto a finished folder.
    second = write_split([encoded], target, "abc")
    _same(encoded, first)
    _same(encoded, second)
    assert [p.name for p in target.parent.iterdir()] == ["toy_ner-abc"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # published like a plain mkdir, not private
    with pytest.raises(DataError, match="changed while this run was reading it"):
        write_split([encoded], tmp_path / "cache" / "toy_ner-def", "def", expected=len(encoded) + 1, source="x.txt")
    assert [p.name for p in target.parent.iterdir()] == ["toy_ner-abc"]


def test_cache_is_reused_and_a_changed_file_is_tokenised_again(data_dir, tokenizer, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _, disk, in_memory, first = _both(data_dir, "toy_ner", tokenizer, cache)
    spec = disk.spec
    task_type = TASK_TYPES.get(spec.type)
    calls = []
    original = type(task_type).encode
    monkeypatch.setattr(type(task_type), "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    again = encode_to_disk(task_type, disk.splits["train"], tokenizer, disk.labels, spec.max_length, cache)
    assert calls == [] and len(_cached(cache)) == 1
    _same(in_memory, again)

    train = data_dir / "data" / "ner_train.txt"
    train.write_text(train.read_text() + "bob X X B-PER\n\n")
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))
    changed = load_task_data(spec, data_dir / "data", stream_train=True)
    grown = encode_to_disk(task_type, changed.splits["train"], tokenizer, changed.labels, spec.max_length, cache)
    assert calls and len(grown) == len(first) + 1 and len(_cached(cache)) == 2


def test_a_second_run_does_not_check_an_unchanged_file_again(data_dir, tmp_path, monkeypatch):
    import nlp_mtl.data.loading as loading

    spec, root, cache = _spec(data_dir, "toy_sent"), data_dir / "data", tmp_path / "cache"
    first = load_task_data(spec, root, {"train": 90}, stream_train=True, cache_dir=cache)
    reads = []
    original = loading.file_rows
    monkeypatch.setattr(loading, "file_rows", lambda spec, roles, path: (
        reads.append(1) if path.name == "sent_train.jsonl" else None) or original(spec, roles, path))
    second = load_task_data(spec, root, {"train": 90}, stream_train=True, cache_dir=cache)
    assert reads == []  # labels, counts and the carved validation split came from the record
    assert (second.labels, second.splits["validation"], len(second.splits["train"])) == \
        (first.labels, first.splits["validation"], 90)
    assert second.splits["train"].held == first.splits["train"].held
    assert list(second.splits["train"]) == list(first.splits["train"])

    train = root / "sent_train.jsonl"
    train.write_text(train.read_text() + json.dumps({"sentence": "a new awful movie", "polarity": "neu"}) + "\n")
    reads.clear()
    third = load_task_data(spec, root, stream_train=True, cache_dir=cache)
    assert reads and "neu" in third.labels


def test_an_interrupted_write_leaves_nothing_behind(data_dir, tokenizer, tmp_path):
    spec = _spec(data_dir, "toy_ner")
    disk = load_task_data(spec, data_dir / "data", stream_train=True)
    cache = tmp_path / "cache"

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_to_disk(TASK_TYPES.get(spec.type), disk.splits["train"], tokenizer, disk.labels, spec.max_length,
                       cache, progress=interrupt, chunk_rows=5)
    assert _cached(cache) == []


@pytest.mark.skipif(sys.platform == "win32", reason="no file locks to tell a live writer from a dead one")
def test_a_killed_writers_folder_is_swept_and_a_live_ones_is_kept(data_dir, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    # A writer that never gets its first chunk: it holds its temporary folder until killed.
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from nlp_mtl.data.disk_store import "
         "write_split; write_split((time.sleep(600) for _ in [0]), Path(sys.argv[1]), 'abc')", str(cache / "big-abc")],
        cwd=Path(nlp_mtl.__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob(".big-abc.*/.writing")):
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.1)
        (tmp,) = cache.glob(".big-abc.*")
        assert sweep_abandoned(cache) == [] and tmp.is_dir()  # being written: kept
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert tmp.is_dir()  # SIGKILL runs no clean-up

    spec = _spec(data_dir, "toy_ner")
    data = load_task_data(spec, data_dir / "data")
    encoded = TASK_TYPES.get(spec.type).encode(data.splits["train"], tokenizer, data.labels, spec.max_length)
    # A folder another machine writes into a shared cache: its lock may not show here, so it stays.
    remote = cache / ".remote-abc.x"
    remote.mkdir()
    (remote / ".writing").write_text("another-host")
    _same(encoded, write_split([encoded], cache / "toy_ner-def", "def"))  # the next write sweeps
    assert sorted(p.name for p in cache.iterdir()) == [".remote-abc.x", "toy_ner-def"]
    assert sorted(p.name for p in (cache / "toy_ner-def").iterdir() if p.name.startswith(".")) == []


def test_streaming_reports_bad_data_with_its_line(tmp_path):
    (tmp_path / "train.txt").write_text("alice B-PER\nmet O\n\nbob Q-PER\n")
    spec_path = tmp_path / "bad.yaml"
    spec_path.write_text("name: bad\ntype: token_classification\ndata: {format: conll, train: train.txt}\n")
    with pytest.raises(DataError, match=r"train.txt:4"):
        load_task_data(load_task_spec(spec_path), tmp_path, stream_train=True)


def test_a_label_only_in_carved_validation_is_refused_as_in_memory(tmp_path):
    lines = [json.dumps({"text": f"row {i}", "label": "a" if i % 2 else "b"}) for i in range(20)]
    spec_path = tmp_path / "carve.yaml"
    spec_path.write_text("name: carve\ntype: sequence_classification\n"
                         "data: {format: jsonl, train: train.jsonl, validation: {from_train: 0.5, seed: 3}}\n")
    spec = load_task_spec(spec_path)
    # Put a one-off label on a row the carve holds out, so train never sees it.
    from nlp_mtl.data.loading import _held_out

    held = sorted(_held_out(20, spec.data.validation))
    lines[held[0]] = json.dumps({"text": "odd one", "label": "c"})
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    messages = []
    for stream in (False, True):
        with pytest.raises(DataError) as err:
            load_task_data(spec, tmp_path, stream_train=stream)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "label 'c' never appears in the train split" in messages[0]


def test_hub_tasks_are_refused_with_disk_storage(tmp_path):
    spec_path = tmp_path / "hub.yaml"
    spec_path.write_text("name: hub\ntype: sequence_classification\ndata: {format: hub, name: glue, config: sst2}\n")
    with pytest.raises(ConfigError, match="data.storage 'disk'"):
        load_task_data(load_task_spec(spec_path), tmp_path, stream_train=True)


def test_training_from_disk_matches_training_from_memory(data_dir, tiny_bert, tmp_path):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], steps=30, evaluations=1)
    results = {}
    for storage in ("memory", "disk"):
        run = tmp_path / storage
        assert main(["--quiet", "train", str(config), "--output-dir", str(run), "--set", f"data.storage={storage}",
                     "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
        results[storage] = {t: json.loads((run / "reports" / f"{t}.test.json").read_text())["metrics"]
                            for t in ("toy_ner", "toy_sent")}
    assert results["disk"] == results["memory"]
    # One tokenised train split per task, and what checking each train file found.
    assert sorted(p.split("-")[0] for p in _cached(tmp_path / "cache")) == ["checked", "toy_ner", "toy_sent"]
    assert len(_cached(tmp_path / "cache" / "checked")) == 2


def test_storage_value_is_checked(data_dir, tiny_bert, capsys):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner"])
    assert main(["--quiet", "train", str(config), "--set", "data.storage=ssd"]) != 0
    err = capsys.readouterr().err
    assert "data.storage" in err and "disk" in err and "Traceback" not in err
