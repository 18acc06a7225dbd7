"""multi_label_classification: label sets read, encoded, scored, predicted and exported; trained
jointly with token and single-label tasks."""

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nlp_mtl.backbone import load_tokenizer
from nlp_mtl.cli import main
from nlp_mtl.config import DataSpec, TaskSpec
from nlp_mtl.data.loading import load_task_data, summarise
from nlp_mtl.data.pipeline import check_spec
from nlp_mtl.errors import ConfigError, DataError
from nlp_mtl.model.heads import HEADS
from nlp_mtl.registry import TASK_TYPES

from .conftest import FILLER, PEOPLE, PLACES, POSITIVE, SHARED_DATA, write_experiment

ML = TASK_TYPES.get("multi_label_classification")
STEPS = 60  # the real-backbone test: about 30 s of training on 2 free cores


def _spec(tmp_path: Path, train: str, fmt: str = "jsonl", **data) -> TaskSpec:
    spec = TaskSpec(name="tags", type="multi_label_classification",
                    data=DataSpec(format=fmt, train=train, **data), source=str(tmp_path / "tags.yaml"))
    spec.validate("spec")
    return spec


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---- reading -------------------------------------------------------------------------------

def test_jsonl_label_lists_and_empty_sets(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "alice in paris", "labels": ["PER", "LOC", "PER"]},
                                      {"text": "nothing here", "labels": []},
                                      {"text": "bob", "labels": [" PER "]}])
    data = load_task_data(_spec(tmp_path, "train.jsonl"), tmp_path)
    assert data.labels == ["LOC", "PER"]
    assert [r["labels"] for r in data.splits["train"]] == [["PER", "LOC"], [], ["PER"]]
    info = summarise(data)["splits"]["train"]
    assert info["label_counts"] == {"LOC": 1, "PER": 2} and info["without_labels"] == 1


def test_csv_label_separator_and_label_map(tmp_path):
    (tmp_path / "train.csv").write_text('sentence,cats\nalice in paris,per|loc\nnone,\n"x, y",loc | misc\n')
    spec = _spec(tmp_path, "train.csv", "csv", columns={"text": "sentence", "labels": "cats"}, label_separator="|",
                 label_map={"per": "PER", "loc": "LOC", "misc": "MISC"})
    data = load_task_data(spec, tmp_path)
    assert [r["labels"] for r in data.splits["train"]] == [["PER", "LOC"], [], ["LOC", "MISC"]]
    assert data.labels == ["LOC", "MISC", "PER"]


@pytest.mark.parametrize("bad, message", [
    ('{"text": "a", "labels": ["PER", 3]}', "train.jsonl:2: 'labels' must be a list of non-empty strings; it holds 3"),
    ('{"text": "a", "labels": "PER"}', "train.jsonl:2: 'labels' is the text 'PER', not a list; set data.label_separator"),
    ('{"text": "a", "labels": {"PER": 1}}', "train.jsonl:2: 'labels' must be a list of strings"),
    ('{"text": "a", "labels": [""]}', "train.jsonl:2: 'labels' must be a list of non-empty strings"),
    ('{"text": "a"}', "train.jsonl:2: missing field 'labels'"),
])
def test_bad_label_sets_name_file_and_line(tmp_path, bad, message):
    _jsonl(tmp_path / "train.jsonl", [{"text": "ok", "labels": ["PER"]}, bad])
    with pytest.raises(DataError) as err:
        load_task_data(_spec(tmp_path, "train.jsonl"), tmp_path)
    assert message in str(err.value)


def test_unknown_label_in_test_and_no_labels_at_all_are_errors(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"text": "a", "labels": ["PER"]}])
    _jsonl(tmp_path / "test.jsonl", [{"text": "b", "labels": []}, {"text": "c", "labels": ["PER", "ORG"]}])
    with pytest.raises(DataError, match=r"test.jsonl:2: label 'ORG' never appears in the train split"):
        load_task_data(_spec(tmp_path, "train.jsonl", test="test.jsonl"), tmp_path)
    _jsonl(tmp_path / "empty.jsonl", [{"text": "a", "labels": []}])
    with pytest.raises(DataError, match="no train example has a label"):
        load_task_data(_spec(tmp_path, "empty.jsonl"), tmp_path)


def test_label_separator_is_refused_for_single_label_tasks(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\n")
    spec = TaskSpec(name="s", type="sequence_classification",
                    data=DataSpec(format="csv", train="train.csv", label_separator="|"), source="s.yaml")
    with pytest.raises(ConfigError, match="data.label_separator"):
        load_task_data(spec, tmp_path)


def test_threshold_is_checked_with_the_spec(tmp_path):
    spec = TaskSpec(name="t", type="multi_label_classification", data=DataSpec(format="jsonl", train="x.jsonl"),
                    head={"threshold": 1.5}, source="t.yaml")
    with pytest.raises(ConfigError, match=r"head.threshold: expected a probability in \(0, 1\)"):
        check_spec(spec)
    with pytest.raises(ConfigError, match="metric 'accuracy' is not reported"):
        check_spec(TaskSpec(name="t", type="multi_label_classification", metric="accuracy",
                            data=DataSpec(format="jsonl", train="x.jsonl"), source="t.yaml"))


# ---- encode, head, report, predictions ----------------------------------------------------

def test_encode_gives_multi_hot_targets_and_the_head_learns_them_with_bce(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    rows = [{"text": "alice in paris", "labels": ["PER", "LOC"]}, {"text": "the movie", "labels": []}]
    enc = ML.encode(rows, tokenizer, ["LOC", "PER"], 32)
    assert np.asarray(enc.labels).tolist() == [[1, 1], [0, 0]]
    from nlp_mtl.data.encoding import collate
    batch = collate(enc, [0, 1], 0)
    assert batch["labels"].shape == (2, 2)
    head = HEADS.get("multi_label_classification").build(32, 2, {"threshold": 0.3})
    assert head.threshold == 0.3
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"].float())
    assert torch.allclose(head.loss(logits, batch["labels"]), expected)


def _report(probabilities, gold, threshold=None):
    labels = ["LOC", "ORG", "PER"]
    rows = [{"text": "x", "labels": [labels[i] for i, g in enumerate(g) if g]} for g in gold]
    from nlp_mtl.data.encoding import EncodedSplit, Ragged
    enc = EncodedSplit(Ragged.from_lists([[1, 2]] * len(rows)), np.asarray(gold, dtype=np.int8))
    head = {"threshold": threshold} if threshold is not None else {}
    spec = TaskSpec(name="tags", type="multi_label_classification", data=DataSpec(format="jsonl", train="x"),
                    head=head)
    return ML.report(spec, "test", rows, enc, [np.asarray(p, dtype=np.float32) for p in probabilities], labels)


def test_report_scores_label_sets_like_scikit_learn():
    from sklearn.metrics import f1_score

    gold = [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 0]]
    probabilities = [[0.9, 0.1, 0.6], [0.2, 0.1, 0.3], [0.4, 0.45, 0.2], [0.7, 0.8, 0.1]]
    report = _report(probabilities, gold)
    pred = (np.asarray(probabilities) >= 0.5).astype(int)
    m = report.metrics
    assert m["micro_f1"] == pytest.approx(f1_score(gold, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
    # samples: the label-less example predicted label-less counts 1, not 0
    assert m["samples_f1"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    assert m["subset_accuracy"] == 0.5 and m["examples"] == 4
    assert report.details["label_counts"]["ORG"] == {"tp": 0, "fp": 1, "fn": 1, "tn": 2}
    assert report.details["examples_without_labels"] == {"gold": 1, "predicted": 2}
    assert "micro avg" in report.text and "samples avg" in report.text and "PER" in report.text
    assert set(ML.metric_names(None)) <= set(m) and ML.main_metric(TaskSpec("t", "x", DataSpec("jsonl"))) == "micro_f1"
    # the per-label F1 plot reads the JSON details as they are
    from nlp_mtl.reporting.plots import _entity_scores
    assert set(_entity_scores(report.details)) == {"LOC", "ORG", "PER"}
    # a lower threshold from the spec's head options: ORG at 0.45 is now predicted
    assert _report(probabilities, gold, threshold=0.4).metrics["micro_f1"] != m["micro_f1"]


def test_predictions_apply_the_saved_threshold():
    logits = torch.tensor([[3.0, -3.0, 0.2], [-4.0, -4.0, -4.0]])
    out = ML.predictions(logits, ["LOC", "ORG", "PER"], [None, None], None, {})
    assert out[0]["labels"] == ["LOC", "PER"] and out[1]["labels"] == []
    assert out[0]["probabilities"]["LOC"] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), abs=1e-4)
    assert ML.predictions(logits, ["LOC", "ORG", "PER"], [None, None], None, {"threshold": 0.6})[0]["labels"] == ["LOC"]


def test_disk_storage_keeps_the_label_matrix(tmp_path, tiny_bert):
    from nlp_mtl.data.disk_store import encode_to_disk

    rows = [{"text": f"{random.Random(i).choice(PEOPLE)} {i}", "labels": ["PER"] if i % 3 else []} for i in range(50)]
    _jsonl(tmp_path / "train.jsonl", rows)
    spec = _spec(tmp_path, "train.jsonl")
    tokenizer = load_tokenizer(str(tiny_bert))
    memory = load_task_data(spec, tmp_path)
    disk = load_task_data(spec, tmp_path, stream_train=True, cache_dir=tmp_path / "cache")
    on_disk = encode_to_disk(ML, disk.splits["train"], tokenizer, disk.labels, 32, tmp_path / "cache", chunk_rows=16)
    in_memory = ML.encode(memory.splits["train"], tokenizer, memory.labels, 32)
    assert np.asarray(on_disk.labels).shape == (50, 1)
    assert np.array_equal(np.asarray(on_disk.labels), in_memory.labels)


# ---- end to end: tiny encoder, joint with NER and a single-label task ----------------------

def _tag_rows(n: int, seed: int) -> list[dict]:
    """Which kinds of words a sentence holds: person, place, praise; a quarter hold none."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
        labels = []
        for label, pool in (("person", PEOPLE), ("place", PLACES), ("praise", POSITIVE)):
            if rng.random() < 0.4:
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
                labels.append(label)
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


def _write_tag_task(root: Path) -> None:
    data = root / "data"
    for split, seed, n in (("train", 11, 300), ("valid", 12, 60), ("test", 13, 60)):
        with (data / f"tags_{split}.csv").open("w") as f:
            f.write("text,labels\n")
            for row in _tag_rows(n, seed):
                f.write(f'"{row["text"]}",{"|".join(row["labels"])}\n')
    (root / "specs" / "toy_tags.yaml").write_text(
        "name: toy_tags\ntype: multi_label_classification\n"
        "data:\n  format: csv\n  train: tags_train.csv\n  validation: tags_valid.csv\n  test: tags_test.csv\n"
        "  label_separator: '|'\nhead: {threshold: 0.5}\nmax_length: 32\n")


PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["nlp_mtl"] = None  # the user has only transformers
    from transformers import pipeline
    nlp = pipeline("text-classification", model=sys.argv[1], top_k=None, trust_remote_code=True)
    print(json.dumps(nlp(json.loads(sys.stdin.read()))))
""")


def _pipeline_in_clean_process(directory, texts):
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(directory)], input=json.dumps(texts),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _check_export(run: Path, task: str, out: Path, texts: list[str]) -> None:
    """Export ``task``, load it with nothing but transformers and compare with nlp-mtl predict."""
    from nlp_mtl.inference import Predictor
    from nlp_mtl.model import MultiTaskModel

    assert main(["export", str(run), "--task", task, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["nlp_mtl_threshold"] == 0.5
    assert "top_k=None" in (out / "README.md").read_text()
    ours = Predictor(MultiTaskModel.from_pretrained(run), batch_size=1).predict(texts)
    theirs = _pipeline_in_clean_process(out, texts)
    for mine, scores in zip(ours, theirs):
        probabilities = mine["tasks"][task]["probabilities"]
        assert {s["label"]: pytest.approx(s["score"], abs=2e-4) for s in scores} == probabilities  # sigmoid, not softmax
        assert [s["label"] for s in scores if s["score"] >= 0.5] == mine["tasks"][task]["labels"]


def test_trained_jointly_with_ner_and_sentiment_then_evaluated_predicted_exported(data_dir, tiny_bert, capsys):
    _write_tag_task(data_dir)
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent", "toy_tags"], steps=240)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    report = json.loads((run / "reports" / "toy_tags.test.json").read_text())
    assert report["main_metric"] == "micro_f1"
    assert report["metrics"]["micro_f1"] > 0.8, report["metrics"]
    assert {"person", "place", "praise", "micro avg", "samples avg", "label_counts"} <= set(report["report"])
    ner = json.loads((run / "reports" / "toy_ner.test.json").read_text())["metrics"]
    assert ner["f1"] > 0.5, ner
    assert "toy_tags" in (run / "reports" / "summary.test.txt").read_text()

    (run / "reports" / "toy_tags.test.json").unlink()
    assert main(["--quiet", "evaluate", str(run), "--split", "test"]) == 0
    again = json.loads((run / "reports" / "toy_tags.test.json").read_text())
    assert again["metrics"]["micro_f1"] == pytest.approx(report["metrics"]["micro_f1"])

    capsys.readouterr()
    assert main(["predict", str(run), "--text", "alice went to oslo today"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    tags = result["tasks"]["toy_tags"]
    assert set(tags["probabilities"]) == {"person", "place", "praise"}
    assert set(tags["labels"]) == {"person", "place"}, tags
    assert "entities" in result["tasks"]["toy_ner"] and "label" in result["tasks"]["toy_sent"]

    assert main(["--quiet", "report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "multi-label classification" in page
    assert (run / "plots" / "entity_f1.toy_tags.png").is_file()
    assert not list((run / "plots").glob("confusion.toy_tags.*"))

    texts = [r["text"] for r in _tag_rows(12, 99)]
    _check_export(run, "toy_tags", data_dir / "exported", texts)


# ---- end to end: the embedded MiniLM on a multi-label task derived from CoNLL-2003 ---------

def _conll_sentences(path: Path, n: int) -> list[tuple[list[str], list[str]]]:
    """``n`` sentences spread evenly over a CoNLL file: the first ones are a few documents only."""
    sentences, tokens, tags = [], [], []
    for line in [*path.read_text().splitlines(), ""]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        tokens.append(parts[0])
        tags.append(parts[-1])
    return sentences[:: len(sentences) // n][:n]


def _entity_type_sets(sentences: list[tuple[list[str], list[str]]]) -> list[dict]:
    """Each sentence labelled with the set of entity types it contains (often none)."""
    return [{"text": " ".join(tokens), "labels": sorted({t[2:] for t in tags if t.startswith("B-")})}
            for tokens, tags in sentences]


def _best_constant_micro_f1(rows: list[dict], labels: list[str]) -> float:
    """What predicting one fixed label set for every example scores at best: the bar to clear."""
    from itertools import product

    from sklearn.metrics import f1_score

    gold = np.array([[label in r["labels"] for label in labels] for r in rows], dtype=int)
    return max(f1_score(gold, np.tile(choice, (len(gold), 1)), average="micro", zero_division=0)
               for choice in product([0, 1], repeat=len(labels)))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="../shared/data is not beside the checkout")
def test_conll_entity_type_sets_with_the_real_backbone(tmp_path, capsys):
    from .conftest import write_conll

    data = tmp_path / "data"
    data.mkdir()
    test_rows = []
    for split, file, n in (("train", "train.txt", 300), ("valid", "valid.txt", 100), ("test", "test.txt", 100)):
        sentences = _conll_sentences(SHARED_DATA / "conll2003" / file, n)
        rows = _entity_type_sets(sentences)
        _jsonl(data / f"types_{split}.jsonl", rows)
        write_conll(data / f"ner_{split}.txt", sentences)
        test_rows = rows
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "entity_types.yaml").write_text(
        "name: entity_types\ntype: multi_label_classification\n"
        "data: {format: jsonl, train: types_train.jsonl, validation: types_valid.jsonl, test: types_test.jsonl}\n"
        "max_length: 48\n")
    (specs / "ner.yaml").write_text(
        "name: ner\ntype: token_classification\n"
        "data: {format: conll, train: ner_train.txt, validation: ner_valid.txt, test: ner_test.txt, "
        "columns: {tokens: 0, tags: 3}}\nmax_length: 48\n")
    config = write_experiment(tmp_path, "embedded", ["entity_types", "ner"], lr=2e-4, head_lr=5e-3, steps=STEPS,
                              evaluations=1, warmup_ratio=0.1)
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    metrics = json.loads((run / "reports" / "entity_types.test.json").read_text())["metrics"]
    # Above the best fixed guess (about 0.5 on this sample; predicting nothing scores 0).
    assert metrics["micro_f1"] > _best_constant_micro_f1(test_rows, ["LOC", "MISC", "ORG", "PER"]) + 0.05, metrics

    capsys.readouterr()
    assert main(["predict", str(run), "--text", "Angela Merkel met officials of the European Union in Paris ."]) == 0
    result = json.loads(capsys.readouterr().out)["tasks"]["entity_types"]
    assert set(result["probabilities"]) == {"LOC", "MISC", "ORG", "PER"}

    texts = ["Angela Merkel met officials of the European Union in Paris .", "It rained all day .",
             "Manchester United beat Chelsea 2-1 on Sunday ."]
    _check_export(run, "entity_types", tmp_path / "exported", texts)
