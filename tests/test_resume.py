"""Crash safety: SIGKILL a real training process at random moments, resume, and get exactly
the run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from nlp_mtl.cli import main
from nlp_mtl.training.checkpoint import STATE_FILE

from .conftest import write_experiment


CHECKPOINT_EVERY = 5


def _events(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_step(run):
    try:
        return json.loads((run / "checkpoints" / "last" / STATE_FILE).read_text())["trainer"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _kill_after(args, run, min_step, rng):
    """Start training, wait until a checkpoint at >= min_step exists, SIGKILL at a random moment."""
    proc = subprocess.Popen([sys.executable, "-m", "nlp_mtl.cli", "--quiet", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _checkpoint_step(run) < min_step:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.05)
    # Kill at a random moment (mid-step, mid-write or between checkpoints), but no later than
    # the next checkpoint: a tiny model runs tens of steps a second, and a fixed random sleep let
    # it reach the end of training before the kill on a fast machine.
    kill_at = time.time() + rng.uniform(0.0, 0.6)
    while time.time() < kill_at and _checkpoint_step(run) < min_step + CHECKPOINT_EVERY:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _checkpoint_step(run)


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(data_dir, tiny_bert):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], steps=120, evaluations=2,
                              log_every=5, checkpoint_every=CHECKPOINT_EVERY)
    reference = data_dir / "reference"
    assert main(["--quiet", "train", str(config), "--output-dir", str(reference)]) == 0

    run = data_dir / "killed"
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill schedule seed {seed}")  # pytest shows it on any failure, so the schedule can be replayed
    # Three kills at random points, each well before the end (120 steps), so a resume remains.
    first = rng.randint(5, 30)
    second = rng.randint(first + 10, 60)
    third = rng.randint(second + 10, 90)
    reached = _kill_after([str(config), "--output-dir", str(run)], run, first, rng)
    for threshold in (second, third):
        reached = _kill_after(["--resume", str(run)], run, max(threshold, reached + 5), rng)
    assert reached < 120 and not (run / "FINISHED").exists()
    assert main(["--quiet", "train", "--resume", str(run)]) == 0

    ref, got = _events(reference), _events(run)
    assert [e["event"] for e in got] == [e["event"] for e in ref]
    for a, b in zip(ref, got):
        if a["event"] == "train":
            assert a["step"] == b["step"] and a["batches"] == b["batches"]
            for task in a["loss"]:
                assert b["loss"][task] == pytest.approx(a["loss"][task], abs=1e-6)
        elif a["event"] == "validation":
            assert b["score"] == pytest.approx(a["score"], abs=1e-6)
    for task in ("toy_ner", "toy_sent"):
        want = json.loads((reference / "reports" / f"{task}.test.json").read_text())["metrics"]
        have = json.loads((run / "reports" / f"{task}.test.json").read_text())["metrics"]
        assert have == pytest.approx(want, abs=1e-6)


def test_resume_refuses_finished_and_missing_runs(data_dir, tiny_bert, capsys):
    assert main(["--quiet", "train", "--resume", str(data_dir / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=4, evaluations=1)
    assert main(["--quiet", "train", str(config), "--output-dir", str(data_dir / "done")]) == 0
    assert main(["--quiet", "train", "--resume", str(data_dir / "done")]) == 2
    assert "already finished" in capsys.readouterr().err


def test_unfinished_run_is_not_silently_restarted(data_dir, tiny_bert, capsys):
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=4, evaluations=1)
    run = data_dir / "half"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / STATE_FILE).write_text("{}")
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 2
    assert f"continue it with --resume {run}" in capsys.readouterr().err


def test_nonfinite_loss_stops_naming_task_and_step_and_keeps_checkpoint(data_dir, tiny_bert, monkeypatch, capsys):
    import torch

    from nlp_mtl.model.heads import SequenceClassificationHead

    calls = {"n": 0}
    original = SequenceClassificationHead.loss

    def poisoned(self, logits, labels):
        calls["n"] += 1
        loss = original(self, logits, labels)
        return loss * float("nan") if calls["n"] >= 12 else loss

    monkeypatch.setattr(SequenceClassificationHead, "loss", poisoned)
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=30, evaluations=1, checkpoint_every=5)
    run = data_dir / "nan"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "task 'toy_sent' at step 12" in err
    state = json.loads((run / "checkpoints" / "last" / STATE_FILE).read_text())
    assert state["trainer"]["step"] == 10
    from nlp_mtl.model import MultiTaskModel

    model = MultiTaskModel.from_pretrained(run / "checkpoints" / "last" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    calls["n"] = 0
    skip = data_dir / "skip"
    assert main(["--quiet", "train", str(config), "--output-dir", str(skip),
                 "--set", "training.on_nonfinite_loss=skip"]) == 0
    assert any(e["event"] == "skipped" for e in _events(skip))
