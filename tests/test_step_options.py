"""Training-step options: shared passes (several label layers of the same examples from one
encoder pass), token-budget batches, padding to a multiple and the compiled step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nlp_mtl.cli import main
from nlp_mtl.data.sampler import LengthGroupedBatches

from .conftest import ner_sentences, write_experiment


def _two_layer_data(tmp_path: Path) -> None:
    """The synthetic NER sentences with a second label layer in column 1: the word's shape."""
    for split, seed, n in (("train", 11, 200), ("valid", 12, 40), ("test", 13, 40)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for tokens, tags in ner_sentences(n, seed):
            lines += [f"{t} {'CAP' if t[0].isupper() else 'LOW'} X {g}" for t, g in zip(tokens, tags)] + [""]
        (tmp_path / "data" / f"layers_{split}.txt").write_text("\n".join(lines) + "\n")
    files = "  train: layers_train.txt\n  validation: layers_valid.txt\n  test: layers_test.txt\n"
    (tmp_path / "specs" / "layer_ner.yaml").write_text(
        f"name: layer_ner\ntype: token_classification\ndata:\n  format: conll\n{files}"
        "  columns: {tokens: 0, tags: 3}\nmax_length: 32\n")
    (tmp_path / "specs" / "layer_shape.yaml").write_text(
        f"name: layer_shape\ntype: token_classification\ndata:\n  format: conll\n{files}"
        "  columns: {tokens: 0, tags: 1}\n  tag_scheme: none\nmetric: accuracy\nmax_length: 32\nloss_weight: 0.5\n")


def _with(config: Path, **training: object) -> Path:
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(training)
    config.write_text(yaml.safe_dump(raw))
    return config


def _encoder_training_calls(monkeypatch) -> list[int]:
    """Counts encoder forward passes in training mode (evaluation runs in eval mode)."""
    from transformers import BertModel

    calls: list[int] = []
    original = BertModel.forward

    def counted(self, *args, **kwargs):
        if self.training:
            calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", counted)
    return calls


def test_shared_pass_trains_both_layers_from_one_encoder_pass(data_dir, tiny_bert, monkeypatch):
    _two_layer_data(data_dir)
    config = _with(write_experiment(data_dir, tiny_bert, ["layer_ner", "layer_shape"], steps=60, log_every=20),
                   shared_pass=[["layer_ner", "layer_shape"]])
    calls = _encoder_training_calls(monkeypatch)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    assert len(calls) == 60  # one encoder pass per step for both heads
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("event") == "train"]
    assert set(train[-1]["loss"]) == {"layer_ner+layer_shape"}
    assert train[-1]["loss"]["layer_ner+layer_shape"] < train[0]["loss"]["layer_ner+layer_shape"]
    summary = json.loads((run / "reports" / "summary.test.json").read_text())["tasks"]
    # Each layer is still a task of its own after training: its metric, report and export.
    assert summary["layer_shape"]["metrics"]["accuracy"] > 0.9  # capitalisation: easy once learnt
    assert (run / "reports" / "layer_ner.test.txt").exists() and (run / "reports" / "layer_shape.test.txt").exists()


def test_shared_pass_separate_tasks_run_one_pass_each(data_dir, tiny_bert, monkeypatch):
    """The baseline the shared pass is measured against: as separate tasks, a pass per step per layer."""
    _two_layer_data(data_dir)
    config = write_experiment(data_dir, tiny_bert, ["layer_ner", "layer_shape"], steps=30)
    calls = _encoder_training_calls(monkeypatch)
    assert main(["--quiet", "train", str(config), "--output-dir", str(data_dir / "run")]) == 0
    assert len(calls) == 30  # one task per step, so both layers need twice the steps for an epoch each


@pytest.mark.parametrize("groups, message", [
    ([["layer_ner", "toy_sent"]], "do not label the same train examples"),
    ([["layer_ner"]], "expected at least two tasks"),
    ([["layer_ner", "nope"]], "'nope' is not a task of this experiment"),
    ([["layer_ner", "layer_shape"], ["layer_shape", "toy_sent"]], "already in training.shared_pass[0]"),
])
def test_shared_pass_errors_name_the_group(data_dir, tiny_bert, capsys, groups, message):
    _two_layer_data(data_dir)
    config = _with(write_experiment(data_dir, tiny_bert, ["layer_ner", "layer_shape", "toy_sent"], steps=5),
                   shared_pass=groups)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "training.shared_pass[" in err and message in err
    assert "Traceback" not in err


def test_token_budget_batches_cover_every_example_within_the_budget():
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    batches = LengthGroupedBatches(lengths, 32, seed=0, batch_tokens=512).batches_for_pass(0)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for b in batches:
        assert len(b) * lengths[b].max() <= 512 or len(b) == 1
    sizes = [len(b) for b in batches]
    assert max(sizes) > 3 * min(sizes)  # short sentences come in bigger batches
    # Filled: the greedy cut leaves no batch that could have taken its neighbour's first member.
    assert np.mean([len(b) * lengths[b].max() for b in batches]) > 0.8 * 512


def test_token_budget_shards_give_every_process_a_share():
    lengths = np.full(50, 400)  # each longer than the budget alone
    batches = LengthGroupedBatches(lengths, 32, seed=0, batch_tokens=100, num_shards=2).batches_for_pass(0)
    assert all(len(b) >= 2 for b in batches)


def test_token_budget_training_runs_end_to_end(data_dir, tiny_bert):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], steps=20, batch_tokens=256,
                              pad_to_multiple_of=8)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    assert (run / "reports" / "summary.test.json").exists()


def test_padding_to_a_multiple():
    from nlp_mtl.data.encoding import EncodedSplit, Ragged, collate

    split = EncodedSplit(Ragged.from_lists([[2, 5, 3], [2, 5, 6, 7, 8, 3]]), np.array([0, 1]))
    assert collate(split, [0, 1], 0)["input_ids"].shape == (2, 6)
    batch = collate(split, [0, 1], 0, multiple_of=16)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum().item() == 9


def test_bad_step_options_are_config_errors(data_dir, tiny_bert, capsys):
    for key, value, expected in (("batch_tokens", 0, "training.batch_tokens"),
                                 ("pad_to_multiple_of", 0, "training.pad_to_multiple_of"),
                                 ("compile", "sometimes", "training.compile")):
        config = write_experiment(data_dir, tiny_bert, ["toy_sent"], **{key: value})
        assert main(["--quiet", "train", str(config), "--output-dir", str(data_dir / "run")]) == 2
        assert expected in capsys.readouterr().err


def test_compile_auto_compiles_where_it_measured_faster():
    from nlp_mtl.training.trainer import resolve_compile

    assert resolve_compile("auto", torch.device("cpu"), "no") is False
    assert resolve_compile("auto", torch.device("cpu"), "bf16") is True
    assert resolve_compile("auto", torch.device("cuda"), "bf16") is False  # not measured on a GPU yet
    assert resolve_compile(True, torch.device("cpu"), "no") is True
    assert resolve_compile(False, torch.device("cuda"), "bf16") is False


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_one(data_dir, tmp_path):
    """Same seed, same batches, no dropout (inductor draws its own random numbers): the compiled
    step's losses are the eager step's, to float tolerance."""
    from .conftest import build_tiny_bert

    encoder = build_tiny_bert(tmp_path / "no_dropout_bert", dropout=0.0)
    spec = data_dir / "specs" / "toy_sent.yaml"
    spec.write_text(spec.read_text() + "head: {dropout: 0.0}\n")
    losses = {}
    for compiled in (False, True):
        config = write_experiment(data_dir, encoder, ["toy_sent"], steps=12, log_every=4, evaluations=1,
                                  compile=compiled, pad_to_multiple_of=16)
        run = data_dir / f"run_{compiled}"
        assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[compiled] = [r["loss"]["toy_sent"] for r in records if r.get("event") == "train"]
    assert len(losses[True]) == len(losses[False]) == 3
    assert np.allclose(losses[True], losses[False], rtol=1e-3)
