"""labels: {from_splits: [...]}: a label that only dev/test hold joins the label set on request;
without it, such a label is still an error."""

import json

import pytest

from nlp_mtl.config import LabelsFromSplits, TaskSpec, load_task_spec
from nlp_mtl.data.loading import load_task_data
from nlp_mtl.errors import ConfigError, DataError
from nlp_mtl.schema import from_mapping, to_mapping


def _sentiment_task(tmp_path, labels_yaml: str = "", validation: str = "valid.jsonl"):
    rows = {"train": ["pos", "neg", "pos", "neg"], "valid": ["pos", "neutral"], "test": ["neg", "mixed"]}
    for split, labels in rows.items():
        with (tmp_path / f"{split}.jsonl").open("w") as f:
            for i, label in enumerate(labels):
                f.write(json.dumps({"text": f"example {i} of {split}", "label": label}) + "\n")
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\ntype: sequence_classification\n"
                    f"data: {{format: jsonl, train: train.jsonl, validation: {validation}, test: test.jsonl}}\n"
                    + labels_yaml)
    return load_task_spec(spec)


def test_by_default_a_label_only_dev_has_is_refused(tmp_path):
    spec = _sentiment_task(tmp_path)
    with pytest.raises(DataError, match=r"valid.jsonl:2: label 'neutral' never appears in the train split.*from_splits"):
        load_task_data(spec, tmp_path)


@pytest.mark.parametrize("stream_train", [False, True])
def test_from_splits_takes_every_listed_splits_labels(tmp_path, stream_train):
    spec = _sentiment_task(tmp_path, "labels: {from_splits: [train, validation, test]}\n")
    assert spec.labels == LabelsFromSplits(from_splits=["train", "validation", "test"])
    data = load_task_data(spec, tmp_path, stream_train=stream_train, cache_dir=tmp_path / "cache")
    assert data.labels == ["mixed", "neg", "neutral", "pos"]
    assert {split: len(rows) for split, rows in data.splits.items()} == {"train": 4, "validation": 2, "test": 2}


def test_a_split_not_listed_is_still_checked(tmp_path):
    spec = _sentiment_task(tmp_path, "labels: {from_splits: [train, validation]}\n")
    with pytest.raises(DataError, match=r"test.jsonl:2: label 'mixed' never appears in the train, validation splits"):
        load_task_data(spec, tmp_path)


def test_from_splits_must_include_train(tmp_path):
    with pytest.raises(ConfigError, match=r"t.yaml.labels.from_splits: must include train"):
        _sentiment_task(tmp_path, "labels: {from_splits: [validation, test]}\n")


def test_from_splits_naming_a_split_the_task_lacks_is_an_error(tmp_path):
    spec = _sentiment_task(tmp_path, "labels: {from_splits: [train, validation, test]}\n", validation="null")
    with pytest.raises(ConfigError, match=r"labels.from_splits names 'validation', and this task has no validation split"):
        load_task_data(spec, tmp_path)


def test_a_run_stores_and_reads_back_from_splits(tmp_path):
    spec = _sentiment_task(tmp_path, "labels: {from_splits: [train, test]}\n")
    raw = to_mapping(spec)
    assert raw["labels"] == {"from_splits": ["train", "test"]}
    assert from_mapping(TaskSpec, raw, "experiment.json").labels == spec.labels
