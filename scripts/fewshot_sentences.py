#!/usr/bin/env python
"""Few-shot sentence classification: `adapt` against SetFit on the same support sets.

    python scripts/fewshot_sentences.py --quick --tasks trec_coarse sst2 --methods adapt "adapt + pairs" SetFit
                                            # 3 seeds, 500 test sentences: 16 min on 2 cores
    python scripts/fewshot_sentences.py --json docs/fewshot-sentences.json   # 5 seeds, full test splits

For each task, K and seed, one support set (K train examples per class, drawn by
`nlp_mtl.fewshot.episodes.support_set`, as `nlp-mtl adapt` draws it) is given to every method:

- `adapt`: `nlp-mtl adapt`'s default recipe with a fresh adapter on the pretrained embedded
  MiniLM (the prototype head, then head and adapter fine-tuning);
- `adapt + pairs`: the same after `--pair-rounds 20`, the contrastive stage, on the adapter;
- `adapt + pairs, lr 3e-4`: the same with `--lr 3e-4` (adapter and head, pairs included) instead
  of 1e-3; `..., head only` adds `--pair-head-only`;
- `full + pairs`: `--init full --pair-rounds 20`: pairs train the whole encoder, then head and
  encoder are fine-tuned on the support set (SetFit's end-to-end variant);
- `full + pairs, head only`: `--init full --pair-rounds 20 --pair-head-only`, SetFit's recipe
  inside adapt (pairs train the whole encoder, then only the head is fitted);
- `full + pairs, encoder lr 2e-5`: `full + pairs` with the encoder at SetFit's body learning
  rate (2e-5, in the pairs and after them) instead of adapt's 5e-5;
- `adapt + pairs, houlsby rf4, lr 3e-4`: `adapt + pairs, lr 3e-4` on a fresh Houlsby adapter four
  times as wide as the default (reduction factor 4 instead of 16); `adapt + pairs, lora r16 all`
  (and `..., lr 3e-4`): on a fresh LoRA adapter of rank 16 on every linear layer instead;
- `SetFit` (when the `setfit` package is installed: `pip install -e ".[bench]"`): setfit's
  Trainer on the same encoder's sentence-transformers files, 20 pair iterations, 1 epoch,
  batch 16, logistic-regression head, its defaults otherwise.

Tasks: TREC-6, SST-2, TREC-50 (its classes with fewer than K train questions give all they
have, to every method alike) and `conll_entity_type`, built here from CoNLL-2003: the
sentences whose entities are all of one type, labelled PER, LOC, ORG or MISC.

Scored with macro-F1 on the test split (or its first N sentences with --test-limit / --quick).
Prints mean ± standard deviation over seeds per task and K, and the average over tasks and K.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TASKS = ["trec_coarse", "sst2", "trec_fine", "conll_entity_type"]
# LoRA of rank 16 (alpha 16) on every linear layer of every block.
LORA_ALL = {"rank": 16, "alpha": 16, "target_modules": ["query", "key", "value", "attention_output", "intermediate",
                                                        "ffn_output"]}
# adapt's settings per method (SetFit runs the setfit package instead).
METHODS = {"adapt": {}, "adapt + pairs": {"pair_rounds": 20},
           "adapt + pairs, lr 3e-4": {"pair_rounds": 20, "lr": 3e-4},
           "adapt + pairs, lr 3e-4, head only": {"pair_rounds": 20, "lr": 3e-4, "pair_head_only": True},
           "full + pairs": {"init": "full", "pair_rounds": 20},
           "full + pairs, head only": {"init": "full", "pair_rounds": 20, "pair_head_only": True},
           "full + pairs, encoder lr 2e-5": {"init": "full", "pair_rounds": 20, "encoder_lr": 2e-5},
           # Bigger fresh adapters than adapt's default (Houlsby, reduction factor 16): 'adapter'
           # is the (type, options) the fresh adapter is built from; the rest are AdaptSettings.
           "adapt + pairs, houlsby rf4, lr 3e-4": {"adapter": ("houlsby", {"reduction_factor": 4}),
                                                   "pair_rounds": 20, "lr": 3e-4},
           "adapt + pairs, lora r16 all": {"adapter": ("lora", LORA_ALL), "pair_rounds": 20},
           "adapt + pairs, lora r16 all, lr 3e-4": {"adapter": ("lora", LORA_ALL), "pair_rounds": 20, "lr": 3e-4},
           # SetFit's schedule in the pair stage: warm up over a tenth, then decay to 0.
           "adapt + pairs, linear": {"pair_rounds": 20, "pair_schedule": "linear"},
           "adapt + pairs, lr 3e-4, linear": {"pair_rounds": 20, "lr": 3e-4, "pair_schedule": "linear"},
           "full + pairs, linear": {"init": "full", "pair_rounds": 20, "pair_schedule": "linear"},
           # Every pair within batches of 32 support sentences instead of SetFit's sampled pairs.
           "full + in-batch pairs": {"init": "full", "pair_rounds": 20, "pair_sampling": "in_batch"},
           "adapt + in-batch pairs, lr 3e-4": {"pair_rounds": 20, "lr": 3e-4, "pair_sampling": "in_batch"},
           "SetFit": None}


def build_entity_type_task(directory: Path) -> Path:
    """A sentence task built from CoNLL-2003: sentences whose entities are all of one type
    (PER, LOC, ORG or MISC), labelled with that type; written as JSONL with its spec."""
    from nlp_mtl.config import default_data_root, load_task_spec, resolve_task_path
    from nlp_mtl.data.loading import load_task_data

    data = load_task_data(load_task_spec(resolve_task_path("conll2003_ner")), default_data_root(), {})
    for split in ("train", "test"):
        with (directory / f"entity_type_{split}.jsonl").open("w") as f:
            for row in data.splits[split]:
                types = {tag[2:] for tag in row["tags"] if tag != "O"}
                if len(types) == 1:
                    f.write(json.dumps({"text": " ".join(row["tokens"]), "label": types.pop()}) + "\n")
    spec = directory / "conll_entity_type.yaml"
    spec.write_text("name: conll_entity_type\ntype: sequence_classification\ndata:\n  format: jsonl\n"
                    f"  train: {directory / 'entity_type_train.jsonl'}\n  validation: {{from_train: 0.1, seed: 42}}\n"
                    f"  test: {directory / 'entity_type_test.jsonl'}\nmax_length: 128\nmetric: macro_f1\n")
    return spec


def load_task(name: str, test_limit: int | None, tokenizer, built: Path):
    from nlp_mtl.config import default_data_root, load_task_spec, resolve_task_path
    from nlp_mtl.fewshot.adapt import load_new_task

    path = build_entity_type_task(built) if name == "conll_entity_type" else resolve_task_path(name)
    return load_new_task(load_task_spec(path), default_data_root(), tokenizer, test_limit)


def split_method(method: dict):
    """A method's fresh adapter (None: adapt's default) and its AdaptSettings keywords."""
    from nlp_mtl.model import AdapterSetup

    settings = {k: v for k, v in method.items() if k != "adapter"}
    if "adapter" not in method:
        return None, settings
    kind, options = method["adapter"]
    return AdapterSetup(kind, dict(options), []), settings


def adapt_scores(task, shots: int, seeds: list[int], method: dict, encoder_path: str) -> list[float]:
    from nlp_mtl.backbone import load_encoder, load_tokenizer
    from nlp_mtl.fewshot.adapt import AdaptSettings, few_shot_adapt
    from nlp_mtl.model import MultiTaskModel

    model = MultiTaskModel(load_encoder(encoder_path), [], load_tokenizer(encoder_path))
    adapter, method = split_method(method)
    if adapter is not None:  # else adapt installs its default fresh adapter
        model.install_adapters(adapter)
    settings = AdaptSettings(shots=shots, seeds=tuple(seeds), **{"init": "fresh", **method},
                             allow_short_classes=True)  # TREC-50's rare classes: all they have, for every method
    summary = few_shot_adapt(model, task, settings)
    return [100 * r.metrics["macro_f1"] for r in summary.seeds]


def setfit_scores(task, shots: int, seeds: list[int], encoder_path: str) -> list[float]:
    import datasets
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.metrics import f1_score

    from nlp_mtl.fewshot.episodes import support_set
    from nlp_mtl.fewshot.meta import class_index

    index = class_index(task)
    train_rows, test_rows = task.data.splits["train"], task.data.splits["test"][: len(task.encoded["test"])]
    scores = []
    for seed in seeds:
        indices, _ = support_set(task.labels, index, shots, seed)
        support = datasets.Dataset.from_dict({"text": [train_rows[i]["text"] for i in indices],
                                              "label": [task.labels.index(train_rows[i]["label"]) for i in indices]})
        model = SetFitModel.from_pretrained(encoder_path)
        with tempfile.TemporaryDirectory() as tmp:  # setfit's checkpoints, otherwise ./checkpoints
            args = TrainingArguments(output_dir=tmp, batch_size=16, num_iterations=20, num_epochs=1, seed=seed,
                                     report_to="none", show_progress_bar=False)
            Trainer(model=model, args=args, train_dataset=support).train()
        predicted = np.asarray(model.predict([r["text"] for r in test_rows], batch_size=128))
        gold = [task.labels.index(r["label"]) for r in test_rows]
        scores.append(100 * f1_score(gold, predicted, average="macro"))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 seeds, the first 500 test sentences of each task")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, help="seeds 1..N (default 5, 3 with --quick)")
    parser.add_argument("--test-limit", type=int, help="score on the first N test sentences (default: all; 500 with --quick)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", help="also write every score to this JSON file")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    from nlp_mtl.backbone import load_tokenizer, resolve_backbone
    from nlp_mtl.training.precision import cpu_isa_flags

    hf_logging.set_verbosity_error()
    seeds = list(range(1, (args.seeds or (3 if args.quick else 5)) + 1))
    test_limit = args.test_limit or (500 if args.quick else None)
    methods = list(args.methods)
    if "SetFit" in methods:
        try:
            import setfit  # noqa: F401
        except ImportError:
            print("SetFit column skipped: the setfit package is not installed (pip install -e '.[bench]').")
            methods.remove("SetFit")
    encoder_path = str(resolve_backbone("embedded"))
    tokenizer = load_tokenizer(encoder_path)
    out: dict = {"cpu_isa": cpu_isa_flags(), "seeds": seeds, "test_limit": test_limit, "scores": {}}
    started = time.perf_counter()
    built = Path(tempfile.mkdtemp(prefix="fewshot_sentences_"))
    for name in args.tasks:
        task = load_task(name, test_limit, tokenizer, built)
        for shots in args.shots:
            for method in methods:
                if method == "SetFit":
                    scores = setfit_scores(task, shots, seeds, encoder_path)
                else:
                    scores = adapt_scores(task, shots, seeds, METHODS[method], encoder_path)
                out["scores"].setdefault(name, {}).setdefault(str(shots), {})[method] = scores
                print(f"{name} K={shots} {method}: {np.mean(scores):.1f} ± {np.std(scores):.1f} "
                      f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    print(f"\nmacro-F1 (mean ± std over seeds {seeds[0]}-{seeds[-1]}; test: {test_limit or 'full'})")
    print("| task | K | " + " | ".join(methods) + " |")
    print("|---|---|" + "---:|" * len(methods))
    for name, by_k in out["scores"].items():
        for shots, by_method in by_k.items():
            print(f"| {name} | {shots} | " + " | ".join(
                f"{np.mean(by_method[m]):.1f} ± {np.std(by_method[m]):.1f}" for m in methods) + " |")
    means = {m: np.mean([np.mean(k[m]) for t in out["scores"].values() for k in t.values()]) for m in methods}
    print("| average | | " + " | ".join(f"{means[m]:.1f}" for m in methods) + " |")
    out["seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
