"""The nearest-neighbour token head (NNShot) and `adapt --token-head nearest` on tiny encoders."""

from __future__ import annotations

import json

import pytest
import torch

from nlp_mtl.cli import main
from nlp_mtl.errors import ConfigError
from nlp_mtl.model.heads import NearestNeighbourHeadOptions, NearestNeighbourTokenHead
from nlp_mtl.registry import HEADS

from .conftest import write_experiment


def _head(memory: torch.Tensor, labels: list[int], num_labels: int) -> NearestNeighbourTokenHead:
    head = NearestNeighbourTokenHead(memory.shape[1], num_labels, NearestNeighbourHeadOptions(support_tokens=len(labels)))
    head.remember(memory, torch.tensor(labels))
    return head


def test_a_token_takes_the_label_of_its_most_similar_support_token():
    torch.manual_seed(0)
    memory = torch.randn(6, 8)
    head = _head(memory, [0, 1, 1, 2, 0, 2], num_labels=4)
    # Each support token, slightly moved and rescaled (cosine ignores the norm), finds itself.
    queries = (3.0 * memory + 0.01 * torch.randn(6, 8)).unsqueeze(0)
    logits = head(queries, torch.ones(1, 6))
    assert logits.shape == (1, 6, 4)
    assert logits.argmax(-1).tolist() == [[0, 1, 1, 2, 0, 2]]
    # A class's logit is its best similarity, scaled; class 3 has no support token and is below all.
    similarity = torch.nn.functional.normalize(queries[0], dim=-1) @ torch.nn.functional.normalize(memory, dim=-1).t()
    assert torch.allclose(logits[0, :, 1], 20.0 * similarity[:, [1, 2]].max(-1).values, atol=1e-5)
    assert bool((logits[0, :, 3] < logits[0, :, :3].min(-1).values).all())


def test_the_nearest_token_not_the_nearest_class_mean_decides():
    # Class 0 has two tight clusters far apart; its mean sits nearer class 1's only token than
    # to either cluster, so a prototype picks 1 where a nearest neighbour picks 0.
    memory = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.6, 0.2]])
    head = _head(memory, [0, 0, 1], num_labels=2)
    query = torch.tensor([[[0.95, 0.05, 0.05]]])
    assert head(query, torch.ones(1, 1)).argmax(-1).item() == 0


def test_the_head_is_not_a_training_head_and_says_so():
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.head\.support_tokens: expected a count >= 1.*token_classification"):
        HEADS.get("token_nearest_neighbour").build(8, 3, {"type": "token_nearest_neighbour"}, "tasks[0].head")
    with pytest.raises(ConfigError, match=r"head\.scale: expected a number > 0"):
        HEADS.get("token_nearest_neighbour").build(8, 3, {"support_tokens": 2, "scale": 0}, "head")
    head = NearestNeighbourTokenHead(8, 3, NearestNeighbourHeadOptions(support_tokens=2))
    with pytest.raises(ValueError, match=r"expected \(2, 8\) support features"):
        head.remember(torch.zeros(3, 8), torch.zeros(3, dtype=torch.long))


def test_adapt_token_head_nearest_scores_saves_and_predicts_through_the_cli(tiny_bert, data_dir, capsys):
    config = write_experiment(data_dir, tiny_bert, ["toy_sent"], adapters={"type": "lora"}, steps=5)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    spec = data_dir / "specs" / "toy_ner.yaml"
    common = ["--quiet", "adapt", str(run), "--task", str(spec), "--shots", "2", "--seeds", "2", "--init", "fresh",
              "--max-steps", "4"]
    assert main(common + ["--token-head", "nearest", "--save", str(data_dir / "nearest")]) == 0
    nearest = json.loads((run / "adapt" / "toy_ner.2shot.fresh.nearest.json").read_text())
    assert main(common) == 0
    linear = json.loads((run / "adapt" / "toy_ner.2shot.fresh.json").read_text())
    assert (nearest["token_head"], linear["token_head"]) == ("nearest", "linear")
    # Same support sets and the same adaptation; only the scoring differs.
    assert [s["per_class"] for s in nearest["seeds"]] == [s["per_class"] for s in linear["seeds"]]
    assert [s["steps"] for s in nearest["seeds"]] == [s["steps"] for s in linear["seeds"]]
    assert 0 <= nearest["mean"]["f1"] <= 1 and nearest["mean"] != linear["mean"]

    package = json.loads((data_dir / "nearest" / "task.json").read_text())
    task = package["task"]
    assert task["head"] == "token_nearest_neighbour" and task["head_options"]["support_tokens"] > 0
    capsys.readouterr()
    assert main(["predict", str(run), "--add-task", str(data_dir / "nearest"), "--text", "John lives in Paris"]) == 0
    predicted = json.loads(capsys.readouterr().out)["tasks"]["toy_ner"]
    assert predicted["words"] == ["John", "lives", "in", "Paris"]
    assert len(predicted["tags"]) == 4 and set(predicted["tags"]) <= {"O", "B-PER", "I-PER", "B-LOC", "I-LOC",
                                                                       "B-ORG", "I-ORG"}


def test_token_head_nearest_leaves_sentence_tasks_to_their_head(tiny_bert, data_dir):
    import nlp_mtl

    config = write_experiment(data_dir, tiny_bert, ["toy_ner"], adapters={"type": "lora"}, steps=5)
    nlp_mtl.train(config, data_dir / "run", quiet=True)
    summary = nlp_mtl.adapt(data_dir / "run", data_dir / "specs" / "toy_sent.yaml", shots=2, seeds=1, init="fresh",
                            token_head="nearest")
    assert summary.token_head == "linear" and 0 <= summary.mean["macro_f1"] <= 1
