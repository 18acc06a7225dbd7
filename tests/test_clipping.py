"""Clipping folded into the fused AdamW step gives clip_grad_norm_'s update."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from nlp_mtl.training.clipping import GradientClipper, can_fold, global_grad_norm


def plain_accelerator():
    return SimpleNamespace(scaler=None, distributed_type=DistributedType.NO,
                           clip_grad_norm_=lambda params, max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm))


def model_and_grads(grad_size: float, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    grads = [torch.randn_like(p) * grad_size for p in model.parameters()]
    return model, grads


def step(model, grads, fused: bool, folded: bool, max_norm: float = 1.0, steps: int = 3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=fused)
    accelerator = plain_accelerator()
    clipper = GradientClipper(accelerator, model, optimizer, max_norm) if folded else None
    for i in range(steps):
        for p, g in zip(model.parameters(), grads):
            p.grad = g * (i + 1)  # a norm that changes from step to step, which Adam feels when clipped
        if clipper is not None:
            clipper.clip()
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if clipper is not None:
            clipper.release()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()], optimizer


def test_global_norm_matches_float64():
    _, grads = model_and_grads(0.3)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    truth = torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt()
    assert float(global_grad_norm(params)) == pytest.approx(float(truth), rel=1e-6)


@pytest.mark.parametrize("grad_size", [10.0, 1e-3])  # clipped, and below the limit
def test_folded_clip_equals_clip_grad_norm(grad_size):
    model, grads = model_and_grads(grad_size)
    reference, _ = step(model_and_grads(grad_size)[0], grads, fused=True, folded=False)
    folded, optimizer = step(model, grads, fused=True, folded=True)
    assert can_fold(plain_accelerator(), optimizer)
    for a, b in zip(reference, folded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert getattr(optimizer, "grad_scale", None) is None  # one step's scale only


def test_clipping_changes_the_update():
    """Guards the test above: clipped and unclipped updates differ on these gradients."""
    model, grads = model_and_grads(10.0)
    clipped, _ = step(model, grads, fused=True, folded=True, max_norm=1.0)
    plain, _ = step(model_and_grads(10.0)[0], grads, fused=True, folded=True, max_norm=1e6)
    assert any(not torch.allclose(a, b, rtol=1e-3) for a, b in zip(clipped, plain))


def test_non_fused_optimizer_falls_back_to_accelerate():
    model, grads = model_and_grads(10.0)
    optimizer = torch.optim.AdamW(model.parameters(), fused=False)
    assert not GradientClipper(plain_accelerator(), model, optimizer, 1.0).fold
    reference, _ = step(model_and_grads(10.0)[0], grads, fused=False, folded=False)
    folded, _ = step(model, grads, fused=False, folded=True)
    for a, b in zip(reference, folded):
        torch.testing.assert_close(a, b)


def test_a_loss_scaler_owns_grad_scale():
    model, _ = model_and_grads(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    accelerator = SimpleNamespace(scaler=object(), distributed_type=DistributedType.NO)
    assert not can_fold(accelerator, optimizer)


def test_non_finite_gradients_poison_the_step_as_clip_grad_norm_does():
    model, grads = model_and_grads(1.0)
    grads[1][0, 0] = float("nan")
    reference, _ = step(model_and_grads(1.0)[0], grads, fused=True, folded=False, steps=1)
    folded, _ = step(model, grads, fused=True, folded=True, steps=1)
    for a, b in zip(reference, folded):
        assert torch.isnan(a).any() == torch.isnan(b).any()
    assert any(torch.isnan(b).any() for b in folded)
