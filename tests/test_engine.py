"""The training engine: its step unit, callbacks a caller installs, and early stopping."""

from __future__ import annotations

import json

from nlp_mtl.cli import main
from nlp_mtl.config import load_experiment
from nlp_mtl.run_dir import RunDir
from nlp_mtl.training import train
from nlp_mtl.training.callbacks import ThroughputMeter
from nlp_mtl.training.engine import Callback

from .conftest import write_experiment


class StepRecorder(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.micro_batches: list[int] = []
        self.ended = False

    def on_step_end(self, engine, micro_batches) -> None:
        self.steps.append(engine.state.step)
        self.micro_batches.append(len(micro_batches))

    def on_train_end(self, engine) -> None:
        self.ended = True


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_caller_callbacks_see_every_optimizer_step(data_dir, tiny_bert):
    config = load_experiment(write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=5, evaluations=1,
                                              gradient_accumulation_steps=3, log_with="none"))
    recorder, meter = StepRecorder(), ThroughputMeter()
    result = train(config, RunDir(data_dir / "run"), quiet=True, callbacks=[recorder, meter])
    assert recorder.steps == [1, 2, 3, 4, 5] and recorder.micro_batches == [3] * 5 and recorder.ended
    assert result.steps == 5
    # The standard meter read every interval already; a caller's own meter saw all 15 batches.
    seconds, examples, _ = meter.take()
    assert seconds > 0 and examples == 15 * 16


def test_a_callers_meter_runs_before_evaluation_and_checkpoints(data_dir, tiny_bert):
    from nlp_mtl.training.callbacks import Checkpointer, Evaluator

    class PlaceMeter(ThroughputMeter):
        def on_train_start(self, engine) -> None:
            kinds = [type(c) for c in engine.callbacks]
            self.before = engine.callbacks.index(self) < min(kinds.index(Checkpointer), kinds.index(Evaluator))

    config = load_experiment(write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=2, evaluations=1,
                                              log_with="none"))
    meter = PlaceMeter()
    train(config, RunDir(data_dir / "run"), quiet=True, callbacks=[meter])
    # Else the last step's checkpoint and the final validation would count as training time.
    assert meter.before


def test_early_stopping_ends_before_the_budget_and_keeps_the_best(data_dir, tiny_bert):
    # min_delta 1.0 can never be beaten, so the 2nd evaluation is the 1st stale one: stop there.
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=40, eval_every=4, checkpoint_every=0,
                              early_stopping={"patience": 1, "min_delta": 0.999})
    run = data_dir / "early"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    events = _events(run)
    validations = [e["step"] for e in events if e["event"] == "validation"]
    end = next(e for e in events if e["event"] == "end")
    assert validations == [4, 8] and end["steps"] == 8
    assert max(e["step"] for e in events if e["event"] == "train") == 8
    assert end["best_step"] in (4, 8)
    assert (run / "model" / "multitask.json").is_file()


def test_early_stopping_without_a_stall_runs_the_whole_budget(data_dir, tiny_bert):
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=12, eval_every=4,
                              early_stopping={"patience": 50})
    run = data_dir / "patient"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    assert next(e for e in _events(run) if e["event"] == "end")["steps"] == 12


def test_early_stopping_settings_are_checked(data_dir, tiny_bert, capsys):
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], early_stopping={"patience": 0})
    assert main(["train", str(config), "--output-dir", str(data_dir / "bad")]) == 2
    assert "training.early_stopping.patience: expected an integer >= 1" in capsys.readouterr().err
