"""Per-task adapters: small trainable modules added to chosen linear layers of a frozen encoder.

Every adapter type adds a *delta* to the output of a target ``nn.Linear`` (its module takes the
layer's input and output and returns the adapted output)::

    lora        out + (alpha / rank) * B(A(dropout(x)))       B starts at zero
    houlsby     out + up(act(down(out)))  after the attention output and the FFN output
    pfeiffer    the same bottleneck, after the FFN output only

A group may also carry *warp layers* (``meta.warp_layers``): a bottleneck after every layer's
FFN output, learnt by meta-training in the outer loop only and kept frozen when ``adapt``
trains the group's deltas, so they shape how the adapter learns rather than what it knows
(the meta-adapters of Bansal, Jha and McCallum 2022; WarpGrad, Flennerhag et al. 2020).

Adapters are attached with forward hooks rather than by replacing modules, so the encoder's
own ``state_dict`` (and its ``save_pretrained`` / export) never sees them: the base encoder
stays a plain ``AutoModel`` checkpoint, and each adapter set is a separate, small tensor file.
Several adapter sets ("groups", one per task by default) live side by side; the model picks
one before each encoder pass.

A new adapter type is one class with ``@ADAPTERS.register("name")``: an ``Options`` dataclass,
its default target modules per encoder family, and ``build(linear, options)`` returning the
delta module, which has ``scale_(factor)`` (few-shot ``adapt --init-scale`` shrinks a trained
adapter toward the pretrained encoder with it).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import ADAPTERS
from ..schema import from_mapping

# Linear layers per encoder family, by role. A target is a regular expression matched against
# the end of a module's dotted name (at a dot boundary).
_BERT_LIKE = {
    "query": r"attention\.self\.query", "key": r"attention\.self\.key", "value": r"attention\.self\.value",
    "attention_output": r"attention\.output\.dense", "intermediate": r"intermediate\.dense",
    "ffn_output": r"layer\.\d+\.output\.dense",
}
FAMILY_LAYERS: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "deberta-v2": {**_BERT_LIKE, "query": r"attention\.self\.query_proj", "key": r"attention\.self\.key_proj",
                   "value": r"attention\.self\.value_proj"},
    "distilbert": {"query": r"attention\.q_lin", "key": r"attention\.k_lin", "value": r"attention\.v_lin",
                   "attention_output": r"attention\.out_lin", "intermediate": r"ffn\.lin1",
                   "ffn_output": r"ffn\.lin2"},
}


def family_layers(model_type: str) -> dict[str, str]:
    return FAMILY_LAYERS.get(model_type, _BERT_LIKE)


# ---- adapter types ------------------------------------------------------------------------


class AdapterType:
    Options: type = object
    # Roles (keys of FAMILY_LAYERS) adapted when the options name no target_modules.
    default_roles: tuple[str, ...] = ()

    @staticmethod
    def build(linear: nn.Linear, options: Any) -> nn.Module:
        raise NotImplementedError


@dataclass(frozen=True)
class LoraOptions:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Roles (query, key, value, attention_output, intermediate, ffn_output) or module-name
    # patterns such as 'attention\.self\.query'; default: query and value, as in the LoRA paper.
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def validate(self, where: str) -> None:
        if self.rank <= 0 or self.alpha <= 0:
            raise ConfigError(f"{where}: rank and alpha must be > 0 (got rank {self.rank}, alpha {self.alpha}).")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout: expected a fraction in [0, 1), got {self.dropout}.")


class LoraLayer(nn.Module):
    """LoRA on one linear layer: its output plus (alpha / rank) B A x."""

    def __init__(self, in_features: int, out_features: int, options: LoraOptions) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(options.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, options.rank))
        # As in the LoRA paper and peft: A random, B zero, so training starts from the base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = options.alpha / options.rank
        self.dropout = nn.Dropout(options.dropout) if options.dropout else nn.Identity()

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # out + scaling * B(A x) with the add inside the B product's GEMM (addmm) and the scaling
        # on the rank-r product: no separate elementwise passes over the (tokens x out) output.
        low_rank = ((self.dropout(x) @ self.lora_A.t()) * self.scaling).to(out.dtype)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), low_rank.reshape(-1, low_rank.shape[-1]),
                           self.lora_B.t().to(out.dtype))
        return flat.view(out.shape)

    def merged_weight_delta(self) -> torch.Tensor:
        """What folding this adapter into the base weight adds to it (for export)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        """Multiply what the adapter adds by ``factor`` (B is the last factor of B A x)."""
        self.lora_B.mul_(factor)


@ADAPTERS.register("lora")
class Lora(AdapterType):
    Options = LoraOptions

    @staticmethod
    def build(linear: nn.Linear, options: LoraOptions) -> nn.Module:
        return LoraLayer(linear.in_features, linear.out_features, options)


@dataclass(frozen=True)
class BottleneckOptions:
    # Bottleneck width = hidden size / reduction_factor.
    reduction_factor: int = 16
    activation: Literal["relu", "gelu", "swish"] = "relu"
    dropout: float = 0.0
    target_modules: list[str] | None = None

    def validate(self, where: str) -> None:
        if self.reduction_factor <= 0:
            raise ConfigError(f"{where}.reduction_factor: expected an integer > 0, got {self.reduction_factor}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout: expected a fraction in [0, 1), got {self.dropout}.")


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class BottleneckLayer(nn.Module):
    """A bottleneck adapter after one linear layer: its output plus up(act(down(output)))."""

    def __init__(self, width: int, options: BottleneckOptions, bottleneck: int | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck or max(1, width // options.reduction_factor))
        self.act = _ACTIVATIONS[options.activation]()
        self.up = nn.Linear(self.down.out_features, width)
        self.dropout = nn.Dropout(options.dropout) if options.dropout else nn.Identity()
        # Near-identity start (Houlsby et al.): the adapter adds nothing until it learns to.
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.up(self.dropout(self.act(self.down(out))))

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        """Multiply what the adapter adds by ``factor`` (``up`` is its last, affine, map)."""
        self.up.weight.mul_(factor)
        self.up.bias.mul_(factor)


@ADAPTERS.register("houlsby")
class Houlsby(AdapterType):
    Options = BottleneckOptions
    default_roles = ("attention_output", "ffn_output")

    @staticmethod
    def build(linear: nn.Linear, options: BottleneckOptions) -> nn.Module:
        return BottleneckLayer(linear.out_features, options)


@ADAPTERS.register("pfeiffer")
class Pfeiffer(Houlsby):
    default_roles = ("ffn_output",)


# ---- attaching adapter sets to an encoder -------------------------------------------------


def parse_options(adapter_type: str, options: dict[str, Any], where: str) -> Any:
    kind = ADAPTERS.get(adapter_type, f"{where}.type")
    return from_mapping(kind.Options, options, f"{where}.options")  # runs Options.validate


def resolve_targets(encoder: nn.Module, adapter_type: str, options: Any, where: str = "adapters") -> list[str]:
    """Names of the encoder's linear layers this adapter type attaches to."""
    kind = ADAPTERS.get(adapter_type)
    layers = family_layers(getattr(encoder.config, "model_type", "bert"))
    wanted = getattr(options, "target_modules", None) or list(kind.default_roles)
    linears = [name for name, module in encoder.named_modules() if isinstance(module, nn.Linear)]
    found: list[str] = []
    for target in wanted:
        pattern = re.compile(r"(^|\.)(?:" + layers.get(target, target) + r")$")
        matched = [name for name in linears if pattern.search(name)]
        if not matched:
            examples = ", ".join(linears[:4])
            raise ConfigError(f"{where}.options.target_modules: '{target}' matches no linear layer of this encoder; "
                              f"use a role ({', '.join(layers)}) or a module-name pattern (names look like {examples}).")
        found.extend(m for m in matched if m not in found)
    return sorted(found, key=linears.index)


def warp_layer_targets(encoder: nn.Module) -> list[str]:
    """The linear layers warp layers follow: every layer's FFN output (as a Pfeiffer adapter);
    none for an encoder whose layer names the family table does not know."""
    try:
        return resolve_targets(encoder, "pfeiffer", BottleneckOptions(), "meta.warp_layers")
    except ConfigError:  # adapters with explicit target patterns still work on such an encoder
        return []


def module_key(name: str) -> str:
    """Module names contain dots, which ModuleDict keys may not."""
    return name.replace(".", "__")


class UpdateRule(nn.Module):
    """A meta-learned update rule (Meta-SGD, Li et al. 2017): a learning rate per adapter tensor
    and per head tensor, kept as its logarithm so that it stays positive, and the number of
    full-batch SGD steps it was meta-trained for. ``nlp-mtl adapt --update rule`` adapts a
    group that carries one with exactly that update instead of its AdamW recipe."""

    def __init__(self, names: list[str], rate: float, steps: int) -> None:
        super().__init__()
        self.log_rates = nn.ParameterDict({rule_key(n): nn.Parameter(torch.tensor(math.log(rate))) for n in names})
        self.register_buffer("steps", torch.tensor(steps, dtype=torch.int64))

    def rate(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The learning rate of ``tensor``, named 'deltas.<layer>.<weight>' or 'head.<weight>';
        differentiable, so meta-training learns it. Heads differ from episode to episode (token,
        sequence, pooled by [CLS]), so all their matrices share one rate and all their biases another."""
        if name.startswith("head."):
            name = "head.weight" if tensor.dim() >= 2 else "head.bias"
        return self.log_rates[rule_key(name)].exp()

    def rates(self) -> dict[str, float]:
        return {k: float(v.detach().exp()) for k, v in self.log_rates.items()}


def rule_key(name: str) -> str:
    return name.replace(".", "__")


class AdapterSet(nn.Module):
    """One group's adapters: a delta module per target layer; after meta-training with a
    learned update rule (``meta.learn_inner_lr``), that rule (else None); after meta-training
    with ``meta.warp_layers``, the warp layers (else None)."""

    def __init__(self, encoder: nn.Module, adapter_type: str, options: Any, targets: list[str]) -> None:
        super().__init__()
        kind = ADAPTERS.get(adapter_type)
        modules = dict(encoder.named_modules())
        self.deltas = nn.ModuleDict({module_key(name): kind.build(modules[name], options) for name in targets})
        self.update_rule: UpdateRule | None = None
        self.warps: nn.ModuleDict | None = None

    def add_warp_layers(self, widths: dict[str, int], reduction_factor: int = 16) -> nn.ModuleDict:
        """Identity-initialised warp layers after the layers ``widths`` names (module name ->
        output width); a group that has them keeps them (resumed or continued meta-training)."""
        if self.warps is None:
            self._install_warps({module_key(n): (w, max(1, w // reduction_factor)) for n, w in widths.items()})
        return self.warps

    def _install_warps(self, sizes: dict[str, tuple[int, int]]) -> None:
        """Warp layers keyed like ``deltas``, each (width, bottleneck width), on the deltas' device."""
        device = next(self.deltas.parameters()).device
        self.warps = nn.ModuleDict({key: BottleneckLayer(width, BottleneckOptions(), bottleneck)
                                    for key, (width, bottleneck) in sizes.items()}).to(device)

    def warp_parameters(self) -> list[nn.Parameter]:
        return list(self.warps.parameters()) if self.warps is not None else []

    def learn_update_rule(self, rate: float, steps: int) -> UpdateRule:
        """Give the group an update rule starting at ``rate`` for every tensor, for ``steps``
        inner steps. A group that has one keeps its rates (a meta-run resumed, or started from a
        learnt group, goes on learning them)."""
        if self.update_rule is None:
            names = [f"deltas.{n}" for n, _ in self.deltas.named_parameters()] + ["head.weight", "head.bias"]
            device = next(self.deltas.parameters()).device
            self.update_rule = UpdateRule(names, rate, steps).to(device)
        self.update_rule.steps.fill_(steps)
        return self.update_rule

    def delta_parameters(self) -> list[nn.Parameter]:
        """The adapter's weights, without its update rule's rates: what adaptation trains."""
        return list(self.deltas.parameters())

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # A saved group with an update rule brings it along: made here so that the tensors fit.
        prefix = "update_rule.log_rates."
        names = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        if names and self.update_rule is None:
            self.update_rule = UpdateRule([], 1.0, int(state_dict.get("update_rule.steps", 1)))
            for key in names:
                self.update_rule.log_rates[key] = nn.Parameter(torch.zeros(()))
            self.update_rule.to(next(self.deltas.parameters()).device)
        # Warp layers likewise, their sizes read from the saved tensors.
        downs = {k[len("warps."):-len(".down.weight")]: v.shape for k, v in state_dict.items()
                 if k.startswith("warps.") and k.endswith(".down.weight")}
        if downs and self.warps is None:
            self._install_warps({key: (int(shape[1]), int(shape[0])) for key, shape in downs.items()})
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def scale_(self, factor: float) -> None:
        """Scale every delta by ``factor``: 1 keeps the adapter, 0 gives the bare encoder, and
        in between lies the straight line from the pretrained encoder to the adapted one. Warp
        layers are not scaled: they are part of how the group adapts, not of what it learnt."""
        for delta in self.deltas.values():
            delta.scale_(factor)


class AdapterHooks:
    """Forward hooks on the target layers that run the routed group's adapter layers (its
    delta, then its warp layer, where it has them there).

    The group is context-local (``routed(group)``; None, the default, runs the bare encoder):
    each thread or asyncio task routes its own passes, so concurrent predictions through
    different groups of one shared model run side by side, each through its own group.
    """

    def __init__(self, encoder: nn.Module, adapters: nn.ModuleDict, targets: list[str]) -> None:
        self.adapters = adapters
        self._group: contextvars.ContextVar[str | None] = contextvars.ContextVar(f"adapter_group_{id(self)}",
                                                                                default=None)
        modules = dict(encoder.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(module_key(name))) for name in targets]

    def _hook(self, key: str) -> Callable[..., torch.Tensor | None]:
        def add_delta(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            group = self._group.get()
            if group is None:
                return None
            adapter = self.adapters[group]
            if key in adapter.deltas:
                output = adapter.deltas[key](inputs[0], output)
            if adapter.warps is not None and key in adapter.warps:
                output = adapter.warps[key](inputs[0], output)
            return output

        return add_delta

    @contextlib.contextmanager
    def routed(self, group: str | None) -> Iterator[None]:
        token = self._group.set(group)
        try:
            yield
        finally:
            self._group.reset(token)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def merge_into_encoder(encoder: nn.Module, adapter_set: AdapterSet) -> None:
    """Fold an adapter set into the encoder's weights (LoRA only: W + (alpha/r) B A), giving a
    plain encoder that computes what encoder + adapter computed."""
    if adapter_set.warps is not None:
        raise ConfigError("this adapter group carries meta-learnt warp layers, which stock Hugging Face models lack; "
                          "save the task with --adapter-only instead.")
    modules = dict(encoder.named_modules())
    for key, delta in adapter_set.deltas.items():
        if not hasattr(delta, "merged_weight_delta"):
            raise ConfigError("only LoRA adapters fold into the encoder's weights; bottleneck adapters add layers "
                              "that stock Hugging Face models lack (save the task with --adapter-only instead).")
        module = modules[key.replace("__", ".")]
        module.weight += delta.merged_weight_delta().to(module.weight.dtype)
