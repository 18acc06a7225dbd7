"""The five data-loss cases from the tracker, each on a tiny finished run.

Every failing command must exit 2 with one message and no traceback, and leave the finished
run byte for byte as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from nlp_mtl.cli import main

from .conftest import make_data_dir, write_experiment


def folder_hash(root: Path) -> str:
    """Every file's relative path and bytes, and every folder's name: any change shows."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def one_clean_line(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("nlp-mtl: error:")]
    assert len(lines) == 1, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert):
    """A finished two-task run (a few seconds to train), copied fresh for each test."""
    tmp = tmp_path_factory.mktemp("finished")
    make_data_dir(tmp)
    config = write_experiment(tmp, tiny_bert, ["toy_ner", "toy_sent"], steps=12, evaluations=1, log_every=4)
    assert main(["--quiet", "train", str(config), "--output-dir", str(tmp / "run")]) == 0
    return tmp


@pytest.fixture()
def run(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w" / "run"


def _config(run: Path, **training) -> Path:
    return write_experiment(run.parent, Path(json.loads((run / "experiment.json").read_text())["config"]["backbone"]["name"]),
                            ["toy_ner", "toy_sent"], **{"steps": 12, "evaluations": 1, "log_every": 4, **training})


# 1 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["model", "model/heads", "checkpoints", "checkpoints/best", "."])
def test_export_refuses_the_runs_own_folders_even_with_overwrite(run, target, capsys):
    before = folder_hash(run)
    code = main(["export", str(run), "--task", "toy_ner", "--out", str(run / target), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    one_clean_line(err)
    assert "--out" in err
    assert folder_hash(run) == before


def test_export_overwrite_replaces_only_an_earlier_export(run, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("precious")
    assert main(["export", str(run), "--task", "toy_ner", "--out", str(other), "--overwrite"]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "precious"
    out = tmp_path / "exported"
    assert main(["export", str(run), "--task", "toy_ner", "--out", str(out)]) == 0
    assert main(["export", str(run), "--task", "toy_sent", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["nlp_mtl_task"] == "toy_sent"


# 2 ------------------------------------------------------------------------------------------

def test_train_overwrite_keeps_the_finished_run_until_the_new_one_finishes(run, monkeypatch, capsys):
    from nlp_mtl.model.heads import TokenClassificationHead

    original = TokenClassificationHead.loss
    monkeypatch.setattr(TokenClassificationHead, "loss", lambda self, *a: original(self, *a) * float("nan"))
    before = folder_hash(run)
    code = main(["--quiet", "train", str(_config(run)), "--output-dir", str(run), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2, err
    one_clean_line(err)
    assert "non-finite loss" in err
    assert "is intact" not in err, "no checkpoint was written; the message must not promise one"
    assert f"{run}: unchanged" in err
    assert folder_hash(run) == before
    assert not list(run.parent.glob(f"*{run.name}.*overwrite*")), "a failed replacement left its folder behind"


def test_train_overwrite_swaps_in_the_new_run_when_it_finishes(run, capsys):
    old = json.loads((run / "FINISHED").read_text())
    (run / "model" / "marker.txt").write_text("old run")
    assert main(["--quiet", "train", str(_config(run, steps=8)), "--output-dir", str(run), "--overwrite"]) == 0
    assert not (run / "model" / "marker.txt").exists()
    assert json.loads((run / "FINISHED").read_text()) != old or (run / "metrics.jsonl").read_text().count('"step": 8')
    assert not list(run.parent.glob(f".{run.name}.*"))


# 3 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json", "config.json", "heads/toy_sent.safetensors"])
def test_a_model_folder_missing_a_file_is_refused_naming_it(run, missing, capsys):
    (run / "model" / missing).unlink()
    before = folder_hash(run)
    code = main(["predict", str(run), "--text", "alice went to paris"])
    out, err = capsys.readouterr()
    assert code == 2, err
    one_clean_line(err)
    assert missing in err and out == ""
    assert folder_hash(run) == before


def test_a_truncated_weight_file_is_named(run, capsys):
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["predict", str(run), "--text", "alice went to paris"]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert "model.safetensors" in err


def test_a_corrupt_weight_file_is_named(run, capsys):
    weights = run / "model" / "heads" / "toy_ner.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the tensor data: same size, same header
    weights.write_bytes(bytes(data))
    assert main(["predict", str(run), "--text", "alice went to paris"]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert "toy_ner.safetensors" in err and "does not match" in err


def test_a_weight_file_missing_tensors_is_refused(run, capsys):
    from safetensors.torch import load_file, save_file

    weights = run / "model" / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    manifest = json.loads((run / "model" / "multitask.json").read_text())
    manifest.pop("files", None)  # as a model written before checksums: the tensors are still checked
    (run / "model" / "multitask.json").write_text(json.dumps(manifest))
    assert main(["predict", str(run), "--text", "alice went to paris"]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert "model.safetensors" in err and "missing" in err


# 4 ------------------------------------------------------------------------------------------

def test_an_unterminated_quote_in_a_csv_is_an_error_at_the_line_it_opened(tmp_path, capsys):
    rows = [f"row number {i} is fine,{'pos' if i % 2 else 'neg'}" for i in range(104)]
    rows[2] = '"this quote never closes,pos'
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text("name: s\ntype: sequence_classification\ndata: {format: csv, train: train.csv}\n")
    code = main(["tasks", "validate", str(tmp_path / "spec.yaml"), "--data-root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2, out
    one_clean_line(err)
    assert "train.csv:4: a quote opened on this line is never closed" in err


def test_a_quote_that_swallows_rows_is_an_error_even_when_closed_later(tmp_path, capsys):
    rows = [f"row {i},pos" for i in range(20)] + ['"opens here,neg'] + [f"row {i},neg" for i in range(20)]
    rows.append('closes here",pos')
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text("name: s\ntype: sequence_classification\ndata: {format: csv, train: train.csv}\n")
    assert main(["tasks", "validate", str(tmp_path / "spec.yaml"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert "train.csv:22: a quote opened on this line runs to line 43, swallowing 20 lines" in err


def test_a_real_multiline_quoted_field_still_reads(tmp_path, capsys):
    (tmp_path / "train.csv").write_text('text,label\n"two lines\nof one review",pos\nshort,neg\n')
    (tmp_path / "spec.yaml").write_text("name: s\ntype: sequence_classification\ndata: {format: csv, train: train.csv}\n")
    assert main(["tasks", "validate", str(tmp_path / "spec.yaml"), "--data-root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["splits"]["train"]["examples"] == 2


# 5 ------------------------------------------------------------------------------------------

def test_predict_output_naming_its_input_is_refused(run, tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "alice went to paris"}\n')
    assert main(["predict", str(run), "--input", str(inputs), "--output", str(inputs)]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert inputs.read_text() == '{"text": "alice went to paris"}\n'


@pytest.mark.parametrize("target", ["model/out.jsonl", "checkpoints/best/x.jsonl", "experiment.json", "metrics.jsonl"])
def test_predict_output_inside_the_runs_own_files_is_refused(run, target, capsys):
    before = folder_hash(run)
    assert main(["predict", str(run), "--text", "alice", "--output", str(run / target)]) == 2
    one_clean_line(capsys.readouterr().err)
    assert folder_hash(run) == before


def _enospc_on(monkeypatch, predicate):
    """Writes of safetensors files whose path matches fail as a full disk does."""
    import nlp_mtl.model.multitask as multitask

    original = multitask.save_file
    state = {"armed": True}

    def save_file(tensors, path, *args, **kwargs):
        if state["armed"] and predicate(Path(path)):
            Path(path).write_bytes(b"\0" * 16)  # a partial file, as a full disk leaves one
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(multitask, "save_file", save_file)
    return state


def test_disk_full_while_saving_the_final_model_is_one_line_and_the_run_resumes(finished, tmp_path, monkeypatch, capsys):
    shutil.copytree(finished, tmp_path / "w")
    config = _config(tmp_path / "w" / "run")
    run = tmp_path / "w" / "new"
    # the final model: RUN/.model.tmp-*/heads/<task>.safetensors
    state = _enospc_on(monkeypatch, lambda p: p.parent.parent.name.startswith(".model.tmp-")
                       and p.parent.parent.parent == run)
    code = main(["--quiet", "train", str(config), "--output-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    one_clean_line(err)
    assert "no space left" in err.lower() and f"--resume {run}" in err
    assert not (run / "FINISHED").exists() and (run / "checkpoints" / "last" / "trainer_state.json").is_file()
    state["armed"] = False  # space freed
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    assert (run / "FINISHED").exists() and (run / "model" / "multitask.json").is_file()
    assert not list(run.glob(".model.tmp-*"))


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(finished, tmp_path, monkeypatch, capsys):
    shutil.copytree(finished, tmp_path / "w")
    config = _config(tmp_path / "w" / "run", checkpoint_every=4)
    run = tmp_path / "w" / "new"
    calls = {"n": 0}

    def second_checkpoint(path: Path) -> bool:
        # a checkpoint's model: RUN/checkpoints/.last.tmp-*/.model.tmp-*/heads/toy_ner.safetensors
        if path.parents[2].name.startswith(".last.tmp-") and path.name == "toy_ner.safetensors":
            calls["n"] += 1
            return calls["n"] == 2
        return False

    state = _enospc_on(monkeypatch, second_checkpoint)
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    saved = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert saved["trainer"]["step"] == 4
    assert not list((run / "checkpoints").glob(".last.tmp-*"))
    state["armed"] = False
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    assert (run / "FINISHED").exists()


def test_a_stopped_replacement_keeps_its_checkpoint_and_resuming_it_swaps_it_in(run, monkeypatch, capsys):
    from nlp_mtl.model.heads import SequenceClassificationHead

    calls = {"n": 0}
    original = SequenceClassificationHead.loss

    def poisoned(self, logits, labels):
        calls["n"] += 1
        loss = original(self, logits, labels)
        return loss * float("nan") if calls["n"] > 4 and not calls.get("healed") else loss

    monkeypatch.setattr(SequenceClassificationHead, "loss", poisoned)
    before = folder_hash(run)
    config = _config(run, steps=16, checkpoint_every=2)
    assert main(["--quiet", "train", str(config), "--output-dir", str(run), "--overwrite"]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    staging = run.parent / f"{run.name}.overwrite"
    assert "is intact" in err and f"--resume {staging}" in err and f"{run}: unchanged" in err
    assert folder_hash(run) == before
    calls["healed"] = True
    assert main(["--quiet", "train", "--resume", str(staging)]) == 0
    assert not staging.exists() and (run / "FINISHED").is_file()
    assert folder_hash(run) != before
    assert json.loads((run / "experiment.json").read_text())["config"]["training"]["steps"] == 16


def test_predict_marks_truncated_inputs_and_counts_them(run, capsys):
    long = " ".join(["alice"] * 60)  # the toy tasks' max_length is 32
    assert main(["predict", str(run), "--text", long, "--text", "bob went to rome"]) == 0
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    assert results[0]["truncated"] == ["toy_ner", "toy_sent"] and results[1]["truncated"] == []
    assert "1 of 2 inputs were longer than a task's max_length" in err


def test_meta_train_overwrite_keeps_the_old_run_when_it_fails(run, monkeypatch, capsys):
    import nlp_mtl.fewshot.meta as meta
    from nlp_mtl.errors import UserError

    def fails(*args, **kwargs):
        raise UserError("meta-training stopped")

    monkeypatch.setattr(meta, "meta_train_loop", fails)
    before = folder_hash(run)
    config = _config(run)
    config.write_text(config.read_text() + "adapters: {type: lora}\nmeta: {episodes: 2}\n")
    assert main(["--quiet", "meta-train", str(config), "--output-dir", str(run), "--overwrite"]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert f"{run}: unchanged" in err and folder_hash(run) == before
    assert not (run.parent / f"{run.name}.overwrite").exists()
