from pathlib import Path

import pytest

from nlp_mtl.config import (
    ExperimentConfig,
    TaskSpec,
    apply_overrides,
    cache_dir,
    data_root,
    load_experiment,
    load_task_spec,
    load_tasks,
)
from nlp_mtl.errors import ConfigError
from nlp_mtl.schema import from_mapping

BUILTIN = Path(__file__).resolve().parents[1] / "tasks"


def test_builtin_specs_load_into_typed_objects():
    for path in BUILTIN.glob("*.yaml"):
        spec = load_task_spec(path)
        assert isinstance(spec, TaskSpec) and spec.name == path.stem


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: x\ntype: token_classification\nmax_lenght: 64\ndata: {format: conll, train: a.txt}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: unknown key 'max_lenght' \(did you mean 'max_length'\?\)"):
        load_task_spec(path)


def test_nested_key_path_and_type_are_named(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: x\ntype: token_classification\ndata: {format: conll, train: a.txt, header: maybe}\n")
    with pytest.raises(ConfigError, match=r"t.yaml.data.header: expected true or false, got 'maybe'"):
        load_task_spec(path)


def test_literal_values_are_checked_with_suggestion(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: x\ntype: token_classification\ndata: {format: conl, train: a.txt}\n")
    with pytest.raises(ConfigError, match="did you mean 'conll'"):
        load_task_spec(path)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: malformed YAML"):
        load_task_spec(path)


def test_scientific_notation_is_a_number(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("tasks: [conll2003_ner]\ntraining: {lr: 5e-5}\n")
    assert load_experiment(path).training.lr == pytest.approx(5e-5)


def test_data_paths_start_at_the_config_file_and_expand_home(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "e.yaml"
    path.write_text("tasks: [conll2003_ner]\ndata: {root: ../data, cache_dir: cache}\n")
    monkeypatch.chdir("/")  # not where the command runs
    config = load_experiment(path)
    assert (data_root(config), cache_dir(config)) == (tmp_path / "data", tmp_path / "configs" / "cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = load_experiment(path, ["data.root=~/corpora", "data.cache_dir=~/.cache/x"])
    assert (data_root(home), cache_dir(home)) == (tmp_path / "home" / "corpora", tmp_path / "home" / ".cache" / "x")
    monkeypatch.setenv("NLP_MTL_DATA_ROOT", "~/env")
    assert data_root(load_experiment(path, ["data.root=null"])) == tmp_path / "home" / "env"


def test_overrides_reach_nested_keys(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("tasks: [conll2003_ner]\ntraining: {lr: 1e-4}\n")
    config = load_experiment(path, ["training.lr=3e-5", "training.batch_size=8", "sampler.strategy=uniform"])
    assert config.training.lr == pytest.approx(3e-5)
    assert config.training.batch_size == 8
    assert config.sampler.strategy == "uniform"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_a_bare_no_means_the_word_where_the_field_offers_it(tmp_path):
    """YAML 1.1 reads `no` as false; `mixed_precision: no` must still mean 'no'."""
    path = tmp_path / "e.yaml"
    path.write_text("tasks: [conll2003_ner]\ntraining: {mixed_precision: no}\n")
    assert load_experiment(path).training.mixed_precision == "no"
    assert load_experiment(path, ["training.mixed_precision=no"]).training.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision: expected 'no' or 'bf16'.*got True"):
        load_experiment(path, ["training.mixed_precision=yes"])


@pytest.mark.parametrize("override, message", [
    ("training.batch_size=0", "batch_size: expected an integer > 0"),
    ("training.lr=-1", "lr: expected a number > 0"),
    ("training.steps=0", "steps: expected an integer > 0"),
    ("sampler.temperature=0", "temperature: expected a number > 0"),
])
def test_invalid_numbers_are_rejected(tmp_path, override, message):
    path = tmp_path / "e.yaml"
    path.write_text("tasks: [conll2003_ner]\n")
    with pytest.raises(ConfigError, match=message):
        load_experiment(path, [override])


def test_task_entries_resolve_builtin_names_and_override_weights(tmp_path):
    config = from_mapping(ExperimentConfig, {"tasks": ["conll2003_ner", {"spec": "sst2", "sampling_weight": 0.5}]}, "e")
    specs = load_tasks(config)
    assert [s.name for s in specs] == ["conll2003_ner", "sst2"]
    assert specs[1].sampling_weight == 0.5


def test_duplicate_task_names_are_rejected():
    config = from_mapping(ExperimentConfig, {"tasks": ["sst2", "sst2"]}, "e")
    with pytest.raises(ConfigError, match="duplicate task name 'sst2'"):
        load_tasks(config)


def test_missing_task_file_lists_where_it_looked():
    config = from_mapping(ExperimentConfig, {"tasks": ["no_such_task"]}, "e")
    with pytest.raises(ConfigError, match="task 'no_such_task' not found"):
        load_tasks(config)
