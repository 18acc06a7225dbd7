"""BERT, RoBERTa, DistilBERT, DeBERTa-v2 and ELECTRA through the normal path, on tiny random configs.

Each family's encoder and fast tokenizer are built locally (tests/tiny_encoders.py) and given to
an experiment as ``backbone.name: <dir>``. Per family: both toy tasks train end to end through
the CLI and learn; labels sit on the first sub-token of each word; token_type_ids reach only
encoders with segment embeddings; predictions on raw text survive save -> from_pretrained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nlp_mtl.backbone import load_encoder, load_tokenizer
from nlp_mtl.cli import main
from nlp_mtl.data.encoding import collate
from nlp_mtl.inference import Predictor
from nlp_mtl.model import MultiTaskModel, TaskHeadInfo
from nlp_mtl.registry import TASK_TYPES

from .conftest import make_data_dir, write_experiment
from .tiny_encoders import FAMILIES, WITHOUT_TOKEN_TYPES, build_tiny_model_dir

TRAIN_STEPS = 60  # both tasks jointly: ~30 steps each, a few seconds per family


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A hidden-32 model is all per-op overhead: two intra-op threads on two shared cores make a
    # step 10-100x slower, never faster. Restored afterwards for the other test modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, build_tiny_model_dir(name, tmp_path_factory.mktemp(f"tiny-{name}"))


@pytest.fixture(scope="module")
def trained(family: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One CLI training run per family on toy NER + toy sentence classification; its run dir."""
    name, backbone = family
    root = make_data_dir(tmp_path_factory.mktemp(f"data-{name}"))
    config = write_experiment(root, backbone, ["toy_ner", "toy_sent"], steps=TRAIN_STEPS, evaluations=1,
                              log_every=10)
    run = root / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    return name, run


# ---- 1. both task kinds train end to end -----------------------------------------------

def test_token_and_sequence_tasks_train_and_learn(trained: tuple[str, Path]) -> None:
    name, run = trained
    # The run really used this family's encoder (not some default backbone).
    assert json.loads((run / "model" / "config.json").read_text())["model_type"] == name
    assert (run / "FINISHED").is_file()
    for task in ("toy_ner", "toy_sent"):
        for split in ("validation", "test"):
            assert (run / "reports" / f"{task}.{split}.txt").is_file()
            assert (run / "reports" / f"{task}.{split}.json").is_file()
    summary = (run / "reports" / "summary.test.txt").read_text()
    assert "toy_ner" in summary and "toy_sent" in summary

    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == TRAIN_STEPS // 10
    # Mean loss over the first 10 steps vs the last 10: both tasks' losses fall clearly.
    assert losses[-1]["toy_ner"] < 0.5 * losses[0]["toy_ner"], losses
    assert losses[-1]["toy_sent"] < 0.8 * losses[0]["toy_sent"], losses

    ner = json.loads((run / "reports" / "toy_ner.test.json").read_text())["metrics"]
    sent = json.loads((run / "reports" / "toy_sent.test.json").read_text())["metrics"]
    # An untrained model scores f1 ~0 (all 'O') and accuracy ~0.5; seeded runs reach 0.73-0.83 / 0.97-1.0.
    assert ner["f1"] > 0.6, (name, ner)
    assert sent["accuracy"] > 0.9, (name, sent)


# ---- 2. sub-word alignment -------------------------------------------------------------

ROWS = [
    {"tokens": ["alice", "visited", "zanzibarians", "rome", "today"], "tags": ["B-PER", "O", "B-LOC", "I-LOC", "O"]},
    {"tokens": ["quixotically", "bob", "met", "xyzzy", "."], "tags": ["O", "B-PER", "O", "B-PER", "O"]},
    {"tokens": ["zanzibarians", "and", "alices"], "tags": ["B-LOC", "O", "B-PER"]},
]
LABELS = ["O", "B-PER", "B-LOC", "I-LOC"]


def test_label_sits_on_first_subtoken_of_each_word(family: tuple[str, Path]) -> None:
    name, path = family
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.is_fast
    encoded = TASK_TYPES.get("token_classification").encode(ROWS, tokenizer, LABELS, max_length=64)
    label2id = {label: i for i, label in enumerate(LABELS)}
    split_words = 0
    for i, row in enumerate(ROWS):
        # Each word on its own, as the tokenizer sees a pre-split word: the expected sub-tokens.
        pieces = [tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]
                  for word in row["tokens"]]
        assert all(pieces), (name, row["tokens"], pieces)
        split_words += sum(len(p) > 1 for p in pieces)
        # A word tokenises the same in the sentence as alone (at its start or mid-sentence).
        flat = [t for p in pieces for t in p]
        assert encoded.input_ids[i].tolist() == [tokenizer.cls_token_id, *flat, tokenizer.sep_token_id]
        expected = [-100] * (len(flat) + 2)
        position = 1
        for word, tag in zip(pieces, row["tags"]):
            expected[position] = label2id[tag]
            position += len(word)
        labels = encoded.labels[i].tolist()
        assert labels == expected, (name, tokenizer.convert_ids_to_tokens(encoded.input_ids[i].tolist()), labels)
        # Exactly one scored position per word, in word order.
        assert sum(label != -100 for label in labels) == len(row["tokens"])
        assert encoded.word_index[i].tolist() == list(range(len(row["tokens"])))
    assert split_words >= 3, f"{name}: no word split into several sub-tokens; the check would be vacuous"


def test_roberta_pre_split_words_get_a_prefix_space(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_model_dir("roberta", tmp_path / "roberta")
    tokenizer = load_tokenizer(str(path))

    def ids(words: list[str]) -> list[int]:
        return tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]

    first, middle = ids(["alice", "met", "bob"]), ids(["bob", "met", "alice"])
    assert first[0] == middle[-1] and tokenizer.convert_ids_to_tokens(first[0]) == "Ġalice"
    # ... and as in raw text, where training and prediction of sequence tasks read it.
    assert tokenizer("bob met alice", add_special_tokens=False)["input_ids"] == middle
    # Without add_prefix_space (a plain AutoTokenizer on this folder) the first word differs:
    # the check above is not vacuous, and load_tokenizer's add_prefix_space is what fixes it.
    plain = AutoTokenizer.from_pretrained(str(path))
    assert plain(["alice", "met", "bob"], is_split_into_words=True,
                 add_special_tokens=False)["input_ids"][0] != first[0]
    # It survives save_pretrained next to the encoder's config (as MultiTaskModel.save_pretrained
    # writes them) and reloading.
    tokenizer.save_pretrained(tmp_path / "saved")
    shutil.copy(path / "config.json", tmp_path / "saved" / "config.json")
    assert load_tokenizer(str(tmp_path / "saved"))(["alice", "met", "bob"], is_split_into_words=True,
                                                      add_special_tokens=False)["input_ids"] == first


# ---- 3. token_type_ids only where there are segment embeddings --------------------------

def test_token_type_ids_reach_only_encoders_with_segment_embeddings(family: tuple[str, Path]) -> None:
    name, path = family
    tokenizer = load_tokenizer(str(path))
    tasks = [TaskHeadInfo("pair", "sequence_classification", "sequence_classification", ["no", "yes"], pair=True),
             TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER"])]
    model = MultiTaskModel(load_encoder(str(path)), tasks, tokenizer).eval()
    has_segments = name not in WITHOUT_TOKEN_TYPES
    assert model._uses_token_types == has_segments
    seen: list[torch.Tensor | None] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        assert args == (), "the encoder is called with keyword arguments only"
        seen.append(kwargs.get("token_type_ids"))

    model.encoder.register_forward_pre_hook(record, with_kwargs=True)

    # (a) The training / evaluation path: pair rows encoded by the task type, padded by collate.
    rows = [{"text": "alice met bob", "text_pair": "bob went to oslo", "label": "yes"},
            {"text": "a great movie", "text_pair": "awful", "label": "no"}]
    split = TASK_TYPES.get("sequence_classification").encode(rows, tokenizer, ["no", "yes"], max_length=32)
    batch = collate(split, [0, 1], tokenizer.pad_token_id)
    with torch.no_grad():
        out = model("pair", **batch)
    assert out["logits"].shape == (2, 2) and torch.isfinite(out["loss"])
    if name == "deberta-v2":
        assert "token_type_ids" in batch  # its tokenizer makes them: dropping them is what is tested
    # (b) The Predictor's sentence-pair pass.
    Predictor(model).predict([{"text": "alice met bob", "text_pair": "bob went to oslo"}])
    # (c) Given explicitly, with a second segment.
    ids = batch["input_ids"]
    with torch.no_grad():
        model("ner", ids, batch["attention_mask"], token_type_ids=torch.ones_like(ids))

    # The Predictor's single-text pass never sends token_type_ids: 4 calls, that one being None.
    assert len(seen) == 4
    pair_calls = [seen[0], seen[2], seen[3]]
    if has_segments:
        assert all(t is not None for t in pair_calls), name
        assert int(seen[0].max()) == 1 and int(seen[2].max()) == 1  # the second segment arrives
    else:
        assert all(t is None for t in seen), f"{name}: token_type_ids reached an encoder without segment embeddings"


# ---- 4. save -> from_pretrained -> same predictions -------------------------------------

TEXTS = ["alice went to oslo", "bob met zanzibarians in Rome today, a good movie.", "the awful movie",
         "Quixotically, carol visited vienna berlin!", ""]


def test_predictions_survive_save_and_load(trained: tuple[str, Path], tmp_path: Path) -> None:
    name, run = trained
    model = MultiTaskModel.from_pretrained(run)
    before = Predictor(model).predict(TEXTS)
    model.save_pretrained(tmp_path / "saved")
    loaded = MultiTaskModel.from_pretrained(tmp_path / "saved")
    assert type(loaded.encoder) is type(model.encoder) and type(loaded.tokenizer) is type(model.tokenizer)
    assert loaded.tokenizer.is_fast
    after = Predictor(loaded).predict(TEXTS)
    assert after == before, name

    # Bit for bit, not only after rounding: every head on the same encoding.
    enc = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits_before = model.encode_all(enc["input_ids"], enc["attention_mask"])
        logits_after = loaded.encode_all(enc["input_ids"], enc["attention_mask"])
    for task in logits_before:
        assert torch.equal(logits_before[task], logits_after[task]), (name, task)

    # The predictions are the trained model's, not noise: clear cases of both toy tasks.
    assert ("PER", "alice") in [(e["type"], e["text"]) for e in before[0]["tasks"]["toy_ner"]["entities"]]
    assert before[0]["tasks"]["toy_ner"]["words"] == ["alice", "went", "to", "oslo"]
    assert before[2]["tasks"]["toy_sent"]["label"] == "neg"
    assert before[4]["tasks"]["toy_ner"] == {"entities": [], "tags": [], "words": []}


def test_sequence_predictions_match_the_encoding_used_in_training(trained: tuple[str, Path]) -> None:
    """The Predictor gives a sequence task the same input as training and evaluation do (the
    raw text), also where byte-level BPE or SentencePiece encode "movie," unlike "movie ,"."""
    name, run = trained
    model = MultiTaskModel.from_pretrained(run)
    texts = ["a good movie, really.", "the awful movie!", "alice went to oslo"]
    predicted = Predictor(model).predict(texts)
    rows = [{"text": t, "label": "pos"} for t in texts]
    split = TASK_TYPES.get("sequence_classification").encode(rows, model.tokenizer, ["neg", "pos"], max_length=32)
    labels = model.tasks["toy_sent"].labels
    for i, result in enumerate(predicted):
        batch = collate(split, [i], model.tokenizer.pad_token_id)
        with torch.inference_mode():
            probs = model("toy_sent", batch["input_ids"], batch["attention_mask"])["logits"].softmax(-1)[0]
        p, label = probs.max(-1)
        assert result["tasks"]["toy_sent"] == {"label": labels[int(label)], "probability": round(float(p), 4)}, \
            (name, texts[i])
