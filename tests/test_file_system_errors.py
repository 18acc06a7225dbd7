"""File-system errors are user errors: one line naming the path and what to do, exit 2, no
traceback; a real full disk (a small tmpfs) while training ends that way, and the run resumes
once space is freed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from nlp_mtl.cli import main
from nlp_mtl.fileio import FileSystemError, atomic_write, file_system_error

from .conftest import make_data_dir, write_experiment


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("nlp-mtl: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("number, words", [
    (errno.ENOSPC, "no space left on the device; free some space"),
    (errno.EACCES, "permission denied; fix the permissions"),
    (errno.EROFS, "read-only file system; choose a path on a writable file system"),
    (errno.ENOTDIR, "a file is where a folder is expected"),
    (errno.EISDIR, "a folder is where a file is expected"),
    (errno.EDQUOT, "disk quota exceeded"),
])
def test_each_file_system_error_names_the_path_and_what_to_do(tmp_path, monkeypatch, number, words):
    import nlp_mtl.fileio as fileio

    def refuse(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(fileio.os, "replace", refuse)
    target = tmp_path / "out.json"
    with pytest.raises(FileSystemError) as caught:
        atomic_write(target, "{}")
    assert str(caught.value) == f"{target}: {words.split(';')[0]}; " + str(caught.value).split("; ", 1)[1]
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir()), "the temp file is cleaned up"


def test_safetensors_io_errors_are_recognised():
    from safetensors import SafetensorError

    err = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert "no space left" in str(file_system_error(err, "/some/model"))
    assert file_system_error(ValueError("not io")) is None


def test_predict_output_under_a_file_is_one_line(tmp_path, tiny_bert, capsys):
    make_data_dir(tmp_path)
    config = write_experiment(tmp_path, tiny_bert, ["toy_sent"], steps=2, evaluations=1)
    assert main(["--quiet", "train", str(config), "--output-dir", str(tmp_path / "run")]) == 0
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["predict", str(tmp_path / "run"), "--text", "a good movie", "--output",
                 str(tmp_path / "notes.txt" / "out.jsonl")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "notes.txt" in line
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_read_only_run_folder_is_one_line(tmp_path, tiny_bert, monkeypatch, capsys):
    """Root ignores permission bits, so the read-only mount is simulated where the run writes."""
    import nlp_mtl.fileio as fileio

    make_data_dir(tmp_path)
    config = write_experiment(tmp_path, tiny_bert, ["toy_sent"], steps=2, evaluations=1)
    real = fileio.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "run":
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    assert main(["--quiet", "train", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "read-only file system" in line and str(tmp_path / "run") in line


# ---- a real full disk ----------------------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path):
    """A 6 MB tmpfs (root on Linux); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); test_data_loss simulates ENOSPC instead")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", f"nlp-mtl-test-{uuid.uuid4().hex[:8]}", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "test_data_loss simulates ENOSPC instead")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_while_saving_the_final_model_resumes_once_space_is_freed(small_disk, tmp_path, tiny_bert,
                                                                                   monkeypatch, capsys):
    from nlp_mtl.model import MultiTaskModel

    make_data_dir(tmp_path)
    config = write_experiment(tmp_path, tiny_bert, ["toy_ner", "toy_sent"], steps=6, evaluations=1, log_every=3,
                              log_with="none")
    run = small_disk / "run"
    filler = small_disk / "filler"
    original = MultiTaskModel.save_pretrained
    once = []

    def fill_then_save(self, directory):
        if Path(directory) == run / "model" and not once:
            once.append(True)
            with filler.open("wb") as f:  # take every free byte: the disk is full now
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
        return original(self, directory)

    monkeypatch.setattr(MultiTaskModel, "save_pretrained", fill_then_save)
    code = main(["--quiet", "train", str(config), "--output-dir", str(run)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "no space left on the device" in line and f"--resume {run}" in line, line
    assert not (run / "FINISHED").exists()
    assert json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())["trainer"]["step"] == 6
    assert not list(run.glob(".model.tmp-*")), "the half-written model folder is cleaned up"

    filler.unlink()  # space freed
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    assert (run / "FINISHED").exists()
    MultiTaskModel.from_pretrained(run)  # complete and verified
