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
    # Steps count optimizer steps everywhere: 6 steps = 12 micro-batches, logged every 2 steps;
    # the linear schedule reaches 0 exactly at the end.
    assert [e["step"] for e in train] == [2, 4, 6] and sum(sum(e["batches"].values()) for e in train) == 12
    end = next(e for e in events if e["event"] == "end")
    assert end["steps"] == 6
    assert train[-1]["lr"] == 0.0 and train[0]["lr"] > 0


def test_predict_truncates_each_task_at_its_own_max_length(tiny_bert):
    """As training and evaluation do: a short-max_length task does not see more of a long input
    than it was trained on, and short inputs still take one encoder pass for all tasks."""
    import torch

    from nlp_mtl.backbone import load_encoder, load_tokenizer
    from nlp_mtl.data.encoding import collate
    from nlp_mtl.inference import Predictor
    from nlp_mtl.model import TaskHeadInfo
    from nlp_mtl.registry import TASK_TYPES

    torch.manual_seed(0)
    infos = [TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER", "I-PER"], max_length=64),
             TaskHeadInfo("sent", "sequence_classification", "sequence_classification", ["neg", "pos"], max_length=8)]
    model = MultiTaskModel(load_encoder(str(tiny_bert)), infos, load_tokenizer(str(tiny_bert))).eval()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    long_text = "alice went to oslo and bob went to rome and the movie was good " * 2
    out = Predictor(model).predict(["bad movie", long_text])
    assert len(calls) == 2  # the long input is longer than 'sent' may see: a pass of its own
    words = long_text.split()
    tokens = TASK_TYPES.get("token_classification").encode([{"tokens": words, "tags": ["O"] * len(words)}],
                                                           model.tokenizer, infos[0].labels, max_length=64)
    assert not tokens.truncated  # 'ner' may see all of it, and does
    batch = collate(tokens, [0], model.tokenizer.pad_token_id)
    with torch.inference_mode():
        best = model("ner", batch["input_ids"], batch["attention_mask"])["logits"][0].argmax(-1)
    first_pieces = batch["labels"][0] >= 0
    assert out[1]["tasks"]["ner"]["tags"] == [infos[0].labels[int(i)] for i in best[first_pieces]]
    assert len(set(out[1]["tasks"]["ner"]["tags"])) > 1  # a random head: more than one tag, so the check bites
    for i, text in enumerate(["bad movie", long_text]):
        split = TASK_TYPES.get("sequence_classification").encode([{"text": text, "label": "pos"}], model.tokenizer,
                                                                  ["neg", "pos"], max_length=8)
        batch = collate(split, [0], model.tokenizer.pad_token_id)
        with torch.inference_mode():
            p, label = model("sent", batch["input_ids"], batch["attention_mask"])["logits"].softmax(-1)[0].max(-1)
        assert out[i]["tasks"]["sent"] == {"label": ["neg", "pos"][int(label)], "probability": round(float(p), 4)}
    calls.clear()
    Predictor(model).predict(["bad movie", "alice went to oslo"])
    assert len(calls) == 1
