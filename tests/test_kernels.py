"""The fast CPU dropout: the same distribution and gradient as nn.functional.dropout, and a
drop-in for the encoder's dropout layers (attention included) that leaves weights alone."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from nlp_mtl.kernels import FastDropout, fast_dropout, use_fast_cpu_dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_scale_and_gradient(dtype: torch.dtype, p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 1001, dtype=dtype, requires_grad=True)  # an odd size: the last word is partial
    out = fast_dropout(x, p)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.003  # 400k draws: sd ~ 0.0008
    assert torch.allclose(out[kept].float(), torch.full_like(out[kept].float(), 1 / (1 - p)), rtol=1e-2)
    out.backward(torch.full_like(out, 2.0))
    # The gradient passes exactly where the value did, with the same scale.
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept].float(), torch.full_like(x.grad[kept].float(), 2 / (1 - p)), rtol=1e-2)


def test_masks_are_independent_across_calls_and_positions() -> None:
    torch.manual_seed(1)
    x = torch.ones(200_000)
    a, b = fast_dropout(x, 0.5) != 0, fast_dropout(x, 0.5) != 0
    assert not torch.equal(a, b)
    both = (a & b).float().mean().item()
    assert abs(both - 0.25) < 0.005  # independent draws
    # Neighbours come from the same 64-bit word four at a time: they must not be correlated.
    pairs = (a[:-1] & a[1:]).float().mean().item()
    assert abs(pairs - 0.25) < 0.005


def test_eval_mode_and_zero_p_are_identity() -> None:
    x = torch.randn(3, 4)
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    layer = FastDropout(0.3).eval()
    assert layer(x) is x


def test_swap_keeps_weights_and_outputs_in_eval(tiny_bert) -> None:
    encoder = BertModel.from_pretrained(tiny_bert)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    encoder.eval()
    before = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    swapped = use_fast_cpu_dropout(encoder)
    assert swapped >= 1 + 2 * encoder.config.num_hidden_layers  # embeddings + two per layer
    assert not any(type(m) is torch.nn.Dropout for m in encoder.modules())
    assert encoder.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items())
    assert torch.allclose(encoder(input_ids=ids, attention_mask=mask).last_hidden_state, before, atol=1e-6)
    assert "attn_implementation" not in encoder.config.to_json_string()


def test_attention_path_matches_sdpa_without_dropout(tiny_bert) -> None:
    """In training, with attention dropout set to 0 inside our path, the unfused attention gives
    SDPA's numbers: the mask handling (padding) is right."""
    from nlp_mtl import kernels

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    pad = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])[:, None, None, :].expand(2, 1, 6, 6)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pad).transpose(1, 2)
    p_before = kernels.fast_dropout
    try:
        kernels.fast_dropout = lambda x, p, training=True: x  # the dropout aside, same arithmetic
        got, _ = kernels._attention_with_fast_dropout(torch.nn.Module(), q, k, v, pad, dropout=0.1)
    finally:
        kernels.fast_dropout = p_before
    assert torch.allclose(got, expected, atol=1e-5)


def test_training_step_uses_no_bernoulli(tiny_bert) -> None:
    """The point of the swap: a CPU training step of the encoder draws no bernoulli_ at all."""
    from torch.profiler import ProfilerActivity, profile

    encoder = BertModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    use_fast_cpu_dropout(encoder)
    encoder.train()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0]] * 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state.sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert "aten::bernoulli_" not in names
    assert "aten::random_" in names


# ---- the reused word-embedding gradient ---------------------------------------------------

def _grads_after_two_micro_steps(encoder, batches) -> dict[str, torch.Tensor]:
    encoder.zero_grad(set_to_none=True)
    for ids in batches:
        encoder(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state.pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


def test_reused_embedding_grad_gives_the_dense_gradient(tiny_bert) -> None:
    """Same weights, same batches (a repeated id, padding, two micro-steps accumulated): every
    gradient as with nn.Embedding, the word embeddings' a plain dense tensor."""
    from nlp_mtl.kernels import ReusedGradEmbedding, use_reused_embedding_grad

    torch.manual_seed(0)
    dense = BertModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reused = BertModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    weight = reused.get_input_embeddings().weight
    assert use_reused_embedding_grad(reused)
    assert isinstance(reused.get_input_embeddings(), ReusedGradEmbedding)
    assert reused.get_input_embeddings().weight is weight  # the same Parameter: optimizers keep it
    assert reused.state_dict().keys() == dense.state_dict().keys()
    batches = [torch.tensor([[2, 5, 5, 7, 3, 0], [2, 8, 3, 0, 0, 0]]), torch.tensor([[2, 5, 9, 3]])]
    expected, got = _grads_after_two_micro_steps(dense, batches), _grads_after_two_micro_steps(reused, batches)
    assert expected.keys() == got.keys()
    for name in expected:
        assert not got[name].is_sparse, name
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-5), name
    word = "embeddings.word_embeddings.weight"
    assert got[word][0].abs().sum() == 0 and got[word][5].abs().sum() > 0  # padding row untouched, id 5 seen


def test_reused_embedding_grad_keeps_one_matrix_and_rezeroes_it(tiny_bert) -> None:
    from nlp_mtl.kernels import use_reused_embedding_grad

    encoder = BertModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    use_reused_embedding_grad(encoder)
    weight = encoder.get_input_embeddings().weight
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    seen = []
    for ids in (torch.tensor([[2, 5, 6, 3]]), torch.tensor([[2, 8, 3]])):
        encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.sum().backward()
        seen.append((weight.grad.data_ptr(), set(weight.grad.abs().sum(1).nonzero().flatten().tolist())))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert weight.grad is None
    assert seen[0][0] == seen[1][0]  # the same memory both steps
    assert seen[1][1] == {2, 8, 3}  # zeroed in between: the first step's rows 5 and 6 are gone
    with torch.no_grad():  # no gradient wanted: plain lookup, nothing installed
        encoder(input_ids=torch.tensor([[2, 5, 3]]))
    assert weight.grad is None


def test_reused_embedding_grad_waits_for_backward(tiny_bert) -> None:
    """A forward with gradients on but no backward (inference outside no_grad) leaves the word
    embeddings without a gradient, as nn.Embedding does, so the optimizer skips them."""
    from nlp_mtl.kernels import use_reused_embedding_grad

    encoder = BertModel.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    use_reused_embedding_grad(encoder)
    weight = encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    encoder(input_ids=torch.tensor([[2, 5, 3]]))
    assert weight.grad is None
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=0.5)
    optimizer.step()
    assert torch.equal(weight.detach(), before)  # no zero gradient decayed it
    # Squared: a plain sum of the final LayerNorm's outputs does not depend on the input (with
    # its initial unit scale), so its embedding gradient is rounding noise, exactly 0 on some CPUs.
    encoder(input_ids=torch.tensor([[2, 6, 3]])).last_hidden_state.pow(2).sum().backward()
    assert weight.grad is not None and not weight.grad.is_sparse
    assert set(weight.grad.abs().sum(1).nonzero().flatten().tolist()) == {2, 6, 3}
