"""Episodic meta-learning of an adapter initialisation (first-order MAML, Reptile, MAML).

Each episode comes from one training task: an N-way K-shot support set and a disjoint query
set. The episode's head starts from the support set's class prototypes; ``inner_steps`` of SGD
adapt adapter + head on the support set; the outer update moves the shared adapter
initialisation (the adapter group ``meta``) so that this adaptation does well on the query set:

    fomaml    outer gradient = the query loss's gradient at the adapted weights, plus its path
              through the prototype head initialisation (fo-Proto-MAML)
    maml      the true gradient through the inner steps (torch.func, create_graph)
    reptile   outer gradient = initial - adapted weights (query used for reporting only)

The encoder stays frozen; only the adapter initialisation is learnt, and with
``meta.learn_inner_lr`` / ``meta.warp_layers`` the inner learning rates / warp layers too, both
outer-loop only: the inner steps adapt the adapter and head alone.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..config import ExperimentConfig, MetaConfig
from ..data.encoding import collate
from ..data.pipeline import PreparedTask
from ..errors import ConfigError, UserError
from ..model import AdapterSetup, MultiTaskModel
from ..model.adapters import UpdateRule
from ..model.heads import Head
from ..registry import HEADS
from ..training.accelerator import make_accelerator
from ..training.callbacks import Checkpointer, JsonlLog, ProgressBar, ThroughputMeter
from ..training.checkpoint import checkpoint_note, find_checkpoint, load_checkpoint
from ..training.engine import Batch, Callback, Engine, EngineState, MicroBatch
from ..training.guard import NonFiniteGuard
from ..training.tracking import resolve_trackers
from .episodes import ClassIndex, Episode, EpisodeBatches, EpisodeSampler
from .masked_words import MaskedWordCorpus, MaskedWordEpisodes, word_clusters
from .prototypes import labelled_features, prototype_weights
from ..run_dir import RunDir

META_GROUP = "meta"


def class_index(task: PreparedTask) -> ClassIndex:
    """Which examples hold each class: what K-shot support sets and episodes are drawn from."""
    if task.task_type.roles.label_set:
        # "K examples per class" has no one meaning when an example holds several classes.
        raise UserError(f"{task.spec.source}: few-shot episodes and support sets need one label per text or per "
                        f"word; '{task.spec.type}' tasks cannot be used with meta-train or adapt.")
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

    def reseed(self, seed: int | list[int]) -> None:
        self.sampler.reseed(seed)

    def sample(self) -> EpisodeBatches:
        episode = self.sampler.sample()
        return EpisodeBatches(self.name, self.task.spec.head.get("type", self.task.task_type.head),
                              dict(self.task.spec.head), len(episode.labels),
                              episode_batch(self.task, episode, episode.support, self.pad_id),
                              episode_batch(self.task, episode, episode.query, self.pad_id),
                              episode.classes, episode.support, episode.query)


def episode_sources(tasks: list[PreparedTask], tokenizer: Any, mc: MetaConfig, seed: int,
                    input_embeddings: torch.Tensor) -> tuple[list[TaskEpisodes | MaskedWordEpisodes], np.ndarray]:
    """Every source of episodes and how often each is drawn: the tasks share ``1 - masked_words``
    evenly, the masked-word levels share ``masked_words``. ``input_embeddings`` (the encoder's
    word embedding table) groups the masked words when ``masked_word_clusters`` is set."""
    pad_id = tokenizer.pad_token_id or 0
    sources: list[TaskEpisodes | MaskedWordEpisodes] = []
    weights: list[float] = []
    if mc.masked_words < 1:
        for i, task in enumerate(tasks):
            sources.append(TaskEpisodes(task, mc, seed + 7919 * i, pad_id))
            weights.append((1 - mc.masked_words) / len(tasks))
    if mc.masked_words > 0:
        corpus = MaskedWordCorpus.build([t.data for t in tasks], mc.shots + mc.query_shots, seed=seed)
        clusters = None
        if mc.masked_word_clusters and corpus.words:
            clusters = word_clusters(corpus.words, tokenizer, input_embeddings, mc.masked_word_clusters, seed)
        for j, level in enumerate(mc.masked_word_levels):
            try:
                sources.append(MaskedWordEpisodes(corpus, tokenizer, level, mc.ways, mc.shots, mc.query_shots,
                                                  seed=seed + 104729 * (j + 1), min_ways=mc.min_ways,
                                                  clusters=clusters))
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
                query: dict[str, torch.Tensor], num_labels: int, mc: MetaConfig,
                rule: UpdateRule | None = None, warps: dict[str, nn.Parameter] | None = None) -> EpisodeResult:
    """Adapt to one episode from ``init`` (the adapter initialisation) and return its outer
    gradient; with a learnt update ``rule``, its rates' gradients too (named as in ``rule_names``);
    with ``warps`` (warp-layer parameters, named as in functional_call), theirs: the inner steps
    leave them as they are, the query loss after adaptation gives their gradient."""
    if mc.algorithm == "maml":
        # The fused attention kernels have no double backward; the plain one does.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return _run_episode(module, init, support, query, num_labels, mc, rule, warps or {})
    return _run_episode(module, init, support, query, num_labels, mc, rule, warps or {})


def rule_names(rule: UpdateRule) -> dict[str, nn.Parameter]:
    return dict(rule.log_rates.named_parameters(prefix=f"model.adapters.{META_GROUP}.update_rule.log_rates"))


def _step_size(rule: UpdateRule | None, name: str, tensor: torch.Tensor, fixed: float) -> Any:
    """The inner learning rate of ``tensor`` (named as in functional_call): fixed, or the rule's."""
    if rule is None:
        return fixed
    return rule.rate(name.removeprefix(f"model.adapters.{META_GROUP}."), tensor)


def _run_episode(module: EpisodeModel, init: dict[str, nn.Parameter], support: dict[str, torch.Tensor],
                 query: dict[str, torch.Tensor], num_labels: int, mc: MetaConfig,
                 rule: UpdateRule | None, warps: dict[str, nn.Parameter]) -> EpisodeResult:
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
        # With a learnt rule the rates stay in the graph: the query loss's gradient reaches them
        # through every step (first order too: only the inner gradients g are constants there).
        fast = {n: (fast[n] - _step_size(rule, n, fast[n], mc.inner_lr) * g if g is not None else fast[n])
                for n, g in zip(names, grads)}
    learnt = {**init, **(rule_names(rule) if rule is not None else {}), **warps}
    names = list(learnt)
    if mc.algorithm == "reptile":
        with torch.no_grad():
            loss_after, logits = functional_call(module, fast, kwargs=query)
        outer = [(init[n] - fast[n]).detach() for n in init]
    else:
        loss_after, logits = functional_call(module, fast, kwargs=query)
        outer = list(torch.autograd.grad(loss_after, [learnt[n] for n in names], allow_unused=True))
    acc_after = accuracy(logits.detach(), query["labels"])
    grads = {n: (g if g is not None else torch.zeros_like(learnt[n])) for n, g in zip(names, outer)}
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
        if not RunDir.holds_model(Path(mc.init_from)):
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


class EpisodeSource:
    """The engine's batch source for meta-training. Micro-step m's episode is a function of
    (seed, process, m) alone, so a resumed run draws exactly the episodes the uninterrupted one
    would, with nothing to checkpoint; each process draws its own."""

    def __init__(self, sources: list[TaskEpisodes | MaskedWordEpisodes], weights: np.ndarray, seed: int,
                 rank: int, device: torch.device) -> None:
        self.sources, self.weights, self.seed, self.rank, self.device = sources, weights, seed, rank, device

    def batch_at(self, micro_step: int) -> Batch:
        rng = np.random.default_rng([self.seed, self.rank, micro_step])
        pick = rng.integers(len(self.sources)) if np.ptp(self.weights) == 0 else rng.choice(len(self.sources),
                                                                                           p=self.weights)
        source = self.sources[pick]
        source.reseed([self.seed, self.rank, micro_step, 1])
        try:
            episode = source.sample()
        except ValueError as err:  # only masked-word sources run dry, and only on odd settings
            raise ConfigError(f"meta.masked_words: {err}") from None
        # Sizes counted while the batches are still on the host: no device sync per step.
        examples = len(episode.support["input_ids"]) + len(episode.query["input_ids"])
        tokens = int(episode.support["attention_mask"].sum() + episode.query["attention_mask"].sum())
        episode.support = {k: v.to(self.device) for k, v in episode.support.items()}
        episode.query = {k: v.to(self.device) for k, v in episode.query.items()}
        return Batch(episode.source, episode, examples, tokens)

    def cursors(self) -> dict[str, list[int]]:
        return {}


class EpisodeLoss:
    """One episode's inner adaptation (``run_episode``) as the engine's loss. The outer gradient
    g is not the gradient of a loss the engine could run backward on, so the loss returned is
    ``sum(p * g) - sum(p * g).detach() + query loss``: its value is the query loss after
    adaptation (what is logged and checked for being finite), its gradient exactly g. Backward,
    the meta-batch mean (accelerate's accumulation), clipping and the optimizer step are then
    the engine's. With several processes g is averaged over them here, once per episode."""

    def __init__(self, model: MultiTaskModel, mc: MetaConfig, accelerator: Any) -> None:
        self.model, self.mc, self.accelerator = model, mc, accelerator
        group = model.adapters[META_GROUP]
        # The adapter's weights (what the inner loop adapts) and, with a learnt rule, its rates:
        # together, what the outer step learns.
        self.init = dict(group.deltas.named_parameters(prefix=f"model.adapters.{META_GROUP}.deltas"))
        if not mc.learn_inner_lr:
            group.update_rule = None  # a rule that came with meta.init_from was learnt for that start, not this one
        self.rule = group.learn_update_rule(mc.inner_lr, mc.inner_steps) if mc.learn_inner_lr else None
        if mc.warp_layers:
            model.add_warp_layers(META_GROUP, mc.warp_reduction_factor)
        else:
            group.warps = None  # likewise warp layers that came with meta.init_from
        self.warps = (dict(group.warps.named_parameters(prefix=f"model.adapters.{META_GROUP}.warps"))
                      if group.warps is not None else {})
        self.learnt = {**self.init, **(rule_names(self.rule) if self.rule is not None else {}), **self.warps}
        self.results: list[tuple[str, EpisodeResult]] = []

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, float]:
        episode: EpisodeBatches = batch.inputs
        device = self.accelerator.device
        head = HEADS.get(episode.head).build(self.model.encoder.config.hidden_size, episode.num_labels,
                                             episode.head_options, f"{episode.source}.head").to(device)
        with self.accelerator.autocast():
            result = run_episode(EpisodeModel(self.model, head, META_GROUP), self.init, episode.support,
                                 episode.query, episode.num_labels, self.mc, self.rule, self.warps)
        grads = [result.grads[n].detach() for n in self.learnt]
        if self.accelerator.num_processes > 1:
            # One all-reduce of the whole outer gradient, not one per adapter tensor.
            flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
            grads = [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]
        surrogate = sum((p * g.to(p.dtype)).sum() for p, g in zip(self.learnt.values(), grads))
        self.results.append((episode.source, result))
        query_loss = torch.tensor(result.query_loss_after, device=device)
        return surrogate - surrogate.detach() + query_loss, 1.0


class MetaLogger(Callback):
    """Query loss and accuracy before and after adaptation, averaged over the episodes of the
    last ``every`` steps (all processes), to metrics.jsonl, the trackers and the progress bar."""

    FIELDS = ("query_loss_before", "query_loss_after", "query_acc_before", "query_acc_after")

    def __init__(self, loss: EpisodeLoss, every: int, log: JsonlLog, trackers: bool, episodes_per_step: int) -> None:
        self.loss, self.every, self.log, self.trackers = loss, every, log, trackers
        self.episodes_per_step = episodes_per_step
        self.history: list[dict[str, Any]] = []
        self.window: list[tuple[str, list[float]]] = []

    def on_train_start(self, engine: Engine) -> None:
        # A checkpoint keeps the window logged so far (save_into), so a resumed run's records
        # equal the uninterrupted run's.
        self.window = [(key.split("|", 1)[1], values) for key, values in sorted(
            engine.state.running.items(), key=lambda kv: int(kv[0].split("|", 1)[0]))]

    def on_step_end(self, engine: Engine, micro_batches: list[MicroBatch]) -> None:
        self.window += [(name, [getattr(r, f) for f in self.FIELDS]) for name, r in self.loss.results]
        self.loss.results = []
        if engine.state.step % self.every == 0 or engine.state.step == engine.total_steps:
            self.flush(engine)

    def save_into(self, engine: Engine) -> None:
        engine.state.running = {f"{i}|{name}": values for i, (name, values) in enumerate(self.window)}

    def flush(self, engine: Engine) -> None:
        window = self.window
        if engine.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            window = [entry for part in gather_object([window]) for entry in part]
        self.window = []
        means = {f: round(float(np.mean([v[i] for _, v in window])), 4) for i, f in enumerate(self.FIELDS)}
        step = engine.state.step
        record = {"event": "meta", "step": step, "episode": step * self.episodes_per_step, **means,
                  # Task and masked-word episodes differ in difficulty: their mean alone hides either.
                  "query_acc_after_by_source": {
                      name: round(float(np.mean([v[3] for n, v in window if n == name])), 4)
                      for name in sorted({n for n, _ in window})}}
        self.history.append(record)
        self.log.write(record)
        bar = engine.callback(ProgressBar)
        if bar is not None:
            bar.show({"query_loss": means["query_loss_after"], "query_acc": means["query_acc_after"]})
        if self.trackers:
            engine.accelerator.log({f"meta/{k}": v for k, v in means.items()}, step=step)


def meta_steps(mc: MetaConfig, processes: int) -> int:
    """Optimizer steps: meta-batches of ``meta_batch`` episodes on each process, enough to hold
    ``meta.episodes`` (rounded up to whole meta-batches)."""
    return max(1, math.ceil(mc.episodes / (mc.meta_batch * processes)))


def meta_train_loop(model: MultiTaskModel, tasks: list[PreparedTask], mc: MetaConfig, seed: int,
                    metrics_path: Path | None = None, quiet: bool = False, mixed_precision: str = "no",
                    checkpoints: Path | None = None, resume: bool = False, log_with: str | list[str] = "none",
                    on_nonfinite_loss: str = "stop", callbacks: list[Callback] | None = None,
                    accelerator: Any = None) -> MetaResult:
    """Learn ``model.adapters['meta']`` in place, on the training engine. With ``checkpoints``,
    a resumable checkpoint every ``meta.checkpoint_every`` steps; ``resume`` continues from it.
    ``accelerator``: one made by ``make_accelerator`` for this precision, ``meta_batch`` and
    ``log_with`` (meta_train makes it first, as a multi-process launch needs); else one is made."""
    started = time.perf_counter()
    trackers = resolve_trackers(log_with)
    owned = accelerator is None
    if owned:
        project = RunDir(metrics_path.parent).logs_dir if metrics_path else Path(os.devnull)
        accelerator, note = make_accelerator(mixed_precision, mc.meta_batch, project, trackers)
        if note and not quiet and accelerator.is_main_process:
            print(note)
    main, world = accelerator.is_main_process, accelerator.num_processes
    model.to(accelerator.device)
    sources, weights = episode_sources(tasks, model.tokenizer, mc, seed,
                                       model.encoder.get_input_embeddings().weight)
    steps = meta_steps(mc, world)
    loss = EpisodeLoss(model, mc, accelerator)
    # Only the optimizer is prepared: there is no model-level all-reduce to do, since
    # EpisodeLoss averages the outer gradient over the processes itself.
    groups = [{"params": list(loss.init.values()) + list(loss.warps.values()), "lr": mc.outer_lr}]
    if loss.rule is not None:
        groups.append({"params": list(loss.rule.parameters()), "lr": mc.inner_lr_outer_lr})
    optimizer = accelerator.prepare(torch.optim.Adam(groups))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    log = JsonlLog(metrics_path or Path(os.devnull), main and metrics_path is not None)
    state = EngineState()
    if resume and checkpoints is not None:
        model.load_state_dict(MultiTaskModel.from_pretrained(checkpoints / "model").state_dict())
        state = load_checkpoint(checkpoints, optimizer, scheduler, accelerator.process_index)
        log.truncate_after(state.step)
    if trackers:
        accelerator.init_trackers("meta-train", init_kwargs={"tensorboard": {"purge_step": state.step + 1}}
                                  if state.step else {})
    logger = MetaLogger(loss, mc.log_every, log, bool(trackers), mc.meta_batch * world)
    installed: list[Callback] = [ThroughputMeter(), logger]
    if checkpoints is not None:
        installed.append(Checkpointer(checkpoints, mc.checkpoint_every, main))
    installed.append(ProgressBar(disabled=quiet or not main, desc=f"meta-training ({mc.algorithm})"))
    engine = Engine(accelerator, model, optimizer, scheduler,
                    EpisodeSource(sources, weights, seed, accelerator.process_index, accelerator.device), loss,
                    NonFiniteGuard(on_nonfinite_loss, log, lambda: _checkpoint_note(checkpoints), "meta.outer_lr"),
                    installed + list(callbacks or []), steps, state=state)
    engine.fit()
    if trackers and owned:  # ends the process group too: last thing (meta_train ends its own)
        accelerator.end_training()
    return MetaResult(metrics_path.parent if metrics_path else Path("."), steps * mc.meta_batch * world,
                      time.perf_counter() - started, logger.history)


def _checkpoint_note(checkpoints: Path | None) -> str:
    if checkpoints is None:
        return "nothing was checkpointed"
    return checkpoint_note(RunDir(checkpoints.parent.parent), "meta-train")


def meta_train(config: ExperimentConfig, run: Any, quiet: bool = False, overwrite: bool = False,
               resume: bool = False) -> MetaResult:
    """``nlp-mtl meta-train``: episodes from the config's tasks; the run directory gets the
    learnt initialisation as adapter group ``meta`` of ``RUN_DIR/model`` (no task heads)."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    mc, tc = config.meta, config.training
    # First: a multi-process launch forms its process group when the accelerator is made.
    accelerator, note = make_accelerator(tc.mixed_precision, mc.meta_batch, run.logs_dir,
                                         resolve_trackers(tc.log_with))
    quiet = quiet or not accelerator.is_main_process
    say = (lambda *a: None) if quiet else print
    if note:
        say(note)
    set_seed(tc.seed)
    if resume and find_checkpoint(run.last_dir) is None:
        raise UserError(f"{run.path}: no checkpoint to resume from (expected {run.last_dir}).")
    model, tasks, specs = _prepare_meta_run(config, run, accelerator, overwrite, resume, quiet, say)
    adapter = sum(p.numel() for p in model.adapters[META_GROUP].delta_parameters())
    encoder_size = sum(p.numel() for p in model.encoder.parameters())
    say(f"meta-training a {model.adapter_setup.type} adapter initialisation ({adapter:,} parameters, "
        f"{100 * adapter / encoder_size:.2f}% of the encoder"
        + (f"; and warp layers after every FFN output, reduction factor {mc.warp_reduction_factor}, frozen in "
           "the inner loop" if mc.warp_layers else "")
        + f") with {mc.algorithm}: {mc.episodes} episodes of "
        f"up to {mc.ways}-way {mc.shots}-shot (query {mc.query_shots}), {mc.inner_steps} inner steps, "
        f"on {', '.join(t.name for t in tasks)}"
        + (f" ({100 * mc.masked_words:.0f}% masked-word episodes: {', '.join(mc.masked_word_levels)})"
           if mc.masked_words else ""))
    result = meta_train_loop(model, tasks, mc, tc.seed, run.metrics_path, quiet, tc.mixed_precision, run.last_dir,
                             resume, tc.log_with, tc.on_nonfinite_loss, accelerator=accelerator)
    if accelerator.is_main_process:
        model.save_pretrained(run.model_dir)
    accelerator.wait_for_everyone()
    if result.history:
        first, last = result.history[0], result.history[-1]
        say(f"query accuracy after adaptation: {100 * first['query_acc_after']:.1f}% (first {mc.log_every} steps) "
            f"-> {100 * last['query_acc_after']:.1f}% (last); before adaptation "
            f"{100 * first['query_acc_before']:.1f}% -> {100 * last['query_acc_before']:.1f}%")
    rule = model.adapters[META_GROUP].update_rule
    if rule is not None:
        rates = sorted(rule.rates().values())
        say(f"learnt update rule: {int(rule.steps)} SGD steps, inner learning rates {rates[0]:.3g} to {rates[-1]:.3g} "
            f"(median {rates[len(rates) // 2]:.3g}; started at {mc.inner_lr:g}); adapt --init {META_GROUP} adapts by it")
    result.run_dir, result.seconds = run.path, time.perf_counter() - started
    if accelerator.is_main_process:
        run.mark_finished(result.seconds)
    say(f"saved the initialisation to {run.model_dir} (adapter group '{META_GROUP}'); "
        f"few-shot: nlp-mtl adapt {run.path} --task TASK.yaml --shots 16")
    if resolve_trackers(tc.log_with):
        accelerator.end_training()
    return result


def _prepare_meta_run(config: ExperimentConfig, run: Any, accelerator: Any, overwrite: bool, resume: bool,
                      quiet: bool, say: Any) -> tuple[MultiTaskModel, list[PreparedTask], list[Any]]:
    """Everything checked before anything is written; then the data, tokenised, and the model."""
    from ..backbone import load_backbone, resolve_backbone
    from ..config import data_root, load_tasks
    from ..data.pipeline import encode_all, load_all

    if not resume:
        run.check_new(overwrite)
    specs = run.read_experiment()[1] if resume else load_tasks(config)
    if config.data.storage == "disk":
        # Episodes (masked-word ones especially) draw sentences at random from every task.
        say("note: meta-train holds its tasks in memory; data.storage 'disk' applies to train.")
    datas = load_all(specs, data_root(config), config.data.limit)
    if config.meta.init_group and not config.meta.init_from:
        raise ConfigError(f"{config.source or 'config'}: meta.init_group is set but meta.init_from is not; "
                          "give the run to take that adapter group from.")
    if config.meta.init_from:
        encoder = tokenizer = None
    else:
        resolve_backbone(config.backbone.name)
        encoder, tokenizer = load_backbone(config.backbone)
    model = build_meta_model(config, encoder, tokenizer)
    main = accelerator.is_main_process
    if main and not resume:
        run.prepare_new()
    accelerator.wait_for_everyone()
    tasks = encode_all(datas, model.tokenizer, splits=("train",), quiet=quiet or not main)
    if main and not resume:
        run.write_experiment(config, specs)
    return model, tasks, specs
