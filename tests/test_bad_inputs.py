"""The bad-input corpus: every case in tests/bad_inputs/ must fail cleanly.

Each case folder holds the files a user might write and case.json with the command and the
message expected. The command must exit with code 2, print one message naming the problem
(file and line or key), print no traceback, and leave every file in the folder untouched and
nothing new written.
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest

from nlp_mtl.cli import main

CASES = sorted(p for p in (Path(__file__).parent / "bad_inputs").iterdir() if (p / "case.json").is_file())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly(case, tmp_path, monkeypatch, capsys):
    spec = json.loads((case / "case.json").read_text())
    work = tmp_path / case.name
    shutil.copytree(case, work)
    before = _snapshot(work)
    monkeypatch.chdir(work)
    code = main(shlex.split(spec["command"]))
    err = capsys.readouterr().err
    assert code == 2, err
    assert spec["expect"] in err, f"expected {spec['expect']!r} in:\n{err}"
    assert "Traceback" not in err and err.count("\n") <= 2, err
    assert _snapshot(work) == before, "a failing command wrote or changed files"
