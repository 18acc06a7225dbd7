"""Episodic meta-learning of an adapter initialisation (first-order MAML, Reptile, MAML).

Each episode comes from one training task: an N-way K-shot support set and a disjoint query
set. The episode's head starts from the support set's class prototypes; ``inner_steps`` of SGD
adapt adapter + head on the support set; the outer update moves the shared adapter
initialisation (the adapter group ``meta``) so that this adaptation does well on the query set:

    fomaml    outer gradient = the query loss's gradient at the adapted weights, plus its path
              through the prototype head initialisation (fo-Proto-MAML)
    maml      the true gradient through the inner steps (torch.func, create_graph)
    reptile   outer gradient = initial - adapted weights (query used for reporting only)

The encoder stays frozen; only the adapter initialisation is learnt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ..config import ExperimentConfig, MetaConfig
from ..data.encoding import collate
from ..data.pipeline import PreparedTask
from ..devices import default_device
from ..errors import ConfigError
from ..model import AdapterSetup, MultiTaskModel
from ..model.heads import Head
from ..registry import HEADS
from .episodes import ClassIndex, Episode, EpisodeBatches, EpisodeSampler
from .masked_words import MaskedWordCorpus, MaskedWordEpisodes
from .prototypes import labelled_features, prototype_weights

META_GROUP = "meta"


def class_index(task: PreparedTask) -> ClassIndex:
    return ClassIndex.build(task.labels, task.encoded["train"], task.task_type.roles.token_level,
                            task.spec.data.tag_scheme == "none")


class EpisodeModel(nn.Module):
    """The encoder routed through one adapter group, and an episode head: what the functional
    inner loop differentiates (parameters named ``model.adapters.<group>...`` and ``head...``)."""

    def __init__(self, model: MultiTaskModel, head: Head, group: str) -> None:
        super().__init__()
        self.model, self.head, self.group = model, head, group

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, features_only: bool = False) -> Any:
        hidden = self.model.encode_through(self.group, input_ids, attention_mask, token_type_ids)
        if features_only:
            return labelled_features(self.head, hidden, attention_mask, labels)
        logits = self.head(hidden, attention_mask)
        return self.head.loss(logits, labels), logits


def episode_batch(task: PreparedTask, episode: Episode, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    batch = collate(task.encoded["train"], indices, pad_id)
    batch["labels"] = torch.from_numpy(episode.remap(batch["labels"].numpy()))
    return batch


class TaskEpisodes:
    """Episodes from one training task's own labels."""

    def __init__(self, task: PreparedTask, mc: MetaConfig, seed: int, pad_id: int) -> None:
        try:
            self.sampler = EpisodeSampler(task.name, task.labels, class_index(task), mc.ways, mc.shots,
                                          mc.query_shots, seed=seed, min_ways=mc.min_ways)
        except ValueError as err:
            raise ConfigError(f"{task.spec.source}: {err}") from None
        self.task, self.pad_id, self.name = task, pad_id, task.name

    def sample(self) -> EpisodeBatches:
        episode = self.sampler.sample()
        return EpisodeBatches(self.name, self.task.spec.head.get("type", self.task.task_type.head),
                              dict(self.task.spec.head), len(episode.labels),
                              episode_batch(self.task, episode, episode.support, self.pad_id),
                              episode_batch(self.task, episode, episode.query, self.pad_id),
                              episode.classes, episode.support, episode.query)


def episode_sources(tasks: list[PreparedTask], tokenizer: Any, mc: MetaConfig,
                    seed: int) -> tuple[list[TaskEpisodes | MaskedWordEpisodes], np.ndarray]:
    """Every source of episodes and how often each is drawn: the tasks share ``1 - masked_words``
    evenly, the masked-word levels share ``masked_words``."""
    pad_id = tokenizer.pad_token_id or 0
    sources: list[TaskEpisodes | MaskedWordEpisodes] = []
    weights: list[float] = []
    if mc.masked_words < 1:
        for i, task in enumerate(tasks):
            sources.append(TaskEpisodes(task, mc, seed + 7919 * i, pad_id))
            weights.append((1 - mc.masked_words) / len(tasks))
    if mc.masked_words > 0:
        corpus = MaskedWordCorpus.build([t.data for t in tasks], mc.shots + mc.query_shots, seed=seed)
        for j, level in enumerate(mc.masked_word_levels):
            try:
                sources.append(MaskedWordEpisodes(corpus, tokenizer, level, mc.ways, mc.shots, mc.query_shots,
                                                  seed=seed + 104729 * (j + 1), min_ways=mc.min_ways))
            except ValueError as err:
                raise ConfigError(f"meta.masked_words: {err}") from None
            weights.append(mc.masked_words / len(mc.masked_word_levels))
    return sources, np.asarray(weights) / sum(weights)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    scored = labels >= 0
    return float((logits.argmax(-1)[scored] == labels[scored]).float().mean())


@dataclass
class EpisodeResult:
    grads: dict[str, torch.Tensor]
    query_loss_before: float
    query_loss_after: float
    query_acc_before: float
    query_acc_after: float


def run_episode(module: EpisodeModel, init: dict[str, nn.Parameter], support: dict[str, torch.Tensor],
                query: dict[str, torch.Tensor], num_labels: int, mc: MetaConfig) -> EpisodeResult:
    """Adapt to one episode from ``init`` (the adapter initialisation) and return its outer gradient."""
    if mc.algorithm == "maml":
        # The fused attention kernels have no double backward; the plain one does.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return _run_episode(module, init, support, query, num_labels, mc)
    return _run_episode(module, init, support, query, num_labels, mc)


def _run_episode(module: EpisodeModel, init: dict[str, nn.Parameter], support: dict[str, torch.Tensor],
                 query: dict[str, torch.Tensor], num_labels: int, mc: MetaConfig) -> EpisodeResult:
    second_order = mc.algorithm == "maml"
    keep_graph = mc.algorithm != "reptile"
    # The head starts from the support set's prototypes. Except for Reptile, the outer gradient
    # flows through them into the adapter (as in fo-Proto-MAML): the adapter learns features
    # whose class means are good classifiers for label sets it has never seen.
    with torch.set_grad_enabled(keep_graph):
        features, labels = functional_call(module, init, kwargs={**support, "features_only": True})
        weight, bias = prototype_weights(features, labels, num_labels)
    fast: dict[str, torch.Tensor] = dict(init) if keep_graph else {n: p.detach() for n, p in init.items()}
    fast.update({f"head.{n}": p.detach().clone().requires_grad_() for n, p in module.head.named_parameters()})
    fast.update({"head.classifier.weight": weight if keep_graph else weight.detach(),
                 "head.classifier.bias": bias if keep_graph else bias.detach()})
    with torch.no_grad():
        loss_before, logits = functional_call(module, fast, kwargs=query)
        acc_before = accuracy(logits, query["labels"])
    for _ in range(mc.inner_steps):
        # First order: the inner gradients are taken at detached copies, so the adapted weights
        # depend on the initialisation only through the identity (and the prototypes).
        at = fast if second_order else {n: p.detach().requires_grad_() for n, p in fast.items()}
        loss, _ = functional_call(module, at, kwargs=support)
        names = list(at)
        grads = torch.autograd.grad(loss, [at[n] for n in names], create_graph=second_order, allow_unused=True)
        fast = {n: (fast[n] - mc.inner_lr * g if g is not None else fast[n]) for n, g in zip(names, grads)}
    names = list(init)
    if mc.algorithm == "reptile":
        with torch.no_grad():
            loss_after, logits = functional_call(module, fast, kwargs=query)
        outer = [(init[n] - fast[n]).detach() for n in names]
    else:
        loss_after, logits = functional_call(module, fast, kwargs=query)
        outer = list(torch.autograd.grad(loss_after, [init[n] for n in names], allow_unused=True))
    acc_after = accuracy(logits.detach(), query["labels"])
    grads = {n: (g if g is not None else torch.zeros_like(init[n])) for n, g in zip(names, outer)}
    return EpisodeResult(grads, float(loss_before), float(loss_after.detach()), acc_before, acc_after)


@dataclass
class MetaResult:
    run_dir: Path
    episodes: int
    seconds: float
    history: list[dict[str, float]]


def build_meta_model(config: ExperimentConfig, encoder: Any, tokenizer: Any) -> MultiTaskModel:
    """The encoder (frozen) with one adapter group, ``meta``: fresh, or copied from ``meta.init_from``."""
    mc = config.meta
    if mc.init_from:
        if not (Path(mc.init_from) / "model" / "multitask.json").is_file() and \
                not (Path(mc.init_from) / "multitask.json").is_file():
            raise ConfigError(f"meta.init_from: {mc.init_from} is not a run or model directory (relative paths start "
                              "at the working directory); train the run to start from first.")
        source = MultiTaskModel.from_pretrained(mc.init_from)
        if source.adapter_setup is None:
            raise ConfigError(f"meta.init_from: {mc.init_from} has no adapters to start from.")
        group = mc.init_group or (source.adapter_setup.groups[0] if len(source.adapter_setup.groups) == 1 else None)
        if group not in source.adapters:
            raise ConfigError(f"meta.init_group: expected one of {', '.join(source.adapters)} "
                              f"(the adapter groups of {mc.init_from}), got {group!r}.")
        setup = AdapterSetup(source.adapter_setup.type, dict(source.adapter_setup.options), [META_GROUP])
        model = MultiTaskModel(source.detach_adapters(), [], source.tokenizer, setup)
        model.adapters[META_GROUP].load_state_dict(source.adapters[group].state_dict())
    else:
        if not config.adapters.enabled:
            raise ConfigError(f"{config.source or 'config'}: meta-training learns an adapter initialisation; "
                              "add an 'adapters:' section (type: lora, houlsby or pfeiffer).")
        setup = AdapterSetup(config.adapters.type, dict(config.adapters.options), [META_GROUP])
        model = MultiTaskModel(encoder, [], tokenizer, setup)
    model.encoder.requires_grad_(False)
    return model


def meta_train_loop(model: MultiTaskModel, tasks: list[PreparedTask], mc: MetaConfig, seed: int,
                    metrics_path: Path | None = None, quiet: bool = False) -> MetaResult:
    """Learn ``model.adapters['meta']`` in place."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    sources, weights = episode_sources(tasks, model.tokenizer, mc, seed)
    rng = np.random.default_rng(seed)
    hidden = model.encoder.config.hidden_size
    init = dict(model.adapters[META_GROUP].named_parameters(prefix=f"model.adapters.{META_GROUP}"))
    outer = torch.optim.Adam(init.values(), lr=mc.outer_lr)
    history: list[dict[str, float]] = []
    window: list[tuple[str, EpisodeResult]] = []
    model.train()
    bar = tqdm(range(mc.episodes), desc=f"meta-training ({mc.algorithm})", disable=quiet, dynamic_ncols=True)
    for episode_number in bar:
        # An even draw keeps the episode order of runs made before masked-word episodes existed.
        pick = rng.integers(len(sources)) if np.ptp(weights) == 0 else rng.choice(len(sources), p=weights)
        try:
            batches = sources[pick].sample()
        except ValueError as err:  # only masked-word sources run dry, and only on odd settings
            raise ConfigError(f"meta.masked_words: {err}") from None
        head = HEADS.get(batches.head).build(hidden, batches.num_labels, batches.head_options,
                                             f"{batches.source}.head").to(device)
        module = EpisodeModel(model, head, META_GROUP)
        support = {k: v.to(device) for k, v in batches.support.items()}
        query = {k: v.to(device) for k, v in batches.query.items()}
        result = run_episode(module, init, support, query, batches.num_labels, mc)
        # The outer gradient is the mean over the meta-batch, a short last one included.
        batch_start = episode_number - episode_number % mc.meta_batch
        in_batch = min(mc.meta_batch, mc.episodes - batch_start)
        for name, param in init.items():
            g = result.grads[name] / in_batch
            param.grad = g if param.grad is None else param.grad + g
        if episode_number + 1 == batch_start + in_batch:  # the meta-batch's last episode
            outer.step()
            outer.zero_grad(set_to_none=True)
        window.append((batches.source, result))
        bar.set_postfix(query_loss=f"{result.query_loss_before:.2f}->{result.query_loss_after:.2f}",
                        query_acc=f"{result.query_acc_before:.2f}->{result.query_acc_after:.2f}")
        if (episode_number + 1) % mc.log_every == 0 or episode_number + 1 == mc.episodes:
            record = {"event": "meta", "episode": episode_number + 1,
                      **{k: round(float(np.mean([getattr(r, k) for _, r in window])), 4)
                         for k in ("query_loss_before", "query_loss_after", "query_acc_before", "query_acc_after")},
                      # Task and masked-word episodes differ in difficulty: their mean alone hides either.
                      "query_acc_after_by_source": {
                          name: round(float(np.mean([r.query_acc_after for n, r in window if n == name])), 4)
                          for name in sorted({n for n, _ in window})}}
            history.append(record)
            window = []
            if metrics_path is not None:
                with metrics_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
    bar.close()
    return MetaResult(metrics_path.parent if metrics_path else Path("."), mc.episodes,
                      time.perf_counter() - started, history)


def meta_train(config: ExperimentConfig, run: Any, quiet: bool = False, overwrite: bool = False) -> MetaResult:
    """``nlp-mtl meta-train``: episodes from the config's tasks; the run directory gets the
    learnt initialisation as adapter group ``meta`` of ``RUN_DIR/model`` (no task heads)."""
    from accelerate.utils import set_seed

    from ..backbone import load_backbone, resolve_backbone
    from ..config import data_root, load_tasks
    from ..data.pipeline import encode_all, load_all

    started = time.perf_counter()
    say = (lambda *a: None) if quiet else print
    set_seed(config.training.seed)
    run.check_new(overwrite)
    specs = load_tasks(config)
    if config.data.storage == "disk":
        # Episodes (masked-word ones especially) draw sentences at random from every task.
        say("note: meta-train holds its tasks in memory; data.storage 'disk' applies to train.")
    datas = load_all(specs, data_root(config), config.data.limit)
    if config.meta.init_from:
        encoder = tokenizer = None
    else:
        resolve_backbone(config.backbone.name)
        encoder, tokenizer = load_backbone(config.backbone)
    if config.meta.init_group and not config.meta.init_from:
        raise ConfigError(f"{config.source or 'config'}: meta.init_group is set but meta.init_from is not; "
                          "give the run to take that adapter group from.")
    model = build_meta_model(config, encoder, tokenizer).to(default_device())
    run.prepare_new()
    tasks = encode_all(datas, model.tokenizer, splits=("train",), quiet=quiet)
    run.write_experiment(config, specs)
    adapter = sum(p.numel() for p in model.adapters[META_GROUP].parameters())
    encoder_size = sum(p.numel() for p in model.encoder.parameters())
    mc = config.meta
    say(f"meta-training a {model.adapter_setup.type} adapter initialisation ({adapter:,} parameters, "
        f"{100 * adapter / encoder_size:.2f}% of the encoder) with {mc.algorithm}: {mc.episodes} episodes of "
        f"up to {mc.ways}-way {mc.shots}-shot (query {mc.query_shots}), {mc.inner_steps} inner steps, "
        f"on {', '.join(t.name for t in tasks)}"
        + (f" ({100 * mc.masked_words:.0f}% masked-word episodes: {', '.join(mc.masked_word_levels)})"
           if mc.masked_words else ""))
    result = meta_train_loop(model, tasks, mc, config.training.seed, run.metrics_path, quiet)
    model.save_pretrained(run.model_dir)
    if result.history:
        first, last = result.history[0], result.history[-1]
        say(f"query accuracy after adaptation: {100 * first['query_acc_after']:.1f}% (first {mc.log_every} episodes) "
            f"-> {100 * last['query_acc_after']:.1f}% (last); before adaptation "
            f"{100 * first['query_acc_before']:.1f}% -> {100 * last['query_acc_before']:.1f}%")
    result.run_dir, result.seconds = run.path, time.perf_counter() - started
    run.mark_finished(result.seconds)
    say(f"saved the initialisation to {run.model_dir} (adapter group '{META_GROUP}'); "
        f"few-shot: nlp-mtl adapt {run.path} --task TASK.yaml --shots 16")
    return result
