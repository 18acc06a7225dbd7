"""The Python API: train from config objects (no YAML), load, predict."""

import json

import nlp_mtl
from nlp_mtl import (BackboneConfig, DataConfig, DataSpec, ExperimentConfig, MultiTaskModel, TaskEntry, TaskSpec,
                     TrainingConfig)
from nlp_mtl.config import CarvedSplit


def test_train_from_python_objects_then_load_and_predict(data_dir, tiny_bert):
    ner = TaskEntry(spec=str(data_dir / "specs" / "toy_ner.yaml"), sampling_weight=2.0)
    sent = TaskSpec(name="toy_sent", type="sequence_classification", max_length=32,
                    data=DataSpec(format="jsonl", train="sent_train.jsonl", test="sent_test.jsonl",
                                  validation=CarvedSplit(from_train=0.2, seed=1),
                                  columns={"text": "sentence", "label": "polarity"}))
    config = ExperimentConfig(
        name="api", tasks=[ner, sent],
        backbone=BackboneConfig(name=str(tiny_bert)),
        data=DataConfig(root=str(data_dir / "data")),
        training=TrainingConfig(batch_size=16, lr=3e-3, steps=120, evaluations=1, warmup_ratio=0.0, log_with="none"),
    )
    result = nlp_mtl.train(config, output_dir=data_dir / "run", quiet=True)
    assert result.test_reports["toy_sent"].metrics["accuracy"] > 0.85
    assert result.test_reports["toy_ner"].metrics["f1"] > 0.7
    saved = json.loads((data_dir / "run" / "experiment.json").read_text())
    assert saved["config"]["tasks"][1] == "toy_sent"  # a TaskSpec object is stored by name
    assert [t["name"] for t in saved["tasks"]] == ["toy_ner", "toy_sent"]
    assert saved["tasks"][0]["sampling_weight"] == 2.0

    model = MultiTaskModel.from_pretrained(data_dir / "run")
    one = model.predict("alice visited paris .")
    assert set(one["tasks"]) == {"toy_ner", "toy_sent"}
    many = model.predict(["alice visited paris .", "bob saw london ."])
    assert len(many) == 2 and many[0] == one


def test_train_from_yaml_with_overrides(data_dir, tiny_bert):
    from .conftest import write_experiment

    config = write_experiment(data_dir, tiny_bert, ["toy_sent"])
    result = nlp_mtl.train(config, output_dir=data_dir / "run", quiet=True,
                           overrides=["training.steps=30", "training.log_with=none"])
    assert result.steps == 30


def test_config_objects_get_the_yaml_checks(tmp_path):
    import pytest

    from nlp_mtl.errors import ConfigError

    bad = ExperimentConfig(name="x", tasks=["conll2003_ner"], training=TrainingConfig(batch_size=0))
    with pytest.raises(ConfigError, match="batch_size"):
        nlp_mtl.train(bad, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_two_trainings_in_one_process_may_use_different_precisions(data_dir, tiny_bert):
    """accelerate's process-wide state refused a second mixed precision ("AcceleratorState has
    already been initialized"), which broke scripts/bench.py on a GPU."""
    from .conftest import write_experiment

    config = write_experiment(data_dir, tiny_bert, ["toy_sent"])
    # compile=false: `auto` compiles bf16 steps on a CPU, and a cold compile is most of a minute
    # on some machines; what is under test is the precision state, not the compiler.
    for i, precision in enumerate(["no", "bf16", "no"]):
        result = nlp_mtl.train(config, output_dir=data_dir / f"run{i}", quiet=True,
                               overrides=["training.steps=4", "training.log_with=none", "training.evaluations=1",
                                          f"training.mixed_precision={precision}", "training.compile=false"])
        assert result.steps == 4
