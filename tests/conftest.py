"""Shared fixtures: a tiny random BERT built locally (no download) and small synthetic tasks.

The synthetic tasks are learnable by design (entity words come from fixed lists, the class is
decided by a keyword), so end-to-end tests can require real learning, not just 'it ran'.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
PLACES = ["paris", "berlin", "rome", "madrid", "oslo", "vienna"]
FILLER = ["the", "a", "met", "in", "visited", "saw", "went", "to", "and", "from", "today", "with"]
POSITIVE = ["great", "good", "lovely", "fine"]
NEGATIVE = ["bad", "awful", "poor", "terrible"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = PEOPLE + PLACES + FILLER + POSITIVE + NEGATIVE + ["what", "who", "where", "is", "?", ".", ",", "movie", "city"]
    pieces = ["##s", "##er", "##ly", "##a", "##e", "##i", "##o", "##n"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    return list(dict.fromkeys(specials + sorted(set(words)) + pieces + letters + ["##" + c for c in letters]))


def build_tiny_bert(directory: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary as `vocab`, 4.x as `vocab_file`.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    if len(tokenizer.get_vocab()) != len(vocab):
        tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    assert len(tokenizer.get_vocab()) == len(vocab)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def ner_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 9)):
            r = rng.random()
            if r < 0.2:
                tokens.append(rng.choice(PEOPLE)); tags.append("B-PER")
            elif r < 0.35:
                tokens += [rng.choice(PLACES), rng.choice(PLACES)]; tags += ["B-LOC", "I-LOC"]
            else:
                tokens.append(rng.choice(FILLER)); tags.append("O")
        out.append((tokens, tags))
    return out


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), word)
        rows.append((" ".join(words + ["movie"]), label))
    return rows


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]], docstart: bool = True) -> None:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for tokens, tags in sentences:
        lines += [f"{t} X X {g}" for t, g in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_data_dir(tmp_path)


def make_data_dir(tmp_path: Path) -> Path:
    """Synthetic data in every supported format, plus matching spec files under specs/."""
    root = tmp_path / "data"
    root.mkdir()
    write_conll(root / "ner_train.txt", ner_sentences(160, 1))
    write_conll(root / "ner_valid.txt", ner_sentences(40, 2))
    write_conll(root / "ner_test.txt", ner_sentences(40, 3))
    for split, seed, n in (("train", 4, 200), ("test", 5, 60)):
        with (root / f"sent_{split}.jsonl").open("w") as f:
            for text, label in sentiment_rows(n, seed):
                f.write(json.dumps({"sentence": text, "polarity": label}) + "\n")
        with (root / f"sent_{split}.csv").open("w") as f:
            f.write("text,label\n")
            for text, label in sentiment_rows(n, seed):
                f.write(f'"{text}",{label}\n')
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "toy_ner.yaml").write_text(
        "name: toy_ner\ntype: token_classification\n"
        "data:\n  format: conll\n  train: ner_train.txt\n  validation: ner_valid.txt\n  test: ner_test.txt\n"
        "  columns: {tokens: 0, tags: 3}\nmax_length: 32\n"
    )
    (specs / "toy_sent.yaml").write_text(
        "name: toy_sent\ntype: sequence_classification\n"
        "data:\n  format: jsonl\n  train: sent_train.jsonl\n  validation: {from_train: 0.2, seed: 1}\n"
        "  test: sent_test.jsonl\n  columns: {text: sentence, label: polarity}\nmax_length: 32\n"
    )
    (specs / "toy_sent_csv.yaml").write_text(
        "name: toy_sent_csv\ntype: sequence_classification\n"
        "data:\n  format: csv\n  train: sent_train.csv\n  validation: {from_train: 0.2, seed: 1}\n"
        "  test: sent_test.csv\nmax_length: 32\n"
    )
    return tmp_path


def write_experiment(tmp_path: Path, backbone: Path, tasks: list[str], adapters: dict | None = None,
                     **training: object) -> Path:
    """A toy experiment over ``tasks``; ``adapters``: its ``adapters:`` section, if any."""
    train = {"batch_size": 16, "lr": 3e-3, "steps": 120, "evaluations": 2, "log_every": 20, "warmup_ratio": 0.0, **training}
    config = {
        "name": "toy",
        "backbone": {"name": str(backbone)},
        "tasks": [str(tmp_path / "specs" / f"{t}.yaml") for t in tasks],
        "data": {"root": str(tmp_path / "data")},
        "training": train,
    }
    if adapters is not None:
        config["adapters"] = adapters
    import yaml

    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
def write_meta_experiment(tmp_path: Path, backbone: Path, **meta: object) -> Path:
    """An experiment over toy_ner and toy_sent with a LoRA adapter and a short ``meta:`` section."""
    import yaml

    config = write_experiment(tmp_path, backbone, ["toy_ner", "toy_sent"])
    raw = yaml.safe_load(config.read_text())
    raw["adapters"] = {"type": "lora", "options": {"rank": 4}}
    raw["meta"] = {"episodes": 8, "shots": 3, "query_shots": 3, "inner_steps": 2, "log_every": 2, **meta}
    config.write_text(yaml.safe_dump(raw))
    return config


