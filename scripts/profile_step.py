#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over steady-state steps of the bench's run.

    python scripts/profile_step.py                          # fp32, eager
    python scripts/profile_step.py --compile --precision bf16 --start 140

The same run as `scripts/bench.py --phases training` (embedded MiniLM, CoNLL-2003 NER, batch 32,
4,000 sentences), trained for `--start` steps untimed, then `--steps` steps under torch.profiler.
Compiled steps compile a graph per new batch shape until every length has been seen (about one
pass over the data: 125 steps at batch 32), so with `--compile` profile after that, or the
window holds compiles; the script prints how many graphs were compiled before and inside it.

Prints the step time inside the window (the profiler adds to it, most to small operators), the
operators by self time, and the share of the operator time spent in matrix multiplications with
the rate they ran at (their FLOPs, padded tokens included, over their time; compare
`scripts/bench.py`'s matmul peak). Compiled steps show inductor's fused kernels by name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")

# The bench's run, built by the bench (scripts/ is not a package).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import training_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="training.mixed_precision")
    parser.add_argument("--compile", action="store_true", help="training.compile: true")
    parser.add_argument("--start", type=int, help="untimed steps before the window (default 30; 140 with --compile)")
    parser.add_argument("--steps", type=int, default=20, help="steps inside the profiled window")
    parser.add_argument("--examples", type=int, default=4000, help="CoNLL-2003 training sentences")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=30, help="operators to list")
    args = parser.parse_args()
    start = args.start if args.start is not None else (140 if args.compile else 30)
    if start < 1 or args.steps < 1:
        parser.error("--start and --steps: expected integers >= 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from torch.profiler import ProfilerActivity, profile

    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.training import train
    from nlp_mtl.training.callbacks import Callback

    if args.compile:
        # Names each compiled kernel in the profile instead of one opaque call per graph.
        torch._inductor.config.cpp.enable_kernel_profile = True

    def compiled_graphs() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    class ProfiledWindow(Callback):
        order = -1

        def __init__(self) -> None:
            self.profiler: profile | None = None
            self.started, self.graphs = 0.0, 0

        def on_step_end(self, engine, micro_batches) -> None:
            step = engine.state.step
            if step == start:
                self.graphs = compiled_graphs()
                self.profiler = profile(activities=[ProfilerActivity.CPU], with_flops=True)
                self.profiler.__enter__()
                self.started = time.perf_counter()
            elif step == start + args.steps and self.profiler is not None:
                seconds = time.perf_counter() - self.started
                self.profiler.__exit__(None, None, None)
                report(self.profiler, seconds, self.graphs, compiled_graphs())
                self.profiler = None

    def report(profiler: profile, seconds: float, graphs_before: int, graphs_after: int) -> None:
        events = profiler.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
        matmul_flops = sum(e.flops for e in events if e.key in MATMULS)
        print(f"\n{torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}; precision {args.precision}, "
              f"compile {'on' if args.compile else 'off'}; steps {start + 1}-{start + args.steps}")
        if args.compile:
            print(f"graphs compiled: {graphs_before} before the window, {graphs_after - graphs_before} inside it")
        print(f"step time in the window: {1000 * seconds / args.steps:.1f} ms (profiled)")
        print(f"matrix multiplications: {100 * matmul / total:.1f} % of the operator self time, at "
              f"{matmul_flops / matmul / 1e3:.1f} GFLOP/s (padding included)\n")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=70))

    config = training_config(args.examples, start + args.steps, args.batch_size, args.precision, log_every=10**6,
                             compile=args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, RunDir(Path(tmp) / "run"), quiet=True, callbacks=[ProfiledWindow()])


if __name__ == "__main__":
    main()
