"""The ``nlp-mtl`` command line: train, evaluate, predict, export, report, meta-train, adapt, tasks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .devices import default_device
from .errors import UserError

EXAMPLES = {
    "train": "example: nlp-mtl train configs/conll_trec_sst2.yaml --output-dir runs/joint --set training.lr=3e-5\n"
             "         nlp-mtl train --resume runs/joint",
    "evaluate": "example: nlp-mtl evaluate runs/joint --split test",
    "predict": 'example: nlp-mtl predict runs/joint --text "John lives in Berlin." --text "What is the capital of Peru?"',
    "export": "example: nlp-mtl export runs/joint --task conll2003_ner --out exported/ner\n"
              '         python -c "from transformers import pipeline; '
              'print(pipeline(\'token-classification\', model=\'exported/ner\', aggregation_strategy=\'first\')(\'John lives in Berlin.\'))"',
    "report": "example: nlp-mtl report runs/joint --output joint_report.html",
    "meta-train": "example: nlp-mtl meta-train configs/meta_ner_trec_sst2.yaml --set meta.episodes=200",
    "adapt": "example: nlp-mtl adapt runs/meta --task tasks/conll2003_chunk.yaml --shots 16 --seeds 5\n"
             "         nlp-mtl adapt runs/meta --task my_task.yaml --shots 8 --init fresh --save adapted/my_task",
    "tasks validate": "example: nlp-mtl tasks validate conll2003_ner my_task.yaml   # built-in names or spec files",
    "tasks list": "example: nlp-mtl tasks list",
    "tasks init": "example: nlp-mtl tasks init data/ner/train.txt --out tasks/my_ner.yaml\n"
                  "         nlp-mtl tasks init ../shared/data/conll2003/train.txt --column tags=1 --name conll2003_pos",
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="nlp-mtl",
        description="Multi-task fine-tuning of transformer encoders: NER and text classification on one backbone.",
        epilog="\n".join(EXAMPLES.values()),
        formatter_class=fmt,
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-step messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train on the tasks of an experiment config", epilog=EXAMPLES["train"], formatter_class=fmt)
    p.add_argument("config", nargs="?", help="experiment config YAML (not needed with --resume)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--output-dir", help="run directory (default: output_dir in the config, else runs/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. training.lr=3e-5 (repeatable)")
    p.add_argument("--data-root", help="folder that relative data paths in task specs resolve against")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in the output directory")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser("evaluate", help="write classification reports for a trained run", epilog=EXAMPLES["evaluate"], formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["validation", "test"], default="test")
    p.add_argument("--data-root", help="override the data root recorded in the run")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser("predict", help="predict every task for raw text, one encoder pass", epilog=EXAMPLES["predict"], formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    p.add_argument("--input", help='JSONL file: one {"text": ...} (and optional "text_pair") per line')
    p.add_argument("--output", help="write JSONL here instead of stdout")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--add-task", action="append", default=[], metavar="DIR",
                   help="also predict a task saved with 'export --adapter-only' or 'adapt --save' (repeatable)")

    p = sub.add_parser("export", help="write one task as a plain Hugging Face model that pipeline() loads",
                       epilog=EXAMPLES["export"], formatter_class=fmt)
    p.add_argument("run_dir", help="run directory or saved model directory")
    p.add_argument("--task", required=True, help="task to export (see RUN_DIR/model/multitask.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the model, tokenizer and model card to")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--adapter-only", action="store_true",
                   help="write only the task's adapter + head (safetensors + JSON), to load onto the base encoder")

    p = sub.add_parser("report", help="write plots and a self-contained HTML report for a run",
                       epilog=EXAMPLES["report"], formatter_class=fmt)
    p.add_argument("run_dir")
    p.add_argument("--output", metavar="FILE", help="write the page here (default: RUN_DIR/report.html)")

    p = sub.add_parser("meta-train", help="meta-learn an adapter initialisation from episodes of the config's tasks",
                       epilog=EXAMPLES["meta-train"], formatter_class=fmt)
    p.add_argument("config", nargs="?", help="experiment config YAML with 'adapters:' and 'meta:' sections "
                                             "(not needed with --resume)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted meta-training from its last checkpoint")
    p.add_argument("--output-dir", help="run directory (default: output_dir in the config, else runs/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. meta.episodes=200 (repeatable)")
    p.add_argument("--data-root", help="folder that relative data paths in task specs resolve against")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in the output directory")

    _add_adapt_parser(sub, fmt)
    _add_tasks_parser(sub, fmt)
    return parser


def _add_adapt_parser(sub: Any, fmt: type) -> None:
    p = sub.add_parser("adapt", help="few-shot: adapt a run's adapter initialisation to a new task, per seed",
                       epilog=EXAMPLES["adapt"], formatter_class=fmt)
    p.add_argument("run_dir", help="run directory (meta-train or train) or saved model directory")
    p.add_argument("--task", required=True, help="spec file (or built-in name) of the new task")
    p.add_argument("--shots", type=_positive_int, default=16, help="examples per class (token tasks: per entity/tag type)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (1..N), each a new sample")
    p.add_argument("--init", default="auto",
                   help="auto, trained, meta, fresh, full, or an adapter group of the run. auto (default): per seed, "
                        "the run's meta adapter (else its only group) or a fresh adapter, whichever scores better "
                        "in 2-fold cross-validation on the support set. trained: the former, without choosing")
    p.add_argument("--init-scale", type=float, default=0.5, metavar="F",
                   help="start a trained adapter from its delta times F, in [0, 1] (default 0.5): 1 as trained, "
                        "smaller keeps more of the pretrained encoder's features (README, few-shot)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="passes over the support set")
    p.add_argument("--max-steps", type=_positive_int, default=150, help="cap on optimizer steps per seed")
    p.add_argument("--lr", type=float, default=1e-3, help="adapter and head learning rate")
    p.add_argument("--pair-rounds", type=int, default=0, metavar="N",
                   help="sentence tasks: N rounds of contrastive pairs from the support set (SetFit's sampling) that "
                        "train the adapter (the encoder with --init full) before the head is fitted (default 0: none; "
                        "with --pair-sampling in_batch, N sets the number of steps)")
    p.add_argument("--pair-schedule", default="constant", choices=["constant", "linear"],
                   help="the pairs' learning rate: constant (default), or linear: warm up over the first tenth of "
                        "the pair steps, then decay to 0, as SetFit does")
    p.add_argument("--pair-sampling", default="setfit", choices=["setfit", "in_batch"],
                   help="the pairs: setfit (default: each round, every support example with one of its class and "
                        "one of another) or in_batch (every pair within batches of up to 32 support sentences, for as "
                        "many steps)")
    p.add_argument("--pair-head-only", action="store_true",
                   help="after the pairs, fine-tune the head alone, as SetFit fits only its classifier")
    p.add_argument("--update", default="recipe", choices=["recipe", "rule"],
                   help="recipe (default): adapt by the AdamW recipe above. rule: an init meta-trained with "
                        "meta.learn_inner_lr starts as trained and adapts by its learnt update rule instead")
    p.add_argument("--token-head", default="linear", choices=["linear", "nearest"],
                   help="token tasks: score with the linear head adaptation trained (default), or nearest: each "
                        "token takes the label of its most similar support token (NNShot)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16", "auto"],
                   help="precision of the adaptation steps (auto: bf16 where the hardware has it natively)")
    p.add_argument("--test-limit", type=_positive_int, help="score on the first N test examples only")
    p.add_argument("--data-root", help="folder that relative data paths resolve against")
    p.add_argument("--output", metavar="FILE", help="JSON summary (default: RUN_DIR/adapt/<task>.<K>shot.<init>.json)")
    p.add_argument("--save", metavar="DIR", help="save the last seed's adapter + head as a task package")
    p.add_argument("--overwrite", action="store_true", help="replace an existing task package at --save")


def _add_tasks_parser(sub: Any, fmt: type) -> None:
    p = sub.add_parser("tasks", help="check, list or draft task spec files", formatter_class=fmt,
                       epilog=EXAMPLES["tasks validate"] + "\n" + EXAMPLES["tasks list"] + "\n" + EXAMPLES["tasks init"])
    tasks_sub = p.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    v = tasks_sub.add_parser("validate", help="check spec files and their data, print counts and labels",
                             epilog=EXAMPLES["tasks validate"], formatter_class=fmt)
    v.add_argument("files", nargs="+", help="spec files or built-in task names (nlp-mtl tasks list)")
    v.add_argument("--data-root", help="folder that relative data paths resolve against")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    tasks_sub.add_parser("list", help="list the built-in task specs", epilog=EXAMPLES["tasks list"], formatter_class=fmt)
    from .task_init import add_arguments

    add_arguments(tasks_sub.add_parser("init", help="draft a spec from a data file: format, roles, tag scheme, labels",
                                       epilog=EXAMPLES["tasks init"], formatter_class=fmt))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {text!r}")
    return value


def _data_root_override(value: str | None) -> list[str]:
    return [f"data.root={Path(value).expanduser().resolve()}"] if value else []


def _train_or_resume(args: argparse.Namespace, command: str, work: Any) -> tuple[Any, Any]:
    """train and meta-train: continue ``--resume RUN_DIR`` (swapping in an --overwrite
    replacement it finishes), or start a run from CONFIG; a finished run in the way is replaced
    only once the new one has finished. ``work(config, run, **options)`` trains. Returns the
    run's folder and what ``work`` returned."""
    from .config import load_experiment
    from .run_dir import RunDir, explained_failures, finish_replacement, holds_run, replace_run, replaced_by

    if args.resume:
        run, config = _resumed_run(args, command)
        target = replaced_by(run)  # the staging folder of an --overwrite: swapped in when it finishes
        with explained_failures(run, command):
            result = work(config, run, resume=True)
        finish_replacement(run)
        return (RunDir(target) if target else run), result
    if not args.config:
        raise UserError(f"{command}: give an experiment CONFIG, or --resume RUN_DIR.")
    config = load_experiment(args.config, args.overrides + _data_root_override(args.data_root))
    run = RunDir.for_config(config, args.output_dir)
    if args.overwrite and holds_run(run.path):  # the old run stays until the new one has finished
        return run, replace_run(run, lambda staging: work(config, staging, overwrite=True), command)
    with explained_failures(run, command):
        return run, work(config, run, overwrite=args.overwrite)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    run, result = _train_or_resume(args, "train", lambda config, run, **options: train(
        config, run, quiet=args.quiet, **options))
    if not args.quiet:
        print(f"run saved to {run.path} ({result.seconds / 60:.1f} min); reports in {run.reports_dir}")
    return 0


def _resumed_run(args: argparse.Namespace, command: str) -> tuple[Any, Any]:
    """The run to continue and its own config, its data root overridable."""
    from dataclasses import replace

    from .run_dir import RunDir

    run = RunDir(args.resume)
    config, _, root = run.read_experiment()
    if args.config or args.overrides:
        raise UserError(f"{command} --resume RUN_DIR takes its config from the run; drop CONFIG and --set.")
    if run.finished_path.exists():
        raise UserError(f"{run.path}: this run already finished; nothing to resume.")
    config = replace(config, data=replace(config.data, root=str(Path(args.data_root or root).resolve())))
    return run, config


def cmd_evaluate(args: argparse.Namespace) -> int:

    from .config import cache_dir
    from .data.pipeline import encode_all, load_all
    from .evaluation import evaluate_tasks, write_reports
    from .evaluation.reports import format_report
    from .model import MultiTaskModel
    from .run_dir import RunDir

    run = RunDir(args.run_dir)
    config, specs, root = run.read_experiment()
    if args.data_root:
        root = Path(args.data_root).expanduser().resolve()
    datas = load_all(specs, root, config.data.limit, config.data.storage, cache_dir(config))
    model = MultiTaskModel.from_pretrained(run.path, device=default_device())
    for data in datas:
        # Label ids are the model's, whatever the data on disk says now.
        saved = model.tasks[data.spec.name].labels
        if set(data.labels) - set(saved):
            raise UserError(f"{data.spec.source}: labels {sorted(set(data.labels) - set(saved))} are not among "
                            f"the labels the model was trained with ({', '.join(saved)}).")
        data.labels = list(saved)
    tasks = encode_all(datas, model.tokenizer, splits=(args.split,), quiet=args.quiet, cache_dir=cache_dir(config))
    tasks = [t for t in tasks if args.split in t.encoded]
    if not tasks:
        raise UserError(f"{run.path}: no task has a {args.split} split.")
    reports = evaluate_tasks(model, tasks, args.split, args.batch_size, model.tokenizer.pad_token_id or 0,
                             next(model.parameters()).device, quiet=args.quiet)
    for report in reports.values():
        print(format_report(report))
    print(write_reports(run.path, reports, args.split, {t.name: t.metric for t in tasks}))
    print(f"reports written to {run.path / 'reports'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import Predictor
    from .model import MultiTaskModel

    inputs: list = list(args.text)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input {path}: file not found.")
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is dropped
        except UnicodeDecodeError as err:
            raise UserError(f"--input {path}: not UTF-8 ({err.reason} at byte {err.start}).") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON ({err.msg}).") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise UserError(f'{path}:{number}: expected an object with a "text" string.')
            if not isinstance(obj.get("text_pair", ""), str):
                raise UserError(f'{path}:{number}: "text_pair" must be a string.')
            inputs.append(obj)
    if not inputs:
        raise UserError("predict: give --text TEXT (repeatable) or --input FILE.jsonl.")
    if args.output:
        from .run_dir import check_target

        if Path(args.output).is_dir():
            raise UserError(f"--output {args.output}: is a directory; give the JSONL file to write.")
        check_target(args.output, "--output", [args.run_dir, *([args.input] if args.input else []), *args.add_task])
    model = MultiTaskModel.from_pretrained(args.run_dir, device=default_device())
    if args.add_task:
        from .model.task_package import load_task_package

        for package in args.add_task:
            load_task_package(model, package)
    predictor = Predictor(model, batch_size=args.batch_size)
    results = predictor.predict(inputs, progress=not args.quiet and len(inputs) > args.batch_size)
    from .truncation import count_truncated

    cut = count_truncated(model, inputs, results)
    if cut:
        print(f"note: {cut} of {len(inputs)} inputs were longer than a task's max_length and were truncated "
              "for it (see \"truncated\" in the output).", file=sys.stderr)
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if args.output:
        from .fileio import atomic_write

        atomic_write(Path(args.output), "\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reporting import write_report

    if args.output and Path(args.output).is_dir():
        raise UserError(f"--output {args.output}: is a directory; give the HTML file to write.")
    if args.output:
        from .run_dir import check_target

        check_target(args.output, "--output", [args.run_dir])
    print(write_report(args.run_dir, args.output))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_task

    if args.adapter_only:
        from .model import MultiTaskModel
        from .model.task_package import save_task_package

        path = save_task_package(MultiTaskModel.from_pretrained(args.run_dir), args.task, args.out, args.overwrite)
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"wrote '{args.task}' (adapter + head, {size / 1e6:.2f} MB) to {path}; "
              f"use it with: nlp-mtl predict {args.run_dir} --add-task {path} --text ...")
        return 0

    result = export_task(args.run_dir, args.task, args.out, overwrite=args.overwrite)
    print(f"exported '{args.task}' as {result.architecture} to {result.path} "
          f"(logits checked equal to the multi-task model's, max difference {result.max_abs_diff:.1e})")
    print(f"load it with: from transformers import pipeline; nlp = {result.usage()}")
    return 0


def cmd_meta_train(args: argparse.Namespace) -> int:
    from .fewshot.meta import meta_train

    _, result = _train_or_resume(args, "meta-train", lambda config, run, **options: meta_train(
        config, run, quiet=args.quiet, **options))
    if not args.quiet:
        print(f"meta-training took {result.seconds / 60:.1f} min")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from .config import load_task_spec, resolve_task_path
    from .fewshot.adapt import AdaptSettings, adapt_run, write_summary
    from .run_dir import RunDir

    settings = AdaptSettings(shots=args.shots, seeds=tuple(range(1, args.seeds + 1)), init=args.init,
                             init_scale=args.init_scale, epochs=args.epochs, max_steps=args.max_steps, lr=args.lr,
                             mixed_precision=args.mixed_precision, pair_rounds=args.pair_rounds,
                             pair_head_only=args.pair_head_only, pair_schedule=args.pair_schedule,
                             pair_sampling=args.pair_sampling, update=args.update, token_head=args.token_head)
    spec = load_task_spec(resolve_task_path(args.task))
    run = RunDir(args.run_dir)
    from .run_dir import check_target

    for flag, target in (("--save", args.save), ("--output", args.output)):
        if target:
            check_target(target, flag, [args.run_dir, spec.source])
    if args.save:
        save = Path(args.save)
        if args.init == "full":
            raise UserError("--save keeps an adapter + head; --init full trains the whole encoder instead (nothing small to save).")
        if save.exists() and (not save.is_dir() or (any(save.iterdir()) and not args.overwrite)):
            raise UserError(f"--save {save}: exists; pass --overwrite to replace a task package there.")

    def show(result) -> None:
        how = " by the init's learnt update rule" if result.update != "recipe" else ""
        print(f"\n=== seed {result.seed}: {result.support_size} support examples, {result.steps} steps{how}; "
              f"per class {result.per_class}\n{result.report}")

    model, summary = adapt_run(run.path, spec, settings, args.data_root, args.test_limit, quiet=args.quiet,
                               on_seed=show)
    print(summary.headline())
    nearest = ".nearest" if summary.token_head == "nearest" else ""
    output = Path(args.output) if args.output else \
        run.adapt_dir / f"{spec.name}.{args.shots}shot.{summary.label.replace(' ', '')}{nearest}.json"
    write_summary(summary, output)
    print(f"summary written to {output}")
    if args.save:
        from .model.task_package import save_task_package

        save_task_package(model, spec.name, args.save, overwrite=args.overwrite)
        print(f"adapter + head of seed {summary.seeds[-1].seed} saved to {args.save}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .config import builtin_task_specs, default_data_root, load_task_spec, resolve_task_path
    from .data.loading import load_task_data, summarise
    from .data.pipeline import check_spec

    if args.tasks_command == "init":
        from .task_init import cmd_init

        return cmd_init(args)
    if args.tasks_command == "list":
        for path in builtin_task_specs().values():
            spec = load_task_spec(path)
            print(f"{spec.name:20s} {spec.type:26s} {path}")
        return 0
    root = Path(args.data_root).expanduser().resolve() if args.data_root else default_data_root()
    summaries = []
    for file in args.files:
        spec = load_task_spec(resolve_task_path(file))  # a spec file, or a built-in name
        check_spec(spec)
        summary = summarise(load_task_data(spec, root))
        summaries.append(summary)
        if not args.json:
            print(f"{file}: OK  task '{spec.name}' ({spec.type}), {len(summary['labels'])} labels: {', '.join(summary['labels'])}")
            for split, info in summary["splits"].items():
                counts = {k: v for k, v in info.items() if k not in ("source", "label_counts")}
                extra = f" labels {info['label_counts']}" if "label_counts" in info else ""
                print(f"  {split:10s} " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"{extra}  [{info['source']}]")
    if args.json:
        print(json.dumps(summaries, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
                "report": cmd_report, "tasks": cmd_tasks, "meta-train": cmd_meta_train, "adapt": cmd_adapt}
    try:
        return handlers[args.command](args)
    except UserError as err:
        print(f"nlp-mtl: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001  file-system errors are the user's to fix (fileio.writing)
        from .fileio import file_system_error

        converted = file_system_error(err)
        if converted is None:
            raise
        print(f"nlp-mtl: error: {converted}", file=sys.stderr)
        return converted.exit_code
    except KeyboardInterrupt:
        print("nlp-mtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
