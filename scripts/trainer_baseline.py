#!/usr/bin/env python
"""The three stock Hugging Face `Trainer` runs that the main job replaces, back to back.

    python scripts/trainer_baseline.py                     # bf16 where the hardware has it natively
    python scripts/trainer_baseline.py --precision fp32 --json trainer.json

One model per task, as a user without nlp-mtl would train them: `AutoModelForTokenClassification`
for CoNLL-2003 NER (3 epochs; the label on each word's first sub-token) and
`AutoModelForSequenceClassification` for TREC-6 (3 epochs) and SST-2 (1 epoch), on the embedded
MiniLM; batch 32, lr 5e-5, linear decay with 10 % warmup, `group_by_length`, max lengths and
train/validation splits as the built-in specs (so the same training examples as the main job),
seed 42. Scored on the test splits the same way nlp-mtl scores them (seqeval strict IOB2 entity
F1; accuracy). Prints each task's score and wall time, and the three runs' total.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

EPOCHS = {"conll2003_ner": 3, "trec_coarse": 3, "sst2": 1}


def load(task: str, limit: int | None):
    from nlp_mtl.config import default_data_root, load_task_spec, resolve_task_path
    from nlp_mtl.data.loading import load_task_data

    spec = load_task_spec(resolve_task_path(task))
    return spec, load_task_data(spec, default_data_root(), {"train": limit, "test": limit} if limit else {})


def encode(tokenizer, spec, rows, labels):
    import datasets

    from bench import first_subtoken_labels  # scripts/ is on sys.path when this runs as a script

    index = {label: i for i, label in enumerate(labels)}
    if spec.type == "token_classification":
        enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True,
                        max_length=spec.max_length)
        return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                           "labels": first_subtoken_labels(enc, rows, index)}), enc
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=spec.max_length)
    return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                       "labels": [index[r["label"]] for r in rows]}), enc


def score(spec, rows, labels, predictions, enc) -> float:
    import numpy as np

    if spec.type == "token_classification":
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOB2

        gold, pred = [], []
        for i, row in enumerate(rows):
            argmax = np.asarray(predictions[i]).argmax(-1)
            words = ["O"] * len(row["tokens"])  # words cut off by max_length count as O
            previous = None
            for position, word in enumerate(enc.word_ids(i)):
                if word is not None and word != previous:
                    words[word] = labels[int(argmax[position])]
                previous = word
            gold.append(list(row["tags"]))
            pred.append(words)
        return 100 * f1_score(gold, pred, mode="strict", scheme=IOB2)
    argmax = np.asarray(predictions).argmax(-1)
    return 100 * float(np.mean([labels[int(p)] == r["label"] for p, r in zip(argmax, rows)]))


def train_one(task: str, bf16: bool, seed: int, limit: int | None = None) -> dict:
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainingArguments)

    from nlp_mtl.backbone import resolve_backbone

    from bench import _group_by_length_kwargs  # scripts/ is on sys.path when this runs as a script

    started = time.perf_counter()
    spec, data = load(task, limit)
    path = resolve_backbone("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path)
    labels = data.labels
    train_set, _ = encode(tokenizer, spec, data.splits["train"], labels)
    test_rows = data.splits["test"]
    test_set, test_enc = encode(tokenizer, spec, test_rows, labels)
    token = spec.type == "token_classification"
    model_class = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    model = model_class.from_pretrained(path, num_labels=len(labels))
    collator = (DataCollatorForTokenClassification if token else DataCollatorWithPadding)(tokenizer)
    warmup = int(0.1 * EPOCHS[task] * -(-len(train_set) // 32))  # 10 % of the steps (no warmup_ratio in transformers 5)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=32, per_device_eval_batch_size=128,
                                 num_train_epochs=EPOCHS[task], learning_rate=5e-5, warmup_steps=warmup,
                                 weight_decay=0.01, seed=seed, report_to="none", save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                                 bf16=bf16, dataloader_num_workers=0, **_group_by_length_kwargs(True))
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
            # A Trainer with group_by_length length-groups its prediction order too (transformers 5),
            # so predictions would not line up with the test rows: predict with one that does not.
            plain = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=128, report_to="none",
                                      disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=bf16,
                                      dataloader_num_workers=0)
            predictions = Trainer(model=trainer.model, args=plain, data_collator=collator).predict(test_set).predictions
    if token:  # padded per eval batch to different widths: cut each row back to its length
        predictions = [p[: len(ids)] for p, ids in zip(predictions, test_set["input_ids"])]
    return {"test": score(spec, test_rows, labels, predictions, test_enc), "seconds": time.perf_counter() - started,
            "epochs": EPOCHS[task]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 where native (as training.mixed_precision: auto), else fp32")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, help="train and test on the first N examples of each task (a quick check)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    from nlp_mtl.training.precision import cpu_has_native_bf16, cpu_isa_flags

    hf_logging.set_verbosity_error()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cpu_has_native_bf16())
    out = {"cpu_isa": cpu_isa_flags(), "bf16": bf16, "tasks": {}}
    for task in EPOCHS:
        out["tasks"][task] = train_one(task, bf16, args.seed, args.limit)
        r = out["tasks"][task]
        print(f"{task}: test {r['test']:.2f} ({r['epochs']} epochs) in {r['seconds'] / 60:.1f} min", flush=True)
    out["total_seconds"] = sum(r["seconds"] for r in out["tasks"].values())
    print(f"three Trainer runs, {'bf16' if bf16 else 'fp32'}: {out['total_seconds'] / 60:.1f} min in all "
          f"(CPU: {', '.join(out['cpu_isa'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
