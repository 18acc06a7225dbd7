"""meta-train on the training engine: mixed precision, several processes, and a killed run that
resumes to exactly the uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from nlp_mtl.cli import main
from nlp_mtl.training.checkpoint import STATE_FILE

from .conftest import write_meta_experiment


def _meta_config(data_dir, tiny_bert, **meta):
    return write_meta_experiment(data_dir, tiny_bert, **meta)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run):
    return load_file(run / "model" / "adapters" / "meta.safetensors")


def test_meta_train_in_bf16(data_dir, tiny_bert):
    config = _meta_config(data_dir, tiny_bert)
    run = data_dir / "bf16"
    assert main(["--quiet", "meta-train", str(config), "--output-dir", str(run),
                 "--set", "training.mixed_precision=bf16"]) == 0
    records = _records(run)
    assert [r["step"] for r in records] == [2, 4]
    assert all(math.isfinite(r["query_loss_after"]) for r in records)
    fp32 = data_dir / "fp32"
    assert main(["--quiet", "meta-train", str(config), "--output-dir", str(fp32)]) == 0
    # The same episodes in the other precision: close, and not the same numbers.
    a, b = _adapter(run), _adapter(fp32)
    assert a.keys() == b.keys() and all(torch.isfinite(t).all() for t in a.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_meta_train_on_two_processes(data_dir, tiny_bert):
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher not on PATH")
    config = _meta_config(data_dir, tiny_bert, episodes=16)
    run = data_dir / "two"
    result = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
         "-m", "nlp_mtl.cli", "--quiet", "meta-train", str(config), "--output-dir", str(run)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(run)
    # 16 episodes in meta-batches of 2 on each of 2 processes: 4 steps, 4 episodes a step.
    assert [(r["step"], r["episode"]) for r in records] == [(2, 8), (4, 16)]
    assert (run / "FINISHED").is_file() and all(torch.isfinite(t).all() for t in _adapter(run).values())


def _checkpoint_step(run):
    try:
        return json.loads((run / "checkpoints" / "last" / STATE_FILE).read_text())["trainer"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_killed_meta_train_resumes_to_the_uninterrupted_result(data_dir, tiny_bert):
    config = _meta_config(data_dir, tiny_bert, episodes=48, log_every=3, checkpoint_every=2)
    reference = data_dir / "reference"
    assert main(["--quiet", "meta-train", str(config), "--output-dir", str(reference)]) == 0

    run = data_dir / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nlp_mtl.cli", "--quiet", "meta-train", str(config),
                             "--output-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _checkpoint_step(run) < 7:  # past a checkpoint that is not on a log boundary (step 6 is)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "meta-training made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_step(run)
    assert killed_at < 24 and not (run / "FINISHED").exists()
    assert main(["--quiet", "meta-train", "--resume", str(run)]) == 0

    ref, got = _records(reference), _records(run)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref, got):
        for key in ("query_loss_before", "query_loss_after", "query_acc_after"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    want, have = _adapter(reference), _adapter(run)
    assert all(torch.allclose(want[k], have[k], atol=1e-6) for k in want)


def test_meta_train_resume_refuses_a_finished_run(data_dir, tiny_bert, capsys):
    config = _meta_config(data_dir, tiny_bert)
    run = data_dir / "done"
    assert main(["--quiet", "meta-train", str(config), "--output-dir", str(run)]) == 0
    assert main(["--quiet", "meta-train", "--resume", str(run)]) == 2
    assert "already finished" in capsys.readouterr().err
