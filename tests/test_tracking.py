"""Trackers through accelerate: TensorBoard gets the same losses and metrics as metrics.jsonl."""

import json
import time

import pytest
import yaml

from nlp_mtl.cli import main
from nlp_mtl.training.tracking import flat_hyperparameters, resolve_trackers

from .conftest import write_experiment


def _config(data_dir, tiny_bert, log_with):
    path = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=40, log_every=10, evaluations=2)
    config = yaml.safe_load(path.read_text())
    config["training"]["log_with"] = log_with
    path.write_text(yaml.safe_dump(config))
    return path


def test_tensorboard_gets_losses_and_validation_metrics(data_dir, tiny_bert):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = data_dir / "run"
    assert main(["--quiet", "train", str(_config(data_dir, tiny_bert, "tensorboard")), "--output-dir", str(run)]) == 0
    event_files = list((run / "logs").rglob("events.out.tfevents.*"))
    assert event_files, list((run / "logs").rglob("*"))
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/toy_sent", "lr", "validation/toy_sent/accuracy", "final_test/toy_sent/accuracy"} <= set(tags), tags
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    jsonl_losses = [r["loss"]["toy_sent"] for r in logged if r["event"] == "train"]
    tb_losses = [e.value for e in events.Scalars("loss/toy_sent")]
    assert tb_losses == pytest.approx(jsonl_losses, rel=1e-5)
    # same x-axis as metrics.jsonl and the report's plots
    assert [e.step for e in events.Scalars("loss/toy_sent")] == [r["step"] for r in logged if r["event"] == "train"]


def test_log_with_none_writes_no_tracker_files(data_dir, tiny_bert):
    run = data_dir / "run"
    assert main(["--quiet", "train", str(_config(data_dir, tiny_bert, "none")), "--output-dir", str(run)]) == 0
    assert not (run / "logs").exists()


def test_unknown_or_missing_tracker_is_a_config_error_before_anything_is_written(data_dir, tiny_bert, capsys):
    run = data_dir / "run"
    assert main(["train", str(_config(data_dir, tiny_bert, ["tensorbord"])), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "training.log_with" in err and "did you mean 'tensorboard'" in err
    assert not run.exists()
    with pytest.raises(Exception, match="not installed"):
        # a tracker that is certainly absent here: pretend its check says so
        import accelerate.utils

        original = accelerate.utils.is_aim_available
        accelerate.utils.is_aim_available = lambda: False
        try:
            resolve_trackers(["aim"])
        finally:
            accelerate.utils.is_aim_available = original


def test_hyperparameters_are_flat_scalars():
    from nlp_mtl.config import ExperimentConfig, TaskEntry

    flat = flat_hyperparameters(ExperimentConfig(name="x", tasks=[TaskEntry(spec="conll2003_ner")]))
    assert flat["training/lr"] == 5e-05 and flat["backbone/name"] == "embedded"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_resumed_run_plots_each_step_once_in_tensorboard(data_dir, tiny_bert, monkeypatch):
    """Steps logged after the last checkpoint are redone on resume; TensorBoard must drop the
    first copy, as metrics.jsonl does, or the curve doubles back on itself."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nlp_mtl.model.heads import SequenceClassificationHead

    path = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=20, log_every=1, evaluations=1,
                            checkpoint_every=5)
    config = yaml.safe_load(path.read_text())
    config["training"]["log_with"] = "tensorboard"
    path.write_text(yaml.safe_dump(config))
    calls = {"n": 0}
    original = SequenceClassificationHead.loss

    def poisoned(self, logits, labels):  # training stops at step 13, after logging 11 and 12
        calls["n"] += 1
        return original(self, logits, labels) * (float("nan") if calls["n"] == 13 else 1.0)

    monkeypatch.setattr(SequenceClassificationHead, "loss", poisoned)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(path), "--output-dir", str(run)]) == 2
    monkeypatch.setattr(SequenceClassificationHead, "loss", original)
    # TensorBoard reads a folder's event files in name order, and a name starts with the second
    # it was made in: a resume within the same second could sort before the run it continues
    # (then by a counter, as text: "10" < "9"). A real resume comes later than that.
    time.sleep(1.1)
    assert main(["--quiet", "train", "--resume", str(run)]) == 0
    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss/toy_sent")]
    assert steps == list(range(1, 21))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    jsonl_losses = [r["loss"]["toy_sent"] for r in logged if r["event"] == "train"]
    assert [e.value for e in events.Scalars("loss/toy_sent")] == pytest.approx(jsonl_losses, rel=1e-5)
