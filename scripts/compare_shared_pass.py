#!/usr/bin/env python
"""CoNLL-2003 POS + chunk + NER: three separate tasks against one shared-pass group, at equal epochs.

    python scripts/compare_shared_pass.py                  # 1 epoch of each layer, ~10 min on 2 cores
    python scripts/compare_shared_pass.py --epochs 3 --set training.mixed_precision=no

Both runs are ordinary `nlp-mtl train` runs of the same three built-in specs, back to back, with
the same settings (including any --set). The separate run samples the three tasks
proportionally (the same number of sentences each, so each reaches the epoch count); the shared
run trains the group `[conll2003_pos, conll2003_chunk, conll2003_ner]` from one encoder pass per
batch, so the same epochs take a third of the steps. Printed: each layer's test metric, the
training time (the steps alone: a callback times them) and the whole run's wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TASKS = ["conll2003_pos", "conll2003_chunk", "conll2003_ner"]


def run(shared: bool, epochs: float, overrides: list[str], root: Path) -> dict:
    from nlp_mtl.config import load_experiment
    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.training import train
    from nlp_mtl.training.callbacks import ThroughputMeter

    config_path = root / ("shared.yaml" if shared else "separate.yaml")
    lines = ["name: " + ("shared_pass" if shared else "separate"), f"tasks: [{', '.join(TASKS)}]",
             "training:", f"  epochs: {epochs}", "  evaluations: 1", "  log_with: none", "  checkpoint_every: 0"]
    if shared:
        lines.append(f"  shared_pass: [[{', '.join(TASKS)}]]")
    config_path.write_text("\n".join(lines) + "\n")
    config = load_experiment(config_path, overrides)
    # A second meter of our own: the run's loss log reads (and restarts) only the first one.
    clock = ThroughputMeter()
    started = time.perf_counter()
    result = train(config, RunDir(root / config.name), quiet=True, callbacks=[clock])
    wall = time.perf_counter() - started
    summary = json.loads((result.run_dir / "reports" / "summary.test.json").read_text())["tasks"]
    scores = {task: 100 * info["metrics"][info["main_metric"]] for task, info in summary.items()}
    return {"steps": result.steps, "train_seconds": clock.seconds, "wall_seconds": wall, "test": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs of each layer (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, both runs")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--only", choices=["separate", "shared"], help="run one arm only (its numbers, no comparison)")
    args = parser.parse_args()
    from nlp_mtl.training.precision import cpu_isa_flags

    out: dict = {"cpu_isa": cpu_isa_flags(), "epochs": args.epochs, "overrides": args.set}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("separate", "shared"):
            if args.only in (None, arm):
                out[arm] = run(arm == "shared", args.epochs, args.set, Path(tmp))
    if args.only:
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return
    sep, sh = out["separate"], out["shared"]
    print(f"CPU: {', '.join(out['cpu_isa']) or 'unknown'}; {args.epochs:g} epoch(s) of each layer; overrides: "
          f"{' '.join(args.set) or 'none'}")
    print("| | three separate tasks | one shared pass | difference |")
    print("|---|---:|---:|---:|")
    for task in TASKS:
        print(f"| {task} (test) | {sep['test'][task]:.2f} | {sh['test'][task]:.2f} | "
              f"{sh['test'][task] - sep['test'][task]:+.2f} |")
    print(f"| optimizer steps | {sep['steps']} | {sh['steps']} | |")
    print(f"| training time | {sep['train_seconds']:.0f} s | {sh['train_seconds']:.0f} s | "
          f"{sep['train_seconds'] / sh['train_seconds']:.2f}x faster |")
    print(f"| whole run (tokenising, evaluation) | {sep['wall_seconds']:.0f} s | {sh['wall_seconds']:.0f} s | "
          f"{sep['wall_seconds'] / sh['wall_seconds']:.2f}x faster |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
