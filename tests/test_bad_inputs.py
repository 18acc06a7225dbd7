"""The bad-input corpus: every case in tests/bad_inputs/ must fail cleanly.

Each case folder holds the files a user might write and case.json with the command and the
message expected. The command must exit with code 2, print one message naming the problem
(file and line or key), print no traceback, and leave every file in the folder untouched and
nothing new written.

Every case also finds a finished tiny run at ``run/`` beside its files (commands may name it),
and that run must come out byte for byte as it went in, whatever the command. ``setup`` in
case.json damages the copy first where a case needs it: ``{"delete": PATH}``, ``{"truncate":
PATH}`` (to half), ``{"flip": PATH}`` (one byte near the end), ``{"write": [PATH, TEXT]}``, ``{"bump_format_version":
PATH}`` (a JSON record from a later nlp-mtl).
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest

from nlp_mtl.cli import main

from .conftest import make_data_dir, write_experiment

CASES = sorted(p for p in (Path(__file__).parent / "bad_inputs").iterdir() if (p / "case.json").is_file())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 70


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert) -> Path:
    """A finished two-task run of a few steps (toy_ner: conll, toy_sent: jsonl)."""
    tmp = tmp_path_factory.mktemp("corpus_run")
    make_data_dir(tmp)
    config = write_experiment(tmp, tiny_bert, ["toy_ner", "toy_sent"], steps=6, evaluations=1, log_every=3)
    assert main(["--quiet", "train", str(config), "--output-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def _setup(work: Path, steps: list[dict]) -> None:
    for step in steps:
        (op, arg), = step.items()
        if op == "delete":
            (work / arg).unlink()
        elif op == "truncate":
            data = (work / arg).read_bytes()
            (work / arg).write_bytes(data[: len(data) // 2])
        elif op == "flip":
            data = bytearray((work / arg).read_bytes())
            data[-3] ^= 0xFF
            (work / arg).write_bytes(bytes(data))
        elif op == "write":
            (work / arg[0]).write_text(arg[1])
        elif op == "bump_format_version":
            record = json.loads((work / arg).read_text())
            record["format_version"] += 1
            (work / arg).write_text(json.dumps(record))
        else:
            raise ValueError(f"unknown setup step {step}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly(case, finished_run, tmp_path, monkeypatch, capsys):
    spec = json.loads((case / "case.json").read_text())
    work = tmp_path / case.name
    shutil.copytree(case, work)
    assert not (work / "run").exists(), "run/ is the finished run every case gets"
    shutil.copytree(finished_run, work / "run")
    _setup(work, spec.get("setup", []))
    before, folders_before = _snapshot(work), _folders(work)
    monkeypatch.chdir(work)
    code = main(shlex.split(spec["command"]))
    err = capsys.readouterr().err
    assert code == 2, err
    assert spec["expect"] in err, f"expected {spec['expect']!r} in:\n{err}"
    assert "Traceback" not in err and err.count("\n") <= 2, err
    after = _snapshot(work)
    assert {k: v for k, v in after.items() if k.startswith("run/")} == \
        {k: v for k, v in before.items() if k.startswith("run/")}, "a failing command changed the finished run"
    assert after == before, "a failing command wrote or changed files"
    # no folder appeared either (an empty one left by a half-done write)
    assert _folders(work) == folders_before, "a failing command made a folder"


def _folders(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}
