"""Tiny random encoders of several families, built locally (no download), saved as HF model folders.

``build_tiny_model_dir(family, path)`` writes config.json + model.safetensors + fast tokenizer
files (via save_pretrained) into ``path``, so the folder loads with ``backbone.name: <path>``,
``AutoModel.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``.

Tokenizers are built from the toy vocabulary of conftest, each of its family's kind:
WordPiece (BERT, DistilBERT, ELECTRA), byte-level BPE trained in memory (RoBERTa) and a
SentencePiece-style Unigram with the Metaspace pre-tokenizer (DeBERTa-v2). The synthetic task
words are single tokens in every vocabulary; other words split into several sub-tokens.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from .conftest import FILLER, NEGATIVE, PEOPLE, PLACES, POSITIVE, make_vocab, ner_sentences, sentiment_rows

FAMILIES = ("bert", "roberta", "distilbert", "deberta-v2", "electra")
# Families whose encoder has no segment embeddings: token_type_ids must never reach them.
WITHOUT_TOKEN_TYPES = ("roberta", "distilbert", "deberta-v2")

# Small enough that a few dozen training steps take a second or two on one CPU core.
HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 32, 2, 2, 64, 128
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def toy_words() -> list[str]:
    extra = ["what", "who", "where", "is", "?", ".", ",", "movie", "city"]
    return list(dict.fromkeys(PEOPLE + PLACES + FILLER + POSITIVE + NEGATIVE + extra))


def toy_corpus() -> list[str]:
    """Sentences in the style of the synthetic tasks, plus every toy word once mid-sentence."""
    rng = random.Random(0)
    words = toy_words()
    lines = [" ".join(tokens) for tokens, _ in ner_sentences(300, 101)]
    lines += [text for text, _ in sentiment_rows(300, 102)]
    lines += ["the " + " ".join(rng.sample(words, len(words))) for _ in range(20)]
    return lines


# ---- tokenizers ------------------------------------------------------------------------

def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _wordpiece(cls: Any, directory: Path) -> Any:
    vocab = make_vocab()
    tokenizer = cls(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    if len(tokenizer.get_vocab()) != len(vocab):  # transformers 4.x takes a vocab_file
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = cls(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    assert len(tokenizer.get_vocab()) == len(vocab)
    return tokenizer


def _roberta_tokenizer(directory: Path) -> Any:
    """Byte-level BPE trained in memory on the toy corpus; ids as in roberta-base (<s>=0, <pad>=1)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(toy_corpus(), vocab_size=420, min_frequency=1, special_tokens=specials,
                            show_progress=False)
    vocab = bpe.get_vocab()
    assert [vocab[t] for t in specials] == [0, 1, 2, 3, 4]
    scratch = directory / ".bpe"
    scratch.mkdir()
    try:
        vocab_file, merges_file = bpe.save_model(str(scratch))
        if _transformers_major() >= 5:
            merges = [tuple(line.split(" ")) for line in Path(merges_file).read_text(encoding="utf-8").splitlines()
                      if line and not line.startswith("#version")]
            tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges)
        else:
            tokenizer = RobertaTokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
    finally:
        shutil.rmtree(scratch)
    assert len(tokenizer.get_vocab()) == len(vocab)
    return tokenizer


def _unigram_vocab() -> list[tuple[str, float]]:
    """A SentencePiece-style vocabulary: '▁word' for the toy words, then pieces and letters.

    Lower scores for shorter pieces, so that known words stay whole and unknown words fall
    apart into letters (and '▁' + letter).
    """
    specials = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    pieces = [("▁" + w, -2.0) for w in toy_words()]
    pieces += [(p, -6.0) for p in ("s", "er", "ly", "ing", "ed")]
    pieces += [("▁", -9.0)] + [(c, -8.0) for c in LETTERS] + [("▁" + c, -8.5) for c in LETTERS]
    best: dict[str, float] = {}
    for piece, score in specials + pieces:  # first (best) score of a piece wins
        best.setdefault(piece, score)
    return list(best.items())


def _deberta_v2_tokenizer(directory: Path) -> Any:
    """DeBERTa-v2/v3 style: Unigram + Metaspace, no sentencepiece needed (tokenizers only)."""
    from transformers import DebertaV2TokenizerFast

    vocab = _unigram_vocab()
    if _transformers_major() >= 5:
        # The tokenizers-backed DebertaV2Tokenizer of transformers 5 takes (piece, score) pairs.
        tokenizer = DebertaV2TokenizerFast(vocab=vocab, do_lower_case=True)
        assert len(tokenizer.get_vocab()) == len(vocab)
        return tokenizer
    # transformers 4.x wants an spm.model (sentencepiece); a generic fast tokenizer, same pipeline.
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(Unigram(vocab, unk_id=1, byte_fallback=False))
    backend.normalizer = normalizers.Sequence([
        normalizers.Lowercase(), normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
        normalizers.Strip(left=False, right=True)])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]")


def build_tokenizer(family: str, directory: Path) -> Any:
    from transformers import BertTokenizerFast, DistilBertTokenizerFast, ElectraTokenizerFast

    if family == "bert":
        return _wordpiece(BertTokenizerFast, directory)
    if family == "distilbert":
        return _wordpiece(DistilBertTokenizerFast, directory)
    if family == "electra":
        return _wordpiece(ElectraTokenizerFast, directory)
    if family == "roberta":
        return _roberta_tokenizer(directory)
    if family == "deberta-v2":
        return _deberta_v2_tokenizer(directory)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


# ---- configs and weights ---------------------------------------------------------------

def build_config(family: str, vocab_size: int, pad_token_id: int, dropout: float = 0.1) -> Any:
    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id)
    bert_like = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=INTERMEDIATE, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout, **common)
    if family == "bert":
        from transformers import BertConfig

        return BertConfig(max_position_embeddings=POSITIONS, **bert_like)
    if family == "roberta":
        from transformers import RobertaConfig

        # Positions start after padding_idx, as in roberta-base (514 positions for 512 tokens).
        return RobertaConfig(max_position_embeddings=POSITIONS + pad_token_id + 1, type_vocab_size=1,
                             bos_token_id=0, eos_token_id=2, **bert_like)
    if family == "distilbert":
        from transformers import DistilBertConfig

        return DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE,
                                max_position_embeddings=POSITIONS, dropout=dropout, attention_dropout=dropout,
                                **common)
    if family == "deberta-v2":
        from transformers import DebertaV2Config

        # As deberta-v3: no segment embeddings, no absolute positions, disentangled relative attention.
        return DebertaV2Config(max_position_embeddings=POSITIONS, type_vocab_size=0, relative_attention=True,
                               position_buckets=16, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                               position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
                               **bert_like)
    if family == "electra":
        from transformers import ElectraConfig

        # A smaller embedding than hidden size, as in the ELECTRA discriminators (projected up).
        return ElectraConfig(embedding_size=HIDDEN // 2, max_position_embeddings=POSITIONS, **bert_like)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_tiny_model_dir(family: str, path: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    """A tiny random ``family`` encoder with its fast tokenizer, saved into ``path``; returns ``path``."""
    import torch
    from transformers import AutoModel

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family, path)
    assert tokenizer.is_fast and tokenizer.pad_token_id is not None
    config = build_config(family, len(tokenizer.get_vocab()), tokenizer.pad_token_id, dropout)
    torch.manual_seed(seed)
    kwargs = {"add_pooling_layer": False} if family in ("bert", "roberta") else {}
    model = AutoModel.from_config(config, **kwargs)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
