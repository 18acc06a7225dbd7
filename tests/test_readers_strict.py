"""Readers refuse malformed data with file:line, and repair tags only where the spec says so."""

from __future__ import annotations

import json

from nlp_mtl.cli import main
from nlp_mtl.config import load_task_spec
from nlp_mtl.data.loading import load_task_data
from nlp_mtl.data.tags import repair, sequence_problem


def test_iob2_sequence_rules_and_repair():
    assert sequence_problem(["B-PER", "I-PER", "O", "B-LOC"], "iob2") is None
    assert sequence_problem(["O", "I-PER"], "iob2")[0] == 1
    assert sequence_problem(["B-LOC", "I-PER"], "iob2")[0] == 1
    assert sequence_problem(["I-PER"], "iob1") is None  # IOB1 starts chunks with I-
    assert repair(["O", "I-PER", "I-PER", "B-LOC", "I-PER"], "iob2") == (["O", "B-PER", "I-PER", "B-LOC", "B-PER"], 2)
    assert repair(["O", "E-PER"], "bioes") == (["O", "S-PER"], 1)


def test_repair_true_repairs_and_tasks_validate_counts_it(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("the O\nPeter I-PER\nPan I-PER\n\nParis I-LOC\n")
    (tmp_path / "spec.yaml").write_text("name: ner\ntype: token_classification\ndata:\n  format: conll\n"
                                        "  train: train.txt\n  columns: {tokens: 0, tags: 1}\n  repair: true\n")
    data = load_task_data(load_task_spec(tmp_path / "spec.yaml"), tmp_path)
    assert [r["tags"] for r in data.splits["train"]] == [["O", "B-PER", "I-PER"], ["B-LOC"]]
    assert main(["tasks", "validate", str(tmp_path / "spec.yaml"), "--data-root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["splits"]["train"]["repaired tags"] == 2


def test_a_bom_is_dropped_in_every_format(tmp_path):
    bom = "\ufeff"
    files = {
        "csv": ("train.csv", bom + "text,label\ngood,pos\nbad,neg\n", ""),
        "tsv": ("train.tsv", bom + "text\tlabel\ngood\tpos\nbad\tneg\n", ""),
        "jsonl": ("train.jsonl", bom + '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n', ""),
        "regex": ("train.txt", bom + "pos good\nneg bad\n", "  pattern: '^(?P<label>\\S+) (?P<text>.+)$'\n"),
    }
    for fmt, (name, content, extra) in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        (tmp_path / f"{fmt}.yaml").write_text(bom + f"name: s_{fmt}\ntype: sequence_classification\n"
                                              f"data:\n  format: {fmt}\n  train: {name}\n{extra}")
        data = load_task_data(load_task_spec(tmp_path / f"{fmt}.yaml"), tmp_path)
        assert [r["text"] for r in data.splits["train"]] == ["good", "bad"], fmt
        assert data.labels == ["neg", "pos"], fmt
    (tmp_path / "ner.txt").write_text(bom + "EU B-ORG\nsays O\n", encoding="utf-8")
    (tmp_path / "ner.yaml").write_text("name: ner\ntype: token_classification\ndata:\n  format: conll\n"
                                       "  train: ner.txt\n  columns: {tokens: 0, tags: 1}\n")
    data = load_task_data(load_task_spec(tmp_path / "ner.yaml"), tmp_path)
    assert data.splits["train"][0]["tokens"] == ["EU", "says"]


def test_integer_labels_are_kept_as_strings(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    (tmp_path / "spec.yaml").write_text("name: s\ntype: sequence_classification\ndata: {format: jsonl, train: train.jsonl}\n")
    assert load_task_data(load_task_spec(tmp_path / "spec.yaml"), tmp_path).labels == ["0", "1"]
