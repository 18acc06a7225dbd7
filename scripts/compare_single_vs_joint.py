#!/usr/bin/env python
"""Train the single-task baselines and the joint main job, print the side-by-side table.

    python scripts/compare_single_vs_joint.py            # trains what is missing, then prints
    python scripts/compare_single_vs_joint.py --reuse    # only reads finished runs

Each run is an ordinary `nlp-mtl train` of a config in configs/, so every number in the table
can be re-derived from that run's reports/summary.test.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOINT = ROOT / "configs" / "conll_trec_sst2.yaml"
SINGLES = {
    "conll2003_ner": ROOT / "configs" / "single" / "conll2003_ner.yaml",
    "trec_coarse": ROOT / "configs" / "single" / "trec_coarse.yaml",
    "sst2": ROOT / "configs" / "single" / "sst2.yaml",
}
# Plain single-task Hugging Face Trainer runs on a 2-core AVX2 CPU (same backbone; 3 epochs, 1
# for SST-2; lr 5e-5, batch 32, max_length 128, seed 42), quoted from docs/results.md; not re-run
# here (scripts/trainer_baseline.py re-runs them).
HF_TRAINER = {"conll2003_ner": 85.25, "trec_coarse": 96.40, "sst2": 89.33}


def run_config(config: Path, run_dir: Path, reuse: bool) -> dict:
    summary = run_dir / "reports" / "summary.test.json"
    if not ((run_dir / "FINISHED").is_file() and summary.is_file()):
        if reuse:
            sys.exit(f"{run_dir}: no finished run to reuse; run without --reuse first.")
        subprocess.run(["nlp-mtl", "train", str(config), "--output-dir", str(run_dir), "--overwrite"], check=True)
    seconds = json.loads((run_dir / "FINISHED").read_text())["seconds"]
    return {"summary": json.loads(summary.read_text()), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="where the runs live (default: runs/)")
    parser.add_argument("--reuse", action="store_true", help="do not train; read finished runs only")
    args = parser.parse_args()
    runs = Path(args.runs)
    joint = run_config(JOINT, runs / "conll_trec_sst2", args.reuse)
    singles = {task: run_config(cfg, runs / f"single_{task}", args.reuse) for task, cfg in SINGLES.items()}

    print("| task (test metric) | stock Trainer, single (quoted) | nlp-mtl, single task | nlp-mtl, joint |")
    print("| --- | --- | --- | --- |")
    for task in SINGLES:
        info = joint["summary"]["tasks"][task]
        metric = info["main_metric"]
        single = singles[task]["summary"]["tasks"][task]["metrics"][metric]
        joint_value = info["metrics"][metric]
        print(f"| {task} ({metric}) | {HF_TRAINER[task]:.2f} | {100 * single:.2f} | {100 * joint_value:.2f} |")
    single_minutes = sum(s["seconds"] for s in singles.values()) / 60
    print(f"| wall time | 49 min (three runs) | {single_minutes:.1f} min (three runs) | "
          f"{joint['seconds'] / 60:.1f} min (one run) |")


if __name__ == "__main__":
    main()
