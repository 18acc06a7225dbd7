"""The contrastive stage of few-shot sentence tasks: SetFit's pair sampling, the cosine loss,
and adapt running it (sentence tasks only) before the head is fitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nlp_mtl.backbone import load_encoder, load_tokenizer
from nlp_mtl.config import load_task_spec
from nlp_mtl.fewshot.adapt import AdaptSettings, few_shot_adapt, load_new_task
from nlp_mtl.fewshot.contrastive import CosinePairLoss, PairBatches
from nlp_mtl.model import MultiTaskModel


def _task(data_dir: Path, tiny_bert: Path, name: str):
    return load_new_task(load_task_spec(data_dir / "specs" / f"{name}.yaml"), data_dir / "data",
                         load_tokenizer(str(tiny_bert)))


def test_pairs_follow_setfits_sampling(data_dir, tiny_bert):
    task = _task(data_dir, tiny_bert, "toy_sent")
    labels = np.asarray(task.encoded["train"].labels)
    indices = [int(i) for c in (0, 1) for i in np.flatnonzero(labels == c)[:4]]
    source = PairBatches(task, indices, iterations=3, batch_size=5, seed=0, pad_id=0, device=torch.device("cpu"))
    pairs = [p for chunk in source.chunks for p in chunk]
    assert len(pairs) == 3 * 2 * len(indices)  # per round, one positive and one negative per example
    for a, b, target in pairs:
        assert a in indices and b in indices
        assert (labels[a] == labels[b]) == (target == 1.0)
        assert target == 0.0 or a != b
    batch = source.batch_at(0)
    assert batch.inputs["input_ids"].shape[0] == 2 * len(source.chunks[0]) == batch.examples
    assert "labels" not in batch.inputs and batch.inputs["target"].shape == (len(source.chunks[0]),)


def test_cosine_loss_pulls_same_class_pairs_together(data_dir, tiny_bert):
    task = _task(data_dir, tiny_bert, "toy_sent")
    model = _bare_model(tiny_bert)
    settings = AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=0)
    few_shot_adapt(model, task, settings)  # leaves the task's fresh adapter and head in the model
    labels = np.asarray(task.encoded["train"].labels)
    indices = [int(i) for c in (0, 1) for i in np.flatnonzero(labels == c)[:6]]
    source = PairBatches(task, indices, iterations=4, batch_size=8, seed=0, pad_id=0, device=torch.device("cpu"))
    import contextlib

    loss = CosinePairLoss(model, task.name, contextlib.nullcontext)
    params = list(model.adapters[task.name].parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    first = float(loss(source.batch_at(0))[0])
    for step in range(len(source)):
        value, _ = loss(source.batch_at(step))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert float(loss(source.batch_at(0))[0]) < first


def _bare_model(tiny_bert: Path) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(load_encoder(str(tiny_bert)), [], load_tokenizer(str(tiny_bert)))


def test_adapt_runs_the_pair_stage_for_sentence_tasks_only(data_dir, tiny_bert):
    sent = few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_sent"),
                          AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=2))
    without = few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_sent"),
                             AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=0))
    # 8 examples x 2 rounds x 2 pairs = 32 pairs = 2 batches of 16, then the fine-tuning steps.
    assert sent.seeds[0].steps == without.seeds[0].steps + 2
    ner = few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_ner"),
                         AdaptSettings(shots=2, seeds=(1,), init="fresh", pair_rounds=2))
    ner_without = few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_ner"),
                                 AdaptSettings(shots=2, seeds=(1,), init="fresh", pair_rounds=0))
    assert ner.seeds[0].steps == ner_without.seeds[0].steps


def test_pair_rounds_must_not_be_negative(capsys):
    from nlp_mtl.errors import UserError

    with pytest.raises(UserError, match="--pair-rounds"):
        AdaptSettings(pair_rounds=-1)


def test_pair_head_only_freezes_the_adapter_after_the_pairs(data_dir, tiny_bert, monkeypatch):
    from nlp_mtl.fewshot import adapt

    snapshots: list[dict[str, torch.Tensor]] = []
    original = adapt._run_engine

    def recording(model, *args, **kwargs):
        steps = original(model, *args, **kwargs)
        snapshots.append({k: v.detach().clone() for k, v in model.adapters["toy_sent"].state_dict().items()})
        return steps

    monkeypatch.setattr(adapt, "_run_engine", recording)
    for head_only in (True, False):
        snapshots.clear()
        few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_sent"),
                       AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=2, pair_head_only=head_only))
        after_pairs, after_fine_tuning = snapshots
        same = all(torch.equal(after_pairs[k], after_fine_tuning[k]) for k in after_pairs)
        assert same == head_only


def test_linear_pair_schedule_warms_up_then_decays_to_zero():
    from nlp_mtl.fewshot.adapt import linear_warmup_decay

    factor = [linear_warmup_decay(20)(step) for step in range(20)]
    assert factor[:2] == [0.5, 1.0]  # a tenth of 20 steps: 2 of warm-up
    assert all(a > b for a, b in zip(factor[1:], factor[2:]))
    assert 0 < factor[-1] < 0.1


def test_pair_schedule_reaches_the_pair_stage_only(data_dir, tiny_bert, monkeypatch):
    from nlp_mtl.errors import UserError
    from nlp_mtl.fewshot import adapt

    with pytest.raises(UserError, match="--pair-schedule: expected one of constant, linear"):
        AdaptSettings(pair_schedule="cosine")
    rates: list[list[float]] = []
    original = torch.optim.lr_scheduler.LambdaLR

    class Recording(original):
        def step(self, *args, **kwargs):
            super().step(*args, **kwargs)
            rates[-1].append(self.optimizer.param_groups[0]["lr"])

    def record(optimizer, factor):
        rates.append([])
        return Recording(optimizer, factor)

    monkeypatch.setattr(adapt.torch.optim.lr_scheduler, "LambdaLR", record)
    few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_sent"),
                   AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=5, pair_schedule="linear"))
    pairs, fine_tune = rates  # 8 examples x 5 rounds x 2 pairs = 80 pairs = 5 steps, then the fine-tuning
    # The rates of the five pair steps (a tenth of 5 rounds up to one warm-up step, which
    # already reaches the full rate), then the one after the last.
    assert pairs == pytest.approx([1e-3, 8e-4, 6e-4, 4e-4, 2e-4, 0.0])
    assert set(fine_tune) == {1e-3}


def test_in_batch_loss_scores_every_pair_half_positives_half_negatives():
    import contextlib
    from types import SimpleNamespace

    from nlp_mtl.fewshot.contrastive import InBatchPairLoss
    from nlp_mtl.training.engine import Batch

    class Identity:  # the "encoder" returns its input ids as the pooled features
        tasks = {"t": SimpleNamespace(adapter=None)}
        heads = {"t": SimpleNamespace(features=lambda hidden, mask: hidden)}

        def encode_through(self, adapter, ids, mask, token_types):
            return ids

    def loss(features, labels):
        inputs = {"input_ids": torch.tensor(features), "attention_mask": None, "labels": torch.tensor(labels)}
        return float(InBatchPairLoss(Identity(), "t", contextlib.nullcontext)(Batch("t", inputs, len(labels), 0))[0])

    # Classes on orthogonal axes: every same-class pair at cosine 1, every other pair at 0.
    assert loss([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]], [0, 0, 1, 1]) == 0.0
    # Swapped: same-class pairs at 0 (error 1 each), other pairs half at 1 and half at 0 (mean 0.5).
    assert loss([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], [0, 0, 1, 1]) == 0.75
    # Three sentences of one class: no negative pair, the positives alone.
    assert loss([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0, 0, 0]) == pytest.approx(2 / 3)
    # One sentence: no pair, a zero loss.
    assert loss([[1.0, 0.0]], [0]) == 0.0


def test_in_batch_sampling_takes_setfits_steps_on_labelled_support_batches(data_dir, tiny_bert, monkeypatch):
    from nlp_mtl.errors import UserError
    from nlp_mtl.fewshot import adapt
    from nlp_mtl.fewshot.contrastive import InBatchPairLoss

    with pytest.raises(UserError, match="--pair-sampling: expected one of setfit, in_batch"):
        AdaptSettings(pair_sampling="all")
    seen: list[tuple[str, str, int, int]] = []  # loss, batch source, steps, sentences in the first batch
    original = adapt._run_engine

    def recording(model, groups, source, loss, steps, *args, **kwargs):
        seen.append((type(loss(lambda: None)).__name__, type(source).__name__, steps,
                     source.batch_at(0).inputs["input_ids"].shape[0]))
        return original(model, groups, source, loss, steps, *args, **kwargs)

    monkeypatch.setattr(adapt, "_run_engine", recording)
    # Batches of 2 pairs, so that the 8 support sentences are more than an in-batch batch takes.
    setfit = few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_sent"),
                            AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=2, batch_size=2))
    pairs_stage = seen[0]
    seen.clear()
    in_batch = few_shot_adapt(_bare_model(tiny_bert), _task(data_dir, tiny_bert, "toy_sent"),
                              AdaptSettings(shots=4, seeds=(1,), init="fresh", pair_rounds=2, batch_size=2,
                                            pair_sampling="in_batch"))
    # 8 examples x 2 rounds x 2 pairs = 32 pairs: 16 steps of 2 pairs (4 sentences); in-batch, the
    # same 16 steps, each on 4 support sentences and their 6 pairs.
    assert pairs_stage == ("CosinePairLoss", "PairBatches", 16, 4)
    assert seen[0] == (InBatchPairLoss.__name__, "SupportBatches", 16, 4)
    assert in_batch.seeds[0].steps == setfit.seeds[0].steps
