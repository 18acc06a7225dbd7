"""Export one task of a multi-task model as a plain Hugging Face model directory.

The result is what serving code already loads: ``AutoModelForTokenClassification`` or
``AutoModelForSequenceClassification`` with ``id2label``/``label2id`` and the tokenizer, so
``transformers.pipeline(...)`` works on it. Token heads and first-token (``pooling: cls``)
sequence heads map onto the encoder family's stock class; where the family's stock head
computes something else (mean pooling, or a ReLU/GELU pooler), the directory carries a small
modeling file and loads with ``trust_remote_code=True``.

Every export is checked before it is moved into place: the directory is loaded back through
the Auto class, exactly as a user would, and its logits must equal the multi-task model's.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError, did_you_mean
from .fileio import atomic_directory, writing
from .model import MultiTaskModel
from .model.heads import SequenceClassificationHead, TokenClassificationHead
from .registry import TASK_TYPES
from .run_dir import RunDir, check_target

CUSTOM_MODULE = "modeling_nlp_mtl"
CUSTOM_CLASS = "NlpMtlForSequenceClassification"
# Families whose stock sequence-classification head is [CLS] -> Linear -> tanh -> Linear, like
# ours with pooling: cls, and where that dense layer lives in the exported state dict.
_TANH_POOLER_AT = {
    "bert": ("{base}.pooler.dense", "classifier"),
    "roberta": ("classifier.dense", "classifier.out_proj"),
    "xlm-roberta": ("classifier.dense", "classifier.out_proj"),
    "camembert": ("classifier.dense", "classifier.out_proj"),
    # DeBERTa's ContextPooler reads its activation from the config; the export sets it to tanh.
    "deberta-v2": ("pooler.dense", "classifier"),
    "deberta": ("pooler.dense", "classifier"),
}
# Checked-equal tolerance between the multi-task model and the export (fp32, same kernels).
TOLERANCE = 1e-4
PROBE_TEXTS = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn lives in Brussels and works for the United Nations .",
    "What is the capital of Peru ?",
    "a gripping , funny and deeply moving film",
]


@dataclass
class ExportResult:
    path: Path
    architecture: str
    pipeline_task: str
    remote_code: bool
    max_abs_diff: float
    pipeline_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def usage(self) -> str:
        extra = ", trust_remote_code=True" if self.remote_code else ""
        aggregation = ', aggregation_strategy="first"' if self.pipeline_task == "token-classification" else ""
        kwargs = "".join(f", {key}={value!r}" for key, value in self.pipeline_kwargs.items())
        return f'pipeline("{self.pipeline_task}", model="{self.path}"{aggregation}{kwargs}{extra})'


def export_task(source: str | Path, task: str, out: str | Path, overwrite: bool = False) -> ExportResult:
    """Write task ``task`` of the model (or run directory) ``source`` to ``out``."""

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a directory.")
    # Never into a run's model/ or checkpoints/, a saved model, or a folder holding the source.
    check_target(out, "--out", [source])
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: exists and is not empty; pass --overwrite to replace it.")
        if not is_export(out):
            # --overwrite replaces an earlier export, never some other folder (a run, a model, a home).
            raise UserError(f"--out {out}: is not an earlier export (no config.json naming an nlp-mtl task); "
                            "refusing to replace it. Choose an empty or new directory.")
    model = MultiTaskModel.from_pretrained(source)
    if task not in model.tasks:
        raise UserError(f"--task {task}: no such task in {source}; it has {', '.join(model.tasks)}"
                        f"{did_you_mean(task, model.tasks)}.")
    info, head = model.tasks[task], model.heads[task]
    reference = model
    if info.adapter is not None:
        # The export carries the adapter folded into the encoder; the check below still compares
        # it with the unmerged model (encoder + adapter) it came from.
        from .model.adapters import merge_into_encoder

        model = MultiTaskModel.from_pretrained(source)
        merge_into_encoder(model.encoder, model.adapters[info.adapter])
        model.tasks[task] = dataclasses.replace(info, adapter=None)  # its encoder passes run bare
        head = model.heads[task]
    config = copy.deepcopy(model.encoder.config)
    config.id2label = dict(enumerate(info.labels))
    config.label2id = {label: i for i, label in enumerate(info.labels)}
    config.nlp_mtl_task = task

    with writing(out):
        return _write_export(model, reference, source, task, info, head, config, out)


def is_export(directory: Path) -> bool:
    """Whether ``directory`` holds what an earlier ``export`` wrote (its config names the task)."""
    try:
        return "nlp_mtl_task" in json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _write_export(model: MultiTaskModel, reference: MultiTaskModel, source: str | Path, task: str, info: Any,
                  head: Any, config: Any, out: Path) -> ExportResult:
    with atomic_directory(out) as tmp:
        exported = TASK_TYPES.get(info.task_type).export(model, head, config, tmp)
        hf_model, pipeline_task, remote = exported.model, exported.pipeline_task, exported.remote_code
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = copy.deepcopy(model.tokenizer)
        # pipeline(..., truncation=True) then cuts inputs where training and `nlp-mtl predict` do.
        tokenizer.model_max_length = info.max_length
        tokenizer.save_pretrained(tmp)
        diff = _check_equal(reference, task, tmp, pipeline_task, remote)
        result = ExportResult(out, type(hf_model).__name__, pipeline_task, remote, diff, exported.pipeline_kwargs)
        (tmp / "README.md").write_text(_model_card(source, task, info.labels, result))
    return result


def _copy_base(model: MultiTaskModel, hf_model: Any) -> list[str]:
    """Load our encoder's weights into the stock model's base; returns the base keys left unset."""
    base = getattr(hf_model, hf_model.base_model_prefix)
    missing, unexpected = base.load_state_dict(model.encoder.state_dict(), strict=False)
    if unexpected:
        raise RuntimeError(f"export: encoder weights {unexpected[:3]} have no place in {type(hf_model).__name__}")
    return list(missing)


def _set_linear(hf_model: Any, dotted: str, source: torch.nn.Linear) -> None:
    target = hf_model.get_submodule(dotted)
    target.load_state_dict(source.state_dict())


def token_model(model: MultiTaskModel, head: Any, config: Any) -> Any:
    """The family's stock token-classification model carrying our encoder and token head."""
    from transformers import AutoModelForTokenClassification

    if not isinstance(head, TokenClassificationHead):
        raise UserError(f"heads of type '{type(head).__name__}' have no Hugging Face export.")

    hf_model = AutoModelForTokenClassification.from_config(config)
    missing = _copy_base(model, hf_model)
    if missing:
        raise RuntimeError(f"export: {type(hf_model).__name__} expects weights the encoder lacks: {missing[:3]}")
    _set_linear(hf_model, "classifier", head.classifier)
    return hf_model.eval()


def sequence_model(model: MultiTaskModel, head: Any, config: Any, directory: Path) -> tuple[Any, bool]:
    """(model, needs remote code): the stock class where it computes our head, else ours."""
    if not isinstance(head, SequenceClassificationHead):
        raise UserError(f"heads of type '{type(head).__name__}' have no Hugging Face export.")
    stock = _stock_sequence_model(model, head, config)
    return (stock, False) if stock is not None else (_custom_sequence_model(model, head, config, directory), True)


def _stock_sequence_model(model: MultiTaskModel, head: SequenceClassificationHead, config: Any) -> Any | None:
    """The family's stock class when it computes exactly our head; None otherwise."""
    from transformers import AutoModelForSequenceClassification

    places = _TANH_POOLER_AT.get(config.model_type)
    if head.pooling != "cls" or places is None:
        return None
    if config.model_type.startswith("deberta"):
        config.pooler_hidden_act = "tanh"
        config.pooler_hidden_size = config.hidden_size
    hf_model = AutoModelForSequenceClassification.from_config(config)
    missing = _copy_base(model, hf_model)
    dense_at, classifier_at = (p.format(base=hf_model.base_model_prefix) for p in places)
    # BERT's base model carries the pooler our encoder leaves out; it is filled from the head below.
    unexplained = [k for k in missing if not k.startswith("pooler.")]
    if unexplained:
        raise RuntimeError(f"export: {type(hf_model).__name__} expects weights the encoder lacks: {unexplained[:3]}")
    _set_linear(hf_model, dense_at, head.dense)
    _set_linear(hf_model, classifier_at, head.classifier)
    return hf_model.eval()


def _custom_sequence_model(model: MultiTaskModel, head: SequenceClassificationHead, config: Any, directory: Path) -> Any:
    template = Path(__file__).with_name("export_modeling.py").read_text()
    family_config, family_model = type(config).__name__, type(model.encoder).__name__
    source = template.replace("import BertConfig as FamilyConfig", f"import {family_config} as FamilyConfig", 1)
    source = source.replace("import BertModel as FamilyModel", f"import {family_model} as FamilyModel", 1)
    module_path = directory / f"{CUSTOM_MODULE}.py"
    module_path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"_nlp_mtl_export_{id(directory)}", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config.nlp_mtl_pooling = head.pooling
    config.auto_map = {"AutoModelForSequenceClassification": f"{CUSTOM_MODULE}.{CUSTOM_CLASS}"}
    config.architectures = [CUSTOM_CLASS]
    hf_model = getattr(module, CUSTOM_CLASS)(config)
    hf_model.encoder.load_state_dict(model.encoder.state_dict())
    if head.pooling == "cls":
        _set_linear(hf_model, "dense", head.dense)
    _set_linear(hf_model, "classifier", head.classifier)
    return hf_model.eval()


@torch.inference_mode()
def _check_equal(model: MultiTaskModel, task: str, directory: Path, pipeline_task: str, remote: bool) -> float:
    """Load ``directory`` back as a user would and compare its logits with ours on probe texts."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    auto = AutoModelForTokenClassification if pipeline_task == "token-classification" else AutoModelForSequenceClassification
    exported = auto.from_pretrained(directory, trust_remote_code=remote).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(PROBE_TEXTS, padding=True, truncation=True, return_tensors="pt")
    theirs = exported(**batch).logits
    ours = model.cpu().encode_all(batch["input_ids"], batch["attention_mask"], [task],
                                  token_type_ids=batch.get("token_type_ids"))[task]
    mask = batch["attention_mask"].bool()
    if pipeline_task == "token-classification":
        theirs, ours = theirs[mask], ours[mask]
    diff = float((theirs - ours).abs().max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"export of '{task}': exported logits differ from the multi-task model's by {diff:.2e}")
    return diff


def _model_card(source: str | Path, task: str, labels: list[str], result: ExportResult) -> str:
    lines = [
        f"# {task}",
        "",
        f"Exported by `nlp-mtl export` from `{source}`: task `{task}` as `{result.architecture}`.",
        "",
        "```python",
        "from transformers import pipeline",
        f"nlp = {result.usage()}",
        "```",
        "",
        f"Labels: {', '.join(labels)}",
        "",
    ]
    for split in ("test", "validation"):
        path = RunDir(source).report_path(task, split, "txt")
        if path.is_file():
            lines += [f"## Classification report ({split})", "", "```", path.read_text().rstrip(), "```", ""]
    if result.remote_code:
        lines += ["The head pools the encoder output in a way no stock class does, so the model class ships in",
                  f"`{CUSTOM_MODULE}.py` (plain PyTorch + transformers) and needs `trust_remote_code=True`.", ""]
    return "\n".join(lines)


def export_summary(result: ExportResult) -> str:
    return json.dumps({"path": str(result.path), "architecture": result.architecture,
                       "pipeline": result.usage(), "max_abs_logit_diff": result.max_abs_diff})
