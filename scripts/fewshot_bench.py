#!/usr/bin/env python
"""Few-shot benchmark: leave tasks out, compare five starting points for a new task.

For each split, the *training* tasks are used twice, with the same frozen encoder:
  1. multi-task training of ONE adapter shared by all training tasks (nlp-mtl train);
  2. meta-training (nlp-mtl meta-train) of an adapter initialisation, starting from (1), on
     episodes of the training tasks and (--masked-words) masked-word episodes from their text.
Then every held-out task is learnt from K examples per class (K in --shots), once per seed,
from each of:
  (a) fresh   a new adapter on the pretrained encoder
  (b) mtl     the shared adapter from (1)
  (c) meta    the meta-learned initialisation from (2)
  (d) full    full fine-tuning of the encoder (no adapter)
  (e) auto    `adapt --init auto` (adapt's default): per seed, (c) or (a), whichever adapts
              better in 2-fold cross-validation on the support set
  (g) metasgd (2) with `meta.learn_inner_lr` (Meta-SGD): the start and a learning rate per
              adapter tensor, meta-learnt together; `adapt --update rule` starts there, unscaled,
              and adapts by the learnt rule (inner-steps full-batch SGD steps), not the AdamW recipe
  (f) setfit  SetFit on the pretrained encoder, same support sets (sentence tasks only; needs the
              `bench` extra: pip install -e ".[bench]"), as scripts/fewshot_sentences.py runs it
(b), (c) and (e) start from their trained adapter's delta times --init-scale (default 0.5,
as `adapt`); such rows are labelled e.g. "meta x0.5" (1 gives the unscaled rows).
With --token-heads linear nearest, token tasks are also scored by `adapt --token-head nearest`
(rows "+nn"): after the same adaptation, each token takes the label of its most similar
support token (NNShot) instead of the linear head's.
Heads always start from class prototypes; the adaptation recipe (optimizer, steps, learning
rate) is the same for (a)-(c) and (e), and by default it is `nlp-mtl adapt`'s own (epochs,
step cap, batch size), scored on the whole test split unless --test-limit. Scores: entity F1
for IOB tagging (chunking, NER), macro F1 otherwise (POS tags, question types, sentiment).
The table goes to stdout and --out (JSON). On a GPU (--device, default cuda when there is one)
the three splits take tens of minutes (faster run as one process per split and init); on 2
CPU cores, many hours.

    python scripts/fewshot_bench.py --split syntax_sst2 --shots 8 16 --inits fresh mtl meta auto --out fewshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # fewshot_sentences: the SetFit baseline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPLITS = {
    # meta-train tasks -> held-out tasks
    "ner_trec_sst2": (["conll2003_ner", "trec_coarse", "sst2"], ["conll2003_chunk", "conll2003_pos", "trec_fine"]),
    "syntax_sst2": (["conll2003_pos", "conll2003_chunk", "sst2"], ["conll2003_ner", "trec_coarse"]),
    "ner_pos_trecfine": (["conll2003_ner", "conll2003_pos", "trec_fine"], ["conll2003_chunk", "sst2"]),
}
INITS = ("fresh", "mtl", "meta", "full", "auto", "metasgd", "setfit")


def meta_name(args: argparse.Namespace, learn_rule: bool = False) -> str:
    """Meta-learned inits made with different settings are kept apart and reused."""
    name = f"meta_{args.algorithm}_{args.meta_episodes}ep_{args.inner_steps}in"
    name += f"_mw{args.masked_words:g}" if args.masked_words else ""
    name += f"_cl{args.masked_word_clusters}" if args.masked_words and args.masked_word_clusters else ""
    name += "_warp" if args.warp_layers else ""
    return name + ("_metasgd" if learn_rule else "")


def train_stages(split: str, args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    from nlp_mtl.config import ExperimentConfig
    from nlp_mtl.fewshot.meta import meta_train
    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.schema import from_mapping
    from nlp_mtl.training import train

    train_tasks, _ = SPLITS[split]
    base = {
        "name": f"fewshot_{split}",
        "backbone": {"name": "embedded"},
        "tasks": [{"spec": t, "sampling_weight": 0.3} if t == "sst2" else t for t in train_tasks],
        "adapters": {"type": args.adapter, "options": json.loads(args.adapter_options), "lr": 1e-3,
                     "groups": {"shared": train_tasks}},
        "training": {"batch_size": 32, "steps": args.mtl_steps, "evaluations": 1, "log_with": "none",
                     "checkpoint_every": 0, "seed": 42},
        "data": {"limit": {"validation": 500, "test": 10}},
        "meta": {"algorithm": args.algorithm, "episodes": args.meta_episodes, "init_from": str(work / "mtl"),
                 "init_group": "shared", "ways": 5, "shots": 4, "query_shots": 4, "inner_steps": args.inner_steps,
                 "masked_words": args.masked_words, "masked_word_clusters": args.masked_word_clusters,
                 "warp_layers": args.warp_layers,
                 "log_every": 25},
    }
    if args.data_root:
        base["data"]["root"] = args.data_root
    config = from_mapping(ExperimentConfig, base, "fewshot_bench")
    mtl, meta, metasgd = RunDir(work / "mtl"), RunDir(work / meta_name(args)), RunDir(work / meta_name(args, True))
    if not mtl.finished_path.exists():
        started = time.perf_counter()
        train(config, mtl, quiet=not args.verbose, overwrite=True)
        print(f"[{split}] multi-task shared adapter: {args.mtl_steps} steps, {time.perf_counter() - started:.0f} s")
    stages = [(meta, config, {"meta", "auto"})]
    stages.append((metasgd, replace(config, meta=replace(config.meta, learn_inner_lr=True)), {"metasgd"}))
    for run, stage_config, used_by in stages:
        if run.finished_path.exists() or not used_by & set(args.inits):
            continue
        result = meta_train(stage_config, run, quiet=not args.verbose, overwrite=True)
        first, last = result.history[0], result.history[-1]
        print(f"[{split}] meta-training ({run.path.name}, {args.meta_episodes} episodes): {result.seconds:.0f} s; "
              f"query acc after adaptation {first['query_acc_after']:.3f} -> {last['query_acc_after']:.3f}")
    return mtl.path, meta.path, metasgd.path


def run_split(split: str, args: argparse.Namespace) -> list[dict]:
    from nlp_mtl.config import default_data_root, load_task_spec, resolve_task_path
    from nlp_mtl.fewshot.adapt import AdaptSettings, few_shot_adapt, load_new_task, scoring_head
    from nlp_mtl.model import MultiTaskModel

    work = Path(args.work_dir) / split
    mtl_dir, meta_dir, metasgd_dir = train_stages(split, args, work)
    root = Path(args.data_root).resolve() if args.data_root else default_data_root()
    held_out = args.tasks or SPLITS[split][1]
    sources = {"fresh": (mtl_dir, "fresh"), "mtl": (mtl_dir, "shared"), "meta": (meta_dir, "meta"),
               "full": (mtl_dir, "full"), "auto": (meta_dir, "auto"), "metasgd": (metasgd_dir, "meta")}
    rows = []
    runs = [(init, head) for init in args.inits for head in (args.token_heads if init != "setfit" else ["linear"])]
    for init, token_head in runs:
        if init == "setfit":
            rows += setfit_rows(split, held_out, root, args)
            continue
        source, group = sources[init]
        model = MultiTaskModel.from_pretrained(source, device=args.device)
        for task_name in held_out:
            task = load_new_task(load_task_spec(resolve_task_path(task_name)), root, model.tokenizer, args.test_limit)
            if token_head != scoring_head(AdaptSettings(token_head=token_head), task):
                continue  # sentence tasks have one head; their row is the 'linear' run's
            for shots in args.shots:
                settings = AdaptSettings(shots=shots, seeds=tuple(range(1, args.seeds + 1)), init=group,
                                         init_scale=args.init_scale, epochs=args.epochs, max_steps=args.max_steps,
                                         batch_size=args.batch_size, allow_short_classes=True,
                                         update="rule" if init == "metasgd" else "recipe", token_head=token_head)
                summary = few_shot_adapt(model, task, settings, source=str(source))
                if task.name in model.tasks:  # 'full' leaves nothing behind
                    model.remove_task(task.name)
                values = [s.metrics[summary.metric] for s in summary.seeds]
                # The bench's name for the init, adapt's for the scale; '+nn': scored by nearest support token.
                label = init + summary.scale_suffix + ("+nn" if summary.token_head == "nearest" else "")
                row = {"split": split, "task": task_name, "shots": shots, "init": label, "init_scale": summary.init_scale,
                       "metric": summary.metric,
                       "mean": float(np.mean(values)), "std": float(np.std(values)), "values": values,
                       "seconds": round(summary.seconds, 1)}
                if init == "auto":
                    row["chosen"] = [s.init for s in summary.seeds]
                rows.append(row)
                print(f"[{split}] {task_name:16s} K={shots:<3d} {label:10s} {summary.metric} "
                      f"{100 * row['mean']:6.2f} ± {100 * row['std']:5.2f}  ({summary.seconds:.0f} s)"
                      f"{summary.choices()}", flush=True)
    return rows


def setfit_rows(split: str, held_out: list[str], root: Path, args: argparse.Namespace) -> list[dict]:
    """SetFit on the held-out sentence tasks, on the support sets adapt draws."""
    from fewshot_sentences import setfit_scores

    from nlp_mtl.backbone import load_tokenizer, resolve_backbone
    from nlp_mtl.config import load_task_spec, resolve_task_path
    from nlp_mtl.fewshot.adapt import load_new_task, one_label_per_example

    encoder = resolve_backbone("embedded")
    rows = []
    for task_name in held_out:
        task = load_new_task(load_task_spec(resolve_task_path(task_name)), root, load_tokenizer(encoder), args.test_limit)
        if not one_label_per_example(task):
            continue
        for shots in args.shots:
            started = time.perf_counter()
            values = [v / 100 for v in setfit_scores(task, shots, list(range(1, args.seeds + 1)), encoder)]
            rows.append({"split": split, "task": task_name, "shots": shots, "init": "setfit", "init_scale": None,
                         "metric": "macro_f1", "mean": float(np.mean(values)), "std": float(np.std(values)),
                         "values": values, "seconds": round(time.perf_counter() - started, 1)})
            print(f"[{split}] {task_name:16s} K={shots:<3d} setfit     macro_f1 {100 * rows[-1]['mean']:6.2f} ± "
                  f"{100 * rows[-1]['std']:5.2f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    names = {"fresh": "fresh adapter (a)", "mtl": "MTL adapter (b)", "meta": "meta-learned (c)", "full": "full FT (d)",
             "auto": "auto: (c) or (a) (e)", "setfit": "SetFit (f)", "metasgd": "Meta-SGD (g)"}
    present = {r["init"] for r in rows}  # e.g. 'meta x0.5': the bench's init, then adapt's scale suffix
    labels = sorted(present, key=lambda label: (INITS.index(label.split(" ")[0].removesuffix("+nn")), label))

    def name(label: str) -> str:
        base, _, scale = label.partition(" ")
        nearest = base.endswith("+nn") or scale.endswith("+nn")
        base, scale = base.removesuffix("+nn"), scale.removesuffix("+nn")
        return names[base] + (f" {scale}" if scale else "") + (", nearest token" if nearest else "")

    lines = ["| split | held-out task | metric | K | " + " | ".join(name(i) for i in labels) + " |",
             "|---|---|---|---|" + "---|" * len(labels)]
    keys = sorted({(r["split"], r["task"], r["shots"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for split, task, shots in keys:
        cells = []
        metric = ""
        for init in labels:
            found = [r for r in rows if (r["split"], r["task"], r["shots"], r["init"]) == (split, task, shots, init)]
            if found:
                metric = found[0]["metric"]
                cells.append(f"{100 * found[0]['mean']:.1f} ± {100 * found[0]['std']:.1f}")
            else:
                cells.append("-")
        lines.append(f"| {split} | {task} | {metric} | {shots} | " + " | ".join(cells) + " |")
    for shots in sorted({r["shots"] for r in rows}):
        means = {init: [r["mean"] for r in rows if r["shots"] == shots and r["init"] == init] for init in labels}
        cells = [f"{100 * np.mean(v):.1f}" if v else "-" for v in means.values()]
        lines.append(f"| all | average | | {shots} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from nlp_mtl.devices import default_device
    from nlp_mtl.errors import UserError
    from nlp_mtl.fewshot.adapt import AdaptSettings

    defaults = AdaptSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", action="append", choices=sorted(SPLITS), help="(repeatable; default: all)")
    parser.add_argument("--tasks", nargs="+", help="held-out tasks to test (default: the split's)")
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS[:-1]),
                        help="starting points to compare (default: all but setfit)")
    # Adaptation defaults are `nlp-mtl adapt`'s, so the table measures what users get.
    parser.add_argument("--token-heads", nargs="+", choices=["linear", "nearest"], default=["linear"],
                        help="token tasks: score with adapt's linear head, its nearest-neighbour head "
                             "(--token-head nearest, rows '+nn'), or both")
    parser.add_argument("--init-scale", type=float, default=defaults.init_scale,
                        help="start mtl, meta and auto from their trained delta times this factor (adapt --init-scale)")
    parser.add_argument("--test-limit", type=int, default=None, help="score on the first N test examples of each task")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="adaptation: passes over the support set")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="adaptation: cap on optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="adaptation batch size")
    parser.add_argument("--mtl-steps", type=int, default=1000)
    parser.add_argument("--meta-episodes", type=int, default=500)
    parser.add_argument("--algorithm", default="fomaml", choices=["fomaml", "reptile", "maml"])
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--masked-words", type=float, default=0.5,
                        help="share of meta-training episodes that are masked-word tasks (0: task episodes only)")
    parser.add_argument("--masked-word-clusters", type=int, default=0,
                        help="draw each masked-word episode's words from one of N k-means clusters of the "
                             "encoder's word embeddings (0: from all words)")
    parser.add_argument("--warp-layers", action="store_true",
                        help="meta-train warp layers too (meta.warp_layers): learnt in the outer loop, frozen while "
                             "adapting, kept by (c), (e) and (g)")
    parser.add_argument("--adapter", default="lora")
    parser.add_argument("--adapter-options", help="JSON (default: LoRA r=8 on every linear layer, as the main job)",
                        default='{"rank": 8, "alpha": 16, "target_modules": ["query", "key", "value", '
                                '"attention_output", "intermediate", "ffn_output"]}')
    parser.add_argument("--work-dir", default="runs/fewshot_bench", help="runs are kept here and reused")
    parser.add_argument("--data-root")
    parser.add_argument("--out", help="write rows and settings as JSON")
    parser.add_argument("--device", help="where adaptation runs (default: cuda when there is one; training stages "
                             "pick theirs as nlp-mtl train does)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    try:  # a bad value fails now, not after the training stages
        AdaptSettings(init_scale=args.init_scale)
    except UserError as error:
        parser.error(str(error))
    args.device = args.device or default_device()
    started = time.perf_counter()
    rows = []
    for split in args.split or sorted(SPLITS):
        rows += run_split(split, args)
        if args.out:  # after every split, so a long run keeps what it has
            from nlp_mtl.fileio import atomic_write
            from nlp_mtl.training.precision import cpu_isa_flags

            payload = {"settings": {k: v for k, v in vars(args).items()}, "cpu_isa": cpu_isa_flags(),
                       "rows": rows, "seconds": round(time.perf_counter() - started)}

            atomic_write(Path(args.out), json.dumps(payload, indent=2) + "\n")
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
