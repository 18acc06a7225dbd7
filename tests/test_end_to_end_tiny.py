"""Train, evaluate and predict through the CLI on synthetic tasks with a tiny random BERT."""

import json

import pytest

from nlp_mtl.cli import main
from nlp_mtl.model import MultiTaskModel

from .conftest import write_experiment


def _train(tmp_path, tiny_bert, tasks, *extra):
    config = write_experiment(tmp_path, tiny_bert, tasks)
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run), *extra]) == 0
    return run


def test_joint_training_learns_both_tasks_and_writes_reports(data_dir, tiny_bert, capsys):
    run = _train(data_dir, tiny_bert, ["toy_ner", "toy_sent"])
    for task in ("toy_ner", "toy_sent"):
        for split in ("validation", "test"):
            assert (run / "reports" / f"{task}.{split}.txt").is_file()
    ner = json.loads((run / "reports" / "toy_ner.test.json").read_text())
    sent = json.loads((run / "reports" / "toy_sent.test.json").read_text())
    # The synthetic tasks are easy; a model that did not learn stays far below these.
    assert ner["metrics"]["f1"] > 0.7, ner["metrics"]
    assert sent["metrics"]["accuracy"] > 0.85 and "macro_f1" in sent["metrics"], sent["metrics"]
    assert "PER" in ner["report"] and "micro avg" in ner["report"]
    assert "precision" in (run / "reports" / "toy_sent.test.txt").read_text()
    summary = (run / "reports" / "summary.test.txt").read_text()
    assert "toy_ner" in summary and "toy_sent" in summary
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} == {"train", "validation", "end"}
    assert (run / "FINISHED").is_file()

    # evaluate re-creates the reports from the saved model alone
    (run / "reports" / "toy_ner.test.json").unlink()
    assert main(["--quiet", "evaluate", str(run), "--split", "test"]) == 0
    again = json.loads((run / "reports" / "toy_ner.test.json").read_text())
    assert again["metrics"]["f1"] == pytest.approx(ner["metrics"]["f1"])

    # predict: entities and a class label for the same sentence
    capsys.readouterr()
    assert main(["predict", str(run), "--text", "Alice visited Paris Rome today , great movie"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    entities = result["tasks"]["toy_ner"]["entities"]
    assert {"type": "PER", "text": "Alice", "start": 0, "end": 5} in [
        {k: e[k] for k in ("type", "text", "start", "end")} for e in entities]
    assert any(e["type"] == "LOC" and e["text"] == "Paris Rome" for e in entities)
    assert result["tasks"]["toy_sent"]["label"] == "pos"

    model = MultiTaskModel.from_pretrained(run)
    assert set(model.tasks) == {"toy_ner", "toy_sent"}


def test_predict_uses_one_encoder_pass(data_dir, tiny_bert):
    from nlp_mtl.inference import Predictor

    run = _train(data_dir, tiny_bert, ["toy_ner", "toy_sent"], "--set", "training.steps=10")
    model = MultiTaskModel.from_pretrained(run)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    out = Predictor(model).predict(["alice went to oslo", "bad movie"])
    assert len(calls) == 1 and set(out[0]["tasks"]) == {"toy_ner", "toy_sent"}


def test_training_is_deterministic_under_a_seed(data_dir, tiny_bert):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent_csv"], steps=30, evaluations=1)
    losses = []
    for name in ("a", "b"):
        assert main(["--quiet", "train", str(config), "--output-dir", str(data_dir / name)]) == 0
        events = [json.loads(line) for line in (data_dir / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([e["loss"] for e in events if e["event"] == "train"])
    assert losses[0] == losses[1]


def test_finished_run_is_not_overwritten(data_dir, tiny_bert, capsys):
    run = _train(data_dir, tiny_bert, ["toy_sent"], "--set", "training.steps=5")
    before = (run / "model" / "model.safetensors").read_bytes()
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"])
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert (run / "model" / "model.safetensors").read_bytes() == before


def test_gradient_accumulation_counts_optimizer_steps(data_dir, tiny_bert):
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], steps=6, evaluations=1, log_every=2,
                              gradient_accumulation_steps=2, warmup_ratio=0.0)
    run = data_dir / "accum"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    # 6 optimizer steps = 12 micro-batches; the linear schedule reaches 0 exactly at the end.
    assert train[-1]["step"] == 12 and sum(sum(e["batches"].values()) for e in train) == 12
    assert train[-1]["lr"] == 0.0 and train[0]["lr"] > 0
