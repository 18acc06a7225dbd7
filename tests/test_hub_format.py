"""The `hub` data format, exercised offline through a dataset saved with save_to_disk."""

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from nlp_mtl.config import DataSpec, TaskSpec
from nlp_mtl.data.loading import load_task_data


def test_hub_dataset_from_disk_maps_classlabels_to_names(tmp_path):
    tags = ClassLabel(names=["O", "B-PER", "I-PER"])
    features = Features({"tokens": List(Value("string")), "ner_tags": List(tags)})
    train = Dataset.from_dict({"tokens": [["Ann", "Lee", "ran"], ["hi"]], "ner_tags": [[1, 2, 0], [0]]}, features=features)
    dev = Dataset.from_dict({"tokens": [["Bo", "sat"]], "ner_tags": [[1, 0]]}, features=features)
    DatasetDict({"train": train, "dev": dev}).save_to_disk(tmp_path / "ds")
    spec = TaskSpec(name="hubner", type="token_classification", source=str(tmp_path / "s.yaml"),
                    data=DataSpec(format="hub", path=str(tmp_path / "ds"), splits={"validation": "dev"},
                                  columns={"tokens": "tokens", "tags": "ner_tags"}))
    data = load_task_data(spec, tmp_path)
    assert data.splits["train"][0]["tags"] == ["B-PER", "I-PER", "O"]
    assert data.splits["validation"][0]["tokens"] == ["Bo", "sat"]
    assert "test" not in data.splits

    label = ClassLabel(names=["neg", "pos"])
    seq = Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0]},
                            features=Features({"sentence": Value("string"), "label": label}))
    DatasetDict({"train": seq}).save_to_disk(tmp_path / "seq")
    spec = TaskSpec(name="hubsent", type="sequence_classification", source=str(tmp_path / "s.yaml"),
                    data=DataSpec(format="hub", path=str(tmp_path / "seq"), columns={"text": "sentence"}))
    rows = load_task_data(spec, tmp_path).splits["train"]
    assert [(r["text"], r["label"]) for r in rows] == [("good", "pos"), ("bad", "neg")]


def test_hub_name_goes_through_load_dataset(tmp_path, monkeypatch):
    """`name:` is handed to datasets.load_dataset; offline, a local folder of JSON Lines files
    is what it can load (the Hub resolves names the same way when it is reachable)."""
    import json

    folder = tmp_path / "my_dataset"
    folder.mkdir()
    for split, rows in (("train", [("great fun", "pos"), ("dull", "neg")]), ("test", [("superb", "pos")])):
        with (folder / f"{split}.jsonl").open("w") as f:
            for text, label in rows:
                f.write(json.dumps({"text": text, "label": label}) + "\n")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    spec = TaskSpec(name="hubjson", type="sequence_classification", source=str(tmp_path / "s.yaml"),
                    data=DataSpec(format="hub", name=str(folder)))
    data = load_task_data(spec, tmp_path)
    assert [(r["text"], r["label"]) for r in data.splits["train"]] == [("great fun", "pos"), ("dull", "neg")]
    assert [r["text"] for r in data.splits["test"]] == ["superb"]


def test_unreachable_hub_dataset_is_a_clear_error(tmp_path, monkeypatch):
    import pytest

    from nlp_mtl.errors import DataError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = TaskSpec(name="nohub", type="sequence_classification", source=str(tmp_path / "s.yaml"),
                    data=DataSpec(format="hub", name="surely-not/a-cached-dataset"))
    with pytest.raises(DataError, match="surely-not/a-cached-dataset"):
        load_task_data(spec, tmp_path)
