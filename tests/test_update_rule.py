"""Meta-SGD: inner learning rates learnt in the outer loop, saved with the adapter, used by adapt."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from .conftest import write_meta_experiment
from .test_fewshot import _meta_setup


def _episode(tasks, which=1, seed=0):
    from nlp_mtl.fewshot.episodes import EpisodeSampler
    from nlp_mtl.fewshot.meta import class_index, episode_batch

    task = tasks[which]
    episode = EpisodeSampler(task.name, task.labels, class_index(task), 5, 4, 8, seed=seed).sample()
    return episode_batch(task, episode, episode.support, 0), episode_batch(task, episode, episode.query, 0), episode


def test_the_learnt_rates_get_the_exact_gradient_of_the_query_loss(tiny_bert, data_dir):
    """Second order: the rates' gradient matches central differences of the query loss after
    adaptation; the learnt rule's gradients come back with the adapter's."""
    from nlp_mtl.fewshot.meta import META_GROUP, EpisodeModel, rule_names, run_episode
    from nlp_mtl.model.heads import HEADS

    model, tasks, mc = _meta_setup(tiny_bert, data_dir, "maml")
    mc = replace(mc, learn_inner_lr=True)
    group = model.adapters[META_GROUP]
    with torch.no_grad():
        for p in group.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rule = group.learn_update_rule(mc.inner_lr, mc.inner_steps)
    support, query, episode = _episode(tasks)
    model.eval().double()
    init = dict(group.deltas.named_parameters(prefix=f"model.adapters.{META_GROUP}.deltas"))
    rates = rule_names(rule)
    assert len(rates) == len(init) + 2  # one per adapter tensor, one for head matrices, one for head biases

    def query_loss_after(grads: bool = False):
        torch.manual_seed(0)
        head = HEADS.get("sequence_classification").build(32, len(episode.labels), {"dropout": 0.0}, "h").double()
        result = run_episode(EpisodeModel(model, head, META_GROUP), init, support, query, len(episode.labels), mc, rule)
        return result.grads if grads else result.query_loss_after

    grads = query_loss_after(grads=True)
    assert set(rates) <= set(grads) and set(init) <= set(grads)
    direction = {n: torch.randn_like(p) for n, p in rates.items()}
    eps = 0.05  # on log rates; the head's loss is float32, so a smaller step drowns in its rounding
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            for n, p in rates.items():
                p.add_(sign * eps * direction[n])
        losses.append(query_loss_after())
        with torch.no_grad():
            for n, p in rates.items():
                p.sub_(sign * eps * direction[n])
    numeric = (losses[0] - losses[1]) / (2 * eps)
    analytic = sum(float((grads[n] * direction[n]).sum()) for n in rates)
    assert abs(analytic) > 1e-6
    assert analytic == pytest.approx(numeric, rel=1e-2)


def test_meta_sgd_learns_rates_saves_them_and_adapt_adapts_by_them(tiny_bert, data_dir):
    import nlp_mtl
    from nlp_mtl.fewshot.meta import META_GROUP, meta_train_loop
    from nlp_mtl.model import MultiTaskModel

    model, tasks, mc = _meta_setup(tiny_bert, data_dir, "fomaml")
    mc = replace(mc, learn_inner_lr=True, episodes=20, inner_lr_outer_lr=0.05)
    meta_train_loop(model, tasks, mc, seed=0, quiet=True)
    rule = model.adapters[META_GROUP].update_rule
    rates = rule.rates()
    assert int(rule.steps) == mc.inner_steps
    assert any(abs(r - mc.inner_lr) > 1e-3 for r in rates.values()), rates  # learnt, not left at the start

    run = data_dir / "meta_sgd"
    model.save_pretrained(run / "model")
    loaded = MultiTaskModel.from_pretrained(run)
    assert loaded.adapters[META_GROUP].update_rule.rates() == pytest.approx(rates)
    assert int(loaded.adapters[META_GROUP].update_rule.steps) == mc.inner_steps

    # --update rule: the learnt start, unscaled, adapted by the learnt rule (inner_steps full-batch SGD steps).
    spec, root = data_dir / "specs" / "toy_sent.yaml", data_dir / "data"
    ruled = nlp_mtl.adapt(run, spec, shots=4, seeds=2, init=META_GROUP, update="rule", data_root=root)
    assert [s.steps for s in ruled.seeds] == [mc.inner_steps] * 2
    assert [s.update for s in ruled.seeds] == ["learnt update rule"] * 2 and ruled.init_scale is None
    # The default keeps adapt's recipe (and its scale) whatever the init carries.
    recipe = nlp_mtl.adapt(run, spec, shots=4, seeds=1, init=META_GROUP, data_root=root)
    assert recipe.seeds[0].steps > mc.inner_steps and recipe.seeds[0].update == "recipe"
    assert recipe.init_scale == 0.5


def test_meta_sgd_through_the_cli_and_its_config_errors(tiny_bert, data_dir, capsys):
    from nlp_mtl.cli import main
    from nlp_mtl.config import MetaConfig
    from nlp_mtl.errors import ConfigError
    from nlp_mtl.schema import from_mapping

    with pytest.raises(ConfigError, match=r"meta\.learn_inner_lr: needs a gradient"):
        from_mapping(MetaConfig, {"learn_inner_lr": True, "algorithm": "reptile"}, "meta")
    with pytest.raises(ConfigError, match=r"meta\.inner_lr_outer_lr"):
        from_mapping(MetaConfig, {"inner_lr_outer_lr": 0}, "meta")
    config = write_meta_experiment(data_dir, tiny_bert, episodes=4, learn_inner_lr=True)
    run = data_dir / "meta_cli"
    assert main(["meta-train", str(config), "--output-dir", str(run)]) == 0
    assert main(["adapt", str(run), "--task", str(data_dir / "specs" / "toy_sent.yaml"), "--shots", "4",
                 "--seeds", "1", "--init", "meta", "--update", "rule"]) == 0
    out = capsys.readouterr().out
    assert "learnt update rule: 2 SGD steps, inner learning rates" in out
    assert "2 steps by the init's learnt update rule" in out


def test_update_rule_without_a_learnt_rule_is_refused(tiny_bert, data_dir, capsys):
    from nlp_mtl.cli import main

    config = write_meta_experiment(data_dir, tiny_bert, episodes=2, inner_steps=1, log_every=1)
    run = data_dir / "meta_plain"
    assert main(["meta-train", str(config), "--output-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["adapt", str(run), "--task", str(data_dir / "specs" / "toy_sent.yaml"), "--shots", "4",
                 "--seeds", "1", "--init", "meta", "--update", "rule"]) == 2
    err = capsys.readouterr().err
    assert "--update rule: no learnt update rule" in err and "meta.learn_inner_lr" in err and "Traceback" not in err
