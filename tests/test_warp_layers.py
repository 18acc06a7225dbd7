"""Warp layers (meta.warp_layers): learnt in the outer loop only, saved with the group, frozen by adapt."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from .conftest import write_meta_experiment
from .test_fewshot import _meta_setup
from .test_update_rule import _episode


def _warp_state(group) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in group.warps.state_dict().items()}


def test_the_inner_steps_leave_warp_layers_alone_and_the_query_loss_trains_them(tiny_bert, data_dir):
    from nlp_mtl.fewshot.meta import META_GROUP, EpisodeModel, run_episode
    from nlp_mtl.model.heads import HEADS

    model, tasks, mc = _meta_setup(tiny_bert, data_dir, "fomaml")
    model.add_warp_layers(META_GROUP, reduction_factor=4)
    group = model.adapters[META_GROUP]
    assert len(group.warps) == model.encoder.config.num_hidden_layers
    support, query, episode = _episode(tasks)
    model.eval()
    torch.manual_seed(0)
    head = HEADS.get("sequence_classification").build(32, len(episode.labels), {"dropout": 0.0}, "h")
    with torch.no_grad():  # identity at the start: the bare group's output, to the bit
        plain = model.encode_through(META_GROUP, support["input_ids"], support["attention_mask"])
        warps, group.warps = group.warps, None
        assert torch.equal(plain, model.encode_through(META_GROUP, support["input_ids"], support["attention_mask"]))
        group.warps = warps
    before = _warp_state(group)
    init = dict(group.deltas.named_parameters(prefix=f"model.adapters.{META_GROUP}.deltas"))
    warp_params = dict(group.warps.named_parameters(prefix=f"model.adapters.{META_GROUP}.warps"))
    result = run_episode(EpisodeModel(model, head, META_GROUP), init, support, query, len(episode.labels), mc,
                         warps=warp_params)
    after = _warp_state(group)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the inner loop did not touch them
    ups = [n for n in warp_params if n.endswith("up.weight")]
    assert set(warp_params) <= set(result.grads)
    # The up projections start at zero, so the query loss reaches them first.
    assert all(float(result.grads[n].abs().sum()) > 0 for n in ups)


def test_meta_training_learns_warp_layers_saves_them_and_adapt_keeps_them_frozen(tiny_bert, data_dir):
    from nlp_mtl.fewshot.meta import META_GROUP, meta_train_loop
    from nlp_mtl.model import MultiTaskModel

    model, tasks, mc = _meta_setup(tiny_bert, data_dir, "fomaml")
    mc = replace(mc, warp_layers=True, warp_reduction_factor=8, episodes=12)
    meta_train_loop(model, tasks, mc, seed=0, quiet=True)
    group = model.adapters[META_GROUP]
    learnt = _warp_state(group)
    assert any(float(v.abs().sum()) > 0 for k, v in learnt.items() if k.endswith("up.weight"))
    assert group.warps[next(iter(group.warps))].down.out_features == 32 // 8

    run = data_dir / "meta_warp"
    model.save_pretrained(run / "model")
    loaded = MultiTaskModel.from_pretrained(run)
    assert all(torch.equal(learnt[k], v) for k, v in _warp_state(loaded.adapters[META_GROUP]).items())

    from nlp_mtl.config import load_task_spec
    from nlp_mtl.fewshot.adapt import AdaptSettings, few_shot_adapt, load_new_task

    task = load_new_task(load_task_spec(data_dir / "specs" / "toy_sent.yaml"), data_dir / "data", loaded.tokenizer)
    summary = few_shot_adapt(loaded, task, AdaptSettings(shots=4, seeds=(1,), init=META_GROUP))
    assert summary.seeds[0].steps > 0
    adapted = loaded.adapters[task.name]  # the last seed's group stays in the model
    # It kept the meta-learnt warp layers exactly, frozen, while its deltas moved from the scaled start.
    assert all(torch.equal(learnt[k], v) for k, v in _warp_state(adapted).items())
    assert not any(p.requires_grad for p in adapted.warp_parameters())
    start = {k: 0.5 * v for k, v in loaded.adapters[META_GROUP].deltas.state_dict().items() if k.endswith("lora_B")}
    assert any(not torch.allclose(start[k], v) for k, v in adapted.deltas.state_dict().items() if k in start)
    # The warp layers are part of the adapted model's forward pass.
    batch = {k: torch.as_tensor(v) for k, v in _episode(tasks)[0].items() if k != "labels"}
    loaded.eval()
    with torch.no_grad():
        with_warps = loaded.encode_through(task.name, batch["input_ids"], batch["attention_mask"])
        adapted.warps, kept = None, adapted.warps
        without = loaded.encode_through(task.name, batch["input_ids"], batch["attention_mask"])
        adapted.warps = kept
    assert not torch.allclose(with_warps, without)


def test_warp_layers_config_errors_and_merge_refusal(tiny_bert, data_dir, capsys):
    from nlp_mtl.cli import main
    from nlp_mtl.config import MetaConfig
    from nlp_mtl.errors import ConfigError
    from nlp_mtl.fewshot.meta import META_GROUP
    from nlp_mtl.model.adapters import merge_into_encoder
    from nlp_mtl.schema import from_mapping

    with pytest.raises(ConfigError, match=r"meta\.warp_layers: warp layers learn from the query loss"):
        from_mapping(MetaConfig, {"warp_layers": True, "algorithm": "reptile"}, "meta")
    with pytest.raises(ConfigError, match=r"meta\.warp_reduction_factor"):
        from_mapping(MetaConfig, {"warp_reduction_factor": 0}, "meta")
    model, _, _ = _meta_setup(tiny_bert, data_dir, "fomaml")
    model.add_warp_layers(META_GROUP)
    with pytest.raises(ConfigError, match="warp layers"):
        merge_into_encoder(model.encoder, model.adapters[META_GROUP])

    config = write_meta_experiment(data_dir, tiny_bert, episodes=4, warp_layers=True)
    run = data_dir / "meta_warp_cli"
    assert main(["meta-train", str(config), "--output-dir", str(run)]) == 0
    assert "warp layers after every FFN output" in capsys.readouterr().out
    assert main(["adapt", str(run), "--task", str(data_dir / "specs" / "toy_sent.yaml"), "--shots", "4",
                 "--seeds", "1", "--init", "meta"]) == 0


def test_an_encoder_without_known_ffn_layers_gets_no_warp_hooks():
    """Adapters with explicit target patterns still install on an encoder whose layer names the
    family table does not know; only warp layers are unavailable there."""
    from types import SimpleNamespace

    from torch import nn

    from nlp_mtl.model.adapters import warp_layer_targets

    encoder = nn.Sequential(nn.Linear(4, 4))
    encoder.config = SimpleNamespace(model_type="bert")
    assert warp_layer_targets(encoder) == []
