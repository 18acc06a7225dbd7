#!/usr/bin/env python
"""Speed and memory of nlp-mtl against the Hugging Face Trainer, as ratios from ONE run.

    python scripts/bench.py                 # everything, ~10 min on 2 cores
    python scripts/bench.py --quick         # fewer steps; scale test at 50k and 250k sentences
    python scripts/bench.py --device cuda --steps 200 --phases training adapters inference memory
    python scripts/bench.py --phases training --compile --rounds 3 --trainer-modes group_by_length

Every phase runs back to back in this process (memory phases in child processes, so that each
peak is its own) on the same model (the embedded MiniLM), data slice (CoNLL-2003 NER train),
batch size and seed:

1. matmul peak: fp32 and bf16 `nn.functional.linear` GFLOP/s at this model's shapes;
2. training: nlp-mtl's trainer vs `transformers.Trainer` padding to 128, with dynamic padding,
   and with `group_by_length`; samples/s, tokens/s and the encoder's effective GFLOP/s
   (6 x non-embedding parameters x real tokens / s) as a fraction of the matmul peak. With
   `--rounds N` every configuration runs N times, round robin, and its median round is reported
   (on a machine whose CPUs are shared, one configuration run once can be 10-25 % off), with
   the range of its round-by-round ratios to the Trainer's round in the same precision;
3. inference: one encoder pass serving an NER and a classification head vs two models;
4. peak resident memory of training with 1, 2 and 3 tasks, and its growth per task;
5. data at scale: a synthetic NER task of 100k and 1M sentences read, checked and tokenised with
   data.storage memory and disk (time, peak memory over the process baseline), then trained for
   a few steps from the memory-mapped disk cache at both sizes.

`--device cuda` runs phases 1-4 on the GPU instead (the Trainer too), adds bf16 rows for both
trainers, and reports peak GPU memory next to resident memory; the scale phase stays on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 42


def rss_mib() -> float:
    """Peak resident memory of this process so far. Read from /proc: getrusage's ru_maxrss
    survives exec on Linux, so a child started from a big parent would report the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- 1. matmul peak ----------------------------------------------------------------------

# tokens x hidden -> intermediate, and back: the shapes that carry the encoder's FLOPs.
MODEL_SHAPES = ((640, 384, 1536), (640, 1536, 384), (2048, 384, 1536), (2048, 1536, 384))


def matmul_gflops(dtype_name: str, device: str = "cpu", shapes=MODEL_SHAPES, seconds: float = 2.0) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    # The best of several short windows: the peak is what the cores can do, not a mean over
    # moments when something else ran. On a GPU each window ends with a sync, so the count is
    # of finished products, not queued launches.
    for m, k, n in shapes:
        x = torch.randn(m, k, dtype=dtype, device=device)
        w = torch.randn(n, k, dtype=dtype, device=device)
        torch.nn.functional.linear(x, w)
        sync()
        for _ in range(5):
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 20:
                for _ in range(10):
                    torch.nn.functional.linear(x, w)
                calls += 10
                sync()
            best = max(best, 2 * m * k * n * calls / (time.perf_counter() - start) / 1e9)
    return best


def native_bf16(device: str = "cpu") -> bool:
    import torch

    from nlp_mtl.training.precision import cpu_has_native_bf16

    if device == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


# ---- 2. training -------------------------------------------------------------------------

def ner_rows(limit: int):
    from nlp_mtl.config import default_data_root, load_task_spec, resolve_task_path
    from nlp_mtl.data.loading import load_task_data

    spec = load_task_spec(resolve_task_path("conll2003_ner"))
    data = load_task_data(spec, default_data_root(), {"train": limit, "validation": 64, "test": 64})
    return data.splits["train"], data.labels


# The adapters of configs/conll_trec_sst2_lora.yaml.
LORA = {"type": "lora", "lr": 1e-3, "options": {
    "rank": 8, "alpha": 16, "target_modules": ["query", "key", "value", "attention_output", "intermediate", "ffn_output"]}}

# LoRA where peft's default for BERT puts it: query and value only.
LORA_QV = {**LORA, "options": {**LORA["options"], "target_modules": ["query", "value"]}}


def adapter_config(adapters: dict | None):
    from nlp_mtl.config import AdapterConfig
    from nlp_mtl.schema import from_mapping

    return from_mapping(AdapterConfig, adapters or {}, "bench.adapters")


def training_config(examples: int, steps: int, batch_size: int, precision: str, log_every: int,
                    adapters: dict | None = None, compile: bool = False, batch_tokens: int | None = None):
    """The bench's nlp-mtl run: CoNLL-2003 NER on the embedded MiniLM, no evaluation or checkpoints
    (scripts/profile_step.py profiles the same run)."""
    from nlp_mtl.config import DataConfig, ExperimentConfig, TaskEntry, TrainingConfig

    return ExperimentConfig(
        name="bench", tasks=[TaskEntry(spec="conll2003_ner")], adapters=adapter_config(adapters),
        data=DataConfig(limit={"train": examples, "validation": 64, "test": 64}),
        training=TrainingConfig(batch_size=batch_size, steps=steps, log_every=log_every, eval_every=10**6,
                                checkpoint_every=0, log_with="none", seed=SEED, mixed_precision=precision,
                                compile=compile, batch_tokens=batch_tokens),
    )


def bench_nlp_mtl(examples: int, warmup: int, steps: int, batch_size: int, precision: str,
                  adapters: dict | None = None, compile: bool = False, batch_tokens: int | None = None) -> dict:
    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.training import train

    config = training_config(examples, warmup + steps, batch_size, precision, log_every=warmup,
                             adapters=adapters, compile=compile, batch_tokens=batch_tokens)
    meter = warmed_up_meter(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, RunDir(Path(tmp) / "run"), quiet=True, callbacks=[meter])
    seconds, examples, tokens = meter.reading()
    return {"samples_per_s": examples / seconds, "tokens_per_s": tokens / seconds, "tokens_per_sample": tokens / examples}


def warmed_up_meter(warmup: int):
    """A callback that clocks steps ``warmup``+1 onwards from step end to step end, as the
    Trainer's clock below does: the time between steps (callbacks, logging) counts too.
    (Built here: the bench imports torch only where it needs it.)"""
    from nlp_mtl.training.callbacks import Callback

    class WarmedUpMeter(Callback):
        """Warm-up steps hold the one-off costs (allocator growth, kernel selection)."""

        order = -1

        def __init__(self, warmup: int) -> None:
            self.warmup, self.examples, self.tokens = warmup, 0, 0
            self.started = self.ended = 0.0

        def on_step_end(self, engine, micro_batches) -> None:
            if engine.state.step == self.warmup:
                self.started = time.perf_counter()
            elif engine.state.step > self.warmup:
                self.examples += sum(m.examples for m in micro_batches)
                self.tokens += sum(m.tokens for m in micro_batches)
                self.ended = time.perf_counter()

        def reading(self) -> tuple[float, int, int]:
            return self.ended - self.started, self.examples, self.tokens

    return WarmedUpMeter(warmup)


def bench_hf_trainer(rows, labels, mode: str, warmup: int, steps: int, batch_size: int, device: str = "cpu",
                     bf16: bool = False) -> dict:
    import datasets
    import torch
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainerCallback, TrainingArguments, default_data_collator)

    from nlp_mtl.backbone import resolve_backbone

    path = resolve_backbone("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path)
    label2id = {label: i for i, label in enumerate(labels)}
    padding = "max_length" if mode == "pad to 128" else False
    enc = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=128,
                    padding=padding)
    aligned = first_subtoken_labels(enc, rows, label2id)
    dataset = datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                          "labels": aligned})
    real_tokens = sum(map(len, tokenizer([r["tokens"] for r in rows], is_split_into_words=True, truncation=True,
                                          max_length=128)["input_ids"])) / len(rows)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(labels))
    marks: dict[int, float] = {}
    # Real tokens of every batch, in the order the collator builds them (one worker: batch order).
    batch_tokens: list[int] = []

    def counted(collate):
        def collate_and_count(features):
            batch = collate(features)
            batch_tokens.append(int(batch["attention_mask"].sum()))
            return batch
        return collate_and_count

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, warmup + steps):
                if device == "cuda":  # count finished steps, not queued kernels
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=warmup + steps,
                                 learning_rate=5e-5, warmup_steps=warmup, seed=SEED, report_to="none",
                                 save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=device == "cpu", bf16=bf16,
                                 dataloader_num_workers=0, **_group_by_length_kwargs(mode == "group_by_length"))
        collator = counted(default_data_collator if padding else DataCollatorForTokenClassification(tokenizer))
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its own summary dict
            Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                    callbacks=[Clock()]).train()
    seconds = marks[warmup + steps] - marks[warmup]
    # The timed batches' own real tokens: with group_by_length they are not a uniform draw
    # (mega-batches of 50 batches run longest first, and warm-up takes the first of them).
    tokens = sum(batch_tokens[warmup : warmup + steps])
    return {"samples_per_s": batch_size * steps / seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_sample": tokens / (batch_size * steps), "slice_tokens_per_sample": real_tokens}


def first_subtoken_labels(enc, rows, label2id: dict[str, int]) -> list[list[int]]:
    """The usual Trainer recipe for token labels: each word's label on its first sub-token,
    -100 (not scored) on the others and on special tokens."""
    aligned = []
    for i, row in enumerate(rows):
        previous, ids = None, []
        for word in enc.word_ids(i):
            ids.append(-100 if word is None or word == previous else label2id[row["tags"][word]])
            previous = word
        aligned.append(ids)
    return aligned


def _group_by_length_kwargs(on: bool) -> dict:
    """transformers 5 renamed `group_by_length=True` to `train_sampling_strategy="group_by_length"`."""
    import inspect

    from transformers import TrainingArguments

    if "train_sampling_strategy" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"train_sampling_strategy": "group_by_length"} if on else {}
    return {"group_by_length": on}


def encoder_flops_per_token() -> float:
    """6 x non-embedding parameters: forward + backward matmul FLOPs per token."""
    from nlp_mtl.backbone import load_encoder, resolve_backbone

    encoder = load_encoder(resolve_backbone("embedded"))
    return 6 * sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" not in n)


# ---- 3. inference -------------------------------------------------------------------------

def bench_inference(texts: list[str], device: str = "cpu", repeats: int = 3) -> dict:
    import torch

    from nlp_mtl.backbone import load_encoder, load_tokenizer, resolve_backbone
    from nlp_mtl.inference import Predictor
    from nlp_mtl.model import MultiTaskModel, TaskHeadInfo

    path = resolve_backbone("embedded")
    ner = TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER", "I-PER"])
    cls = TaskHeadInfo("topic", "sequence_classification", "sequence_classification", ["a", "b"])
    torch.manual_seed(SEED)
    joint = Predictor(MultiTaskModel(load_encoder(path), [ner, cls], load_tokenizer(path)).to(device), batch_size=64)
    separate = [Predictor(MultiTaskModel(load_encoder(path), [t], load_tokenizer(path)).to(device), batch_size=64)
                for t in (ner, cls)]

    def timed(fn) -> float:
        # Predictor returns Python lists, so every batch already ends on the host: no extra sync.
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    one = timed(lambda: joint.predict(texts))
    two = timed(lambda: [p.predict(texts) for p in separate])
    return {"one_pass_texts_per_s": len(texts) / one, "two_models_texts_per_s": len(texts) / two}


# ---- 4. memory per task (child processes) ---------------------------------------------------

def memory_child(tasks: list[str], examples: int) -> None:
    from nlp_mtl.config import DataConfig, ExperimentConfig, TaskEntry, TrainingConfig
    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.training import train

    adapters = tasks[0] == "adapters"
    tasks = tasks[1:]
    config = ExperimentConfig(
        name="mem", tasks=[TaskEntry(spec=t) for t in tasks], adapters=adapter_config(LORA if adapters else None),
        data=DataConfig(limit={"train": examples, "validation": 64, "test": 64}),
        training=TrainingConfig(batch_size=32, steps=20, log_every=10, checkpoint_every=0, log_with="none", seed=SEED),
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(config, RunDir(Path(tmp) / "run"), quiet=True)
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"peak_mib": rss_mib(), "gpu_peak_mib": gpu}))


# ---- 5. data at scale (child processes) -----------------------------------------------------

SCALE_WORDS = ("the a met in visited saw went to and from today with said after before was new "
               "old group talks market shares rose fell percent year week").split()
SCALE_NAMES = "alice bob carol dave erin frank paris berlin rome madrid oslo vienna reuters".split()


def write_synthetic_ner(directory: Path, examples: int, seed: int = SEED) -> Path:
    """A CoNLL NER task of ``examples`` synthetic sentences (5-25 words), and its spec file."""
    import random

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, n: int) -> None:
        with (directory / name).open("w") as f:
            for _ in range(n):
                for _ in range(rng.randint(5, 25)):
                    if rng.random() < 0.15:
                        f.write(f"{rng.choice(SCALE_NAMES)} NNP B-NP B-{rng.choice(('PER', 'LOC', 'ORG'))}\n")
                    else:
                        f.write(f"{rng.choice(SCALE_WORDS)} NN I-NP O\n")
                f.write("\n")

    write("train.txt", examples)
    write("test.txt", 500)
    spec = directory / "synthetic_ner.yaml"
    spec.write_text("name: synthetic_ner\ntype: token_classification\nmax_length: 64\n"
                    "data: {format: conll, train: train.txt, validation: {from_train: 0.001, seed: 1}, "
                    "test: test.txt, columns: {tokens: 0, tags: 3}}\n")
    return spec


def scale_child(spec_path: str, storage: str, cache: str) -> None:
    """Read, check and tokenise one synthetic task; time and peak memory over this process's baseline."""
    from nlp_mtl.backbone import load_tokenizer, resolve_backbone
    from nlp_mtl.config import load_task_spec
    from nlp_mtl.data.pipeline import encode_all, load_all

    tokenizer = load_tokenizer(resolve_backbone("embedded"))
    spec = load_task_spec(Path(spec_path))
    baseline = rss_mib()
    start = time.perf_counter()
    (task,) = encode_all(load_all([spec], Path(spec_path).parent, storage=storage, cache_dir=Path(cache)), tokenizer,
                         quiet=True, cache_dir=Path(cache))
    seconds = time.perf_counter() - start
    train = task.encoded["train"]
    print(json.dumps({"seconds": seconds, "examples": len(train), "tokens": int(train.lengths.sum()),
                      "baseline_mib": baseline, "peak_over_baseline_mib": rss_mib() - baseline}))


def scale_train_child(spec_path: str, cache: str, steps: int) -> None:
    """Train from the disk cache (tokenised already by scale_child): peak memory over the baseline."""
    from nlp_mtl.config import DataConfig, ExperimentConfig, TaskEntry, TrainingConfig
    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.training import train

    config = ExperimentConfig(
        name="scale", tasks=[TaskEntry(spec=spec_path)],
        data=DataConfig(storage="disk", cache_dir=cache, limit={"validation": 200, "test": 200}),
        training=TrainingConfig(batch_size=32, steps=steps, evaluations=1, log_every=steps, checkpoint_every=0,
                                log_with="none", seed=SEED),
    )
    baseline = rss_mib()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(config, RunDir(Path(tmp) / "run"), quiet=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "baseline_mib": baseline,
                      "peak_over_baseline_mib": rss_mib() - baseline}))


def child(kind: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, f"--child-{kind}", *args], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
    if done.returncode:
        sys.exit(f"bench child {kind} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- main ---------------------------------------------------------------------------------

PHASES = ["training", "adapters", "inference", "memory", "scale"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps; scale test at 50k and 250k sentences")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=4000, help="CoNLL-2003 training sentences to train on")
    parser.add_argument("--json", help="also write all numbers to this JSON file")
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES, help="run only these phases")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where phases 1-4 run, both trainers included (default: cpu)")
    parser.add_argument("--steps", type=int, help="timed training steps (default: whole mega-batches of the Trainer's group_by_length, at least 50; 15 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up steps (default 10, 5 with --quick)")
    parser.add_argument("--compile", action="store_true",
                        help="also train with training.compile: true (adds the compile time to the warm-up)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every training configuration this many times, round robin, and report each "
                             "one's median (machines that share their CPUs vary 10-25%% from run to run)")
    parser.add_argument("--trainer-modes", nargs="+", choices=list(TRAINER_MODES), default=list(TRAINER_MODES),
                        help="which stock Trainer settings to run (group_by_length, the baseline, always runs)")
    parser.add_argument("--child-memory", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child-scale", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-scale-train", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        return memory_child(args.child_memory, args.examples)
    if args.child_scale:
        return scale_child(*args.child_scale)
    if args.child_scale_train:
        return scale_train_child(args.child_scale_train[0], args.child_scale_train[1], int(args.child_scale_train[2]))

    device = args.device
    if device == "cpu":
        # Every phase on the CPU, the Trainer included: ratios across devices would mean nothing.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch
    from transformers.utils import logging as hf_logging

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench: --device cuda, but PyTorch sees no CUDA GPU here.")
    hf_logging.set_verbosity_error()
    # group_by_length sorts mega-batches of batches longest first (transformers: min(50, examples //
    # (4 x batch)) batches each), so a window of whole mega-batches times the Trainer on
    # sentences as long as an epoch's; by default, the fewest whole ones that make >= 50 steps.
    mega = max(1, min(50, args.examples // (4 * args.batch_size)))
    warmup, steps = (5, 15) if args.quick else (10, mega * -(-50 // mega))
    warmup, steps = args.warmup or warmup, args.steps or steps
    from nlp_mtl.training.precision import cpu_isa_flags

    out: dict = {"machine": {"device": device, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                             "cpu_isa": cpu_isa_flags(),
                             "threads": torch.get_num_threads(), "native_bf16": native_bf16(device),
                             "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                             "torch": torch.__version__}}
    print(f"machine: {out['machine']}", flush=True)

    out["matmul_gflops"] = {"fp32": matmul_gflops("float32", device), "bf16": matmul_gflops("bfloat16", device)}
    print(f"1. matmul peak at this model's shapes: fp32 {out['matmul_gflops']['fp32']:.1f} GFLOP/s, bf16 "
          f"{out['matmul_gflops']['bf16']:.1f} GFLOP/s ({out['matmul_gflops']['bf16'] / out['matmul_gflops']['fp32']:.2f}x"
          " fp32)", flush=True)
    if device == "cuda":
        # The small shapes above leave most of a big GPU idle; the card's own ceiling, for scale.
        big = ((8192, 8192, 8192),)
        out["matmul_gflops_8192"] = {p: matmul_gflops(p, device, big) for p in ("float32", "bfloat16")}
        print(f"   8192^3 products: fp32 {out['matmul_gflops_8192']['float32']:.0f} GFLOP/s, bf16 "
              f"{out['matmul_gflops_8192']['bfloat16']:.0f} GFLOP/s", flush=True)
    precisions = ["no", "bf16"] if native_bf16(device) else ["no"]
    if "bf16" not in precisions:
        print("   bf16 training skipped: this CPU has no native bf16 (no avx512_bf16/amx), so bf16 matmuls are "
              "emulated and slower than fp32", flush=True)

    rows, labels = ner_rows(args.examples)
    flops_per_token = encoder_flops_per_token()
    train_rows = {}
    if "adapters" in args.phases:
        full = bench_nlp_mtl(args.examples, warmup, steps, args.batch_size, "no")
        lora = bench_nlp_mtl(args.examples, warmup, steps, args.batch_size, "no", adapters=LORA)
        lora_qv = bench_nlp_mtl(args.examples, warmup, steps, args.batch_size, "no", adapters=LORA_QV)
        ratio = full["samples_per_s"] / lora["samples_per_s"]
        ratio_qv = full["samples_per_s"] / lora_qv["samples_per_s"]
        out["adapters"] = {"full_fine_tuning": full, "lora_frozen_encoder": lora, "step_time_ratio": ratio,
                           "lora_query_value": lora_qv, "step_time_ratio_query_value": ratio_qv}
        print(f"2b. adapter-only training step, encoder frozen, vs full fine-tuning {full['samples_per_s']:.1f} "
              f"samples/s:\n    LoRA r=8 on all linear layers: {lora['samples_per_s']:.1f} samples/s, step time "
              f"{ratio:.2f}x the full step\n    LoRA r=8 on query and value: {lora_qv['samples_per_s']:.1f} "
              f"samples/s, step time {ratio_qv:.2f}x", flush=True)
    if "training" in args.phases:
        if args.rounds < 1:
            sys.exit("bench: --rounds must be at least 1")
        runs = training_runs(args, precisions, rows, labels, warmup, steps, device)
        train_rows = run_rounds(runs, args.rounds)
        out["training_rounds"] = args.rounds
    if "training" in args.phases:
        training_table(train_rows, out, flops_per_token, args.batch_size, steps, warmup)
    if "inference" in args.phases:
        inference_phase(rows, out, device)
    if "memory" in args.phases:
        memory_phase(out)
    if "scale" in args.phases:
        scale_phase(out, args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


TRAINER_MODES = {"pad128": "pad to 128", "dynamic": "dynamic padding", "group_by_length": "group_by_length"}


def training_runs(args, precisions: list[str], rows, labels, warmup: int, steps: int, device: str) -> dict:
    """Each training configuration by name, as a call that runs it once and returns its row."""
    runs = {}
    for precision in precisions:
        for compiled in (False, True) if args.compile else (False,):
            name = "nlp-mtl" + (" compiled" if compiled else "") + (" bf16" if precision == "bf16" else "")
            runs[name] = functools.partial(bench_nlp_mtl, args.examples, warmup, steps, args.batch_size, precision,
                                           compile=compiled)
    modes = [TRAINER_MODES[m] for m in TRAINER_MODES if m in args.trainer_modes or m == "group_by_length"]
    trainer_runs = [(mode, False) for mode in modes]
    if "bf16" in precisions:  # the Trainer's fastest stock setting then includes bf16=True
        trainer_runs.append(("group_by_length", True))
    for mode, bf16 in trainer_runs:
        runs[f"Trainer, {mode}" + (" bf16" if bf16 else "")] = functools.partial(
            bench_hf_trainer, rows, labels, mode, warmup, steps, args.batch_size, device, bf16)
    return runs


def run_rounds(runs: dict, rounds: int) -> dict:
    """Every configuration once per round, in the same order; a row is the median round (by
    samples/s; the lower middle one for an even count) of its configuration, with every round's speeds kept beside it. Round robin, so
    that a slow spell of a shared machine falls on all configurations rather than on one."""
    measured: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            measured[name].append(run())
            tag = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
            print(f"2. {name}: {measured[name][-1]['samples_per_s']:.1f} samples/s{tag}", flush=True)
    rows = {}
    for name, results in measured.items():
        ranked = sorted(results, key=lambda row: row["samples_per_s"])
        rows[name] = dict(ranked[(len(ranked) - 1) // 2])
        if rounds > 1:
            rows[name]["rounds_samples_per_s"] = [row["samples_per_s"] for row in results]
            rows[name]["rounds_tokens_per_s"] = [row["tokens_per_s"] for row in results]
    return rows


def training_table(train_rows: dict, out: dict, flops_per_token: float, batch_size: int, steps: int, warmup: int) -> None:
    # Against the Trainer's fastest stock setting in the same precision; by samples/s and by real
    # tokens/s, since the two trainers' timed batches hold different sentences.
    baseline = {p: train_rows.get(f"Trainer, group_by_length{p}", train_rows["Trainer, group_by_length"])
                for p in ("", " bf16")}
    print(f"\ntraining, CoNLL-2003 NER, batch {batch_size}, {steps} timed steps after {warmup}:")
    print(f"{'configuration':28s} {'samples/s':>10s} {'tokens/s':>10s} {'tok/sample':>10s} {'GFLOP/s':>8s} "
          f"{'% peak':>7s} {'vs Trainer+gbl: samples/s':>26s} {'tokens/s':>9s}")
    for name, row in train_rows.items():
        precision = "bf16" if name.endswith("bf16") else "fp32"
        base = baseline[" bf16" if precision == "bf16" else ""]
        row["gflops"] = flops_per_token * row["tokens_per_s"] / 1e9
        row["fraction_of_peak"] = row["gflops"] / out["matmul_gflops"][precision]
        row["vs_trainer_group_by_length"] = row["samples_per_s"] / base["samples_per_s"]
        row["vs_trainer_group_by_length_tokens"] = row["tokens_per_s"] / base["tokens_per_s"]
        rounds, spread = row.get("rounds_samples_per_s"), ""
        if rounds:
            spread = f"   rounds {min(rounds):.1f}-{max(rounds):.1f}"
        if rounds and row is not base:
            # Round r against the Trainer's round r: run back to back, the two share a slow spell
            # of a shared machine, so this range shows how far a single run can be off.
            paired = [ours / trainer for ours, trainer in zip(rounds, base["rounds_samples_per_s"], strict=True)]
            row["rounds_vs_trainer_group_by_length"] = paired
            spread += f", per round {min(paired):.2f}x-{max(paired):.2f}x"
        print(f"{name:28s} {row['samples_per_s']:10.1f} {row['tokens_per_s']:10.0f} {row['tokens_per_sample']:10.1f} "
              f"{row['gflops']:8.1f} {100 * row['fraction_of_peak']:6.1f}% {row['vs_trainer_group_by_length']:25.2f}x "
              f"{row['vs_trainer_group_by_length_tokens']:8.2f}x{spread}")
    out["training"] = train_rows


def inference_phase(rows: list, out: dict, device: str = "cpu") -> None:
    texts = [" ".join(r["tokens"]) for r in rows[:512]]
    out["inference"] = bench_inference(texts, device)
    ratio = out["inference"]["one_pass_texts_per_s"] / out["inference"]["two_models_texts_per_s"]
    out["inference"]["ratio"] = ratio
    print(f"\n3. inference, NER + classification on {len(texts)} texts: one pass "
          f"{out['inference']['one_pass_texts_per_s']:.1f} texts/s, two models "
          f"{out['inference']['two_models_texts_per_s']:.1f} texts/s: {ratio:.2f}x", flush=True)


def memory_phase(out: dict) -> None:
    out["memory_peak_mib"], gpu_peaks = {}, {}
    for kind in ("full", "adapters"):
        memory, gpu = {}, {}
        for tasks in (["conll2003_ner"], ["conll2003_ner", "trec_coarse"], ["conll2003_ner", "trec_coarse", "sst2"]):
            peaks = child("memory", kind, *tasks)
            memory[len(tasks)], gpu[len(tasks)] = peaks["peak_mib"], peaks.get("gpu_peak_mib")
        out["memory_peak_mib"][kind] = memory
        if gpu[1] is not None:
            gpu_peaks[kind] = gpu
            print(f"\n4. peak GPU memory allocated, {kind}: 1 task {gpu[1]:.0f} MiB, 2 tasks {gpu[2]:.0f} MiB, 3 tasks "
                  f"{gpu[3]:.0f} MiB: +{(gpu[3] - gpu[1]) / 2:.0f} MiB per added task", flush=True)
        if gpu_peaks:
            out["gpu_memory_peak_mib"] = gpu_peaks
        growth = (memory[3] - memory[1]) / 2
        label = "full fine-tuning" if kind == "full" else "LoRA adapters, frozen encoder"
        print(f"\n4. peak resident memory, {label}: 1 task {memory[1]:.0f} MiB, 2 tasks {memory[2]:.0f} MiB, "
              f"3 tasks {memory[3]:.0f} MiB: +{growth:.0f} MiB per added task (one shared encoder; each task adds "
              f"its head{', adapter' if kind == 'adapters' else ''} and its tokenised data)", flush=True)


def scale_phase(out: dict, quick: bool) -> None:
    sizes = (50_000, 250_000) if quick else (100_000, 1_000_000)
    steps = 30
    results: dict = {"task": "synthetic CoNLL NER, 5-25 words a sentence, max_length 64", "sizes": list(sizes)}
    with tempfile.TemporaryDirectory() as tmp:
        specs = {n: write_synthetic_ner(Path(tmp) / f"n{n}", n) for n in sizes}
        cache = str(Path(tmp) / "cache")
        print(f"\n5. data at scale: {results['task']}", flush=True)
        for storage in ("memory", "disk"):
            for n in sizes:
                row = results[f"preprocess_{storage}_{n}"] = child("scale", str(specs[n]), storage, cache)
                print(f"   preprocess, storage {storage:6}: {n:>9,} sentences ({row['tokens']:,} sub-tokens) in "
                      f"{row['seconds']:.1f} s ({n / row['seconds']:,.0f}/s); peak {row['peak_over_baseline_mib']:.0f} "
                      f"MiB over the process baseline ({row['baseline_mib']:.0f} MiB)", flush=True)
            small, large = results[f"preprocess_{storage}_{sizes[0]}"], results[f"preprocess_{storage}_{sizes[1]}"]
            results[f"time_ratio_{storage}"] = large["seconds"] / small["seconds"]
            print(f"   storage {storage}: {results[f'time_ratio_{storage}']:.2f}x the time for "
                  f"{sizes[1] / sizes[0]:.0f}x the data", flush=True)
        for n in sizes:
            row = results[f"train_disk_{n}"] = child("scale-train", str(specs[n]), cache, str(steps))
            print(f"   train {steps} steps from the disk cache, {n:>9,} sentences: peak "
                  f"{row['peak_over_baseline_mib']:.0f} MiB over the baseline ({row['seconds']:.1f} s)", flush=True)
    out["scale"] = results


if __name__ == "__main__":
    main()
