import numpy as np
import pytest
from transformers import AutoTokenizer

from nlp_mtl.config import SamplerConfig
from nlp_mtl.data.encoding import Ragged, collate
from nlp_mtl.data.sampler import LengthGroupedBatches, TaskSampler
from nlp_mtl.registry import TASK_TYPES


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


def test_labels_on_first_subtoken_only(tokenizer):
    token_type = TASK_TYPES.get("token_classification")
    rows = [{"tokens": ["alice", "zzq", "berlin"], "tags": ["B-PER", "O", "B-LOC"], "line": 1}]
    enc = token_type.encode(rows, tokenizer, ["O", "B-LOC", "B-PER"], max_length=32)
    ids, labels = enc.input_ids[0], enc.labels[0]
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    # 'zzq' splits into several sub-tokens; only its first carries a label.
    assert (labels != -100).sum() == 3
    assert [int(x) for x in labels[labels != -100]] == [2, 0, 1]
    assert enc.word_index[0].tolist() == [0, 1, 2]


def test_truncation_is_counted(tokenizer):
    seq_type = TASK_TYPES.get("sequence_classification")
    rows = [{"text": "the " * 40, "label": "a", "line": 1}, {"text": "the movie", "label": "a", "line": 2}]
    enc = seq_type.encode(rows, tokenizer, ["a"], max_length=16)
    assert enc.truncated == 1 and enc.lengths.max() == 16
    tok_type = TASK_TYPES.get("token_classification")
    enc = tok_type.encode([{"tokens": ["the"] * 40, "tags": ["O"] * 40, "line": 1}], tokenizer, ["O"], max_length=16)
    assert enc.truncated == 1


def test_collate_pads_dynamically():
    from nlp_mtl.data.encoding import EncodedSplit

    split = EncodedSplit(input_ids=Ragged.from_lists([[1, 2, 3], [4], [5, 6]]), labels=np.array([0, 1, 0]))
    batch = collate(split, [1, 2], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[4, 0], [5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].tolist() == [1, 0]


def _sampler(strategy, **kw):
    return TaskSampler(["a", "b", "c"], [100, 400, 1600], [1.0, 1.0, 1.0], SamplerConfig(strategy=strategy, **kw), 1000, seed=0)


def test_sampling_probabilities():
    assert _sampler("proportional").probabilities() == pytest.approx([100 / 2100, 400 / 2100, 1600 / 2100])
    assert _sampler("uniform").probabilities() == pytest.approx([1 / 3] * 3)
    assert _sampler("temperature", temperature=2.0).probabilities() == pytest.approx([10 / 70, 20 / 70, 40 / 70])
    annealed = _sampler("annealed", anneal_to=0.0)
    assert annealed.probabilities(0) == pytest.approx(_sampler("proportional").probabilities())
    assert annealed.probabilities(1000) == pytest.approx([1 / 3] * 3)
    weighted = TaskSampler(["a", "b"], [100, 100], [1.0, 3.0], SamplerConfig(), 10, 0)
    assert weighted.probabilities() == pytest.approx([0.25, 0.75])


def test_task_draws_are_deterministic_and_follow_probabilities():
    s = _sampler("proportional")
    draws = [s.task_at(i) for i in range(4000)]
    assert draws == [_sampler("proportional").task_at(i) for i in range(4000)]
    assert draws.count("c") / 4000 == pytest.approx(1600 / 2100, abs=0.03)


def test_length_grouped_batches_cover_each_pass_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=3200)
    grouped = LengthGroupedBatches(lengths, 32, seed=1)
    plain = LengthGroupedBatches(lengths, 32, seed=1, group_by_length=False)
    batches = grouped.batches_for_pass(0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(3200))
    assert grouped.batches_for_pass(1)[0].tolist() != batches[0].tolist()  # reshuffled each pass

    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    assert padded(batches) < 0.7 * padded(plain.batches_for_pass(0))


def test_shards_split_one_global_batch():
    lengths = np.arange(10)
    a = LengthGroupedBatches(lengths, 4, seed=0, num_shards=2)
    b = LengthGroupedBatches(lengths, 4, seed=0, num_shards=2)
    for _ in range(6):
        first, second = a.next_shard(0), b.next_shard(1)
        assert len(first) == len(second) and not set(first) & set(second)
