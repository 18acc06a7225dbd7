"""The layout of a run directory, in one place.

    RUN_DIR/
      experiment.json        resolved experiment config with every task spec inlined
      model/                 final MultiTaskModel (save_pretrained format)
      checkpoints/best/      best model by mean validation metric
      checkpoints/last/      resumable state: model, optimizer, scheduler, sampler position, RNG
      metrics.jsonl          training and validation metrics, one JSON object per line
      reports/               <task>.<split>.txt/.json, summary.<split>.txt/.json
      plots/                 PNG curves, confusion matrices, per-entity F1 (nlp-mtl report adds report.html)
      logs/                  tracker output (TensorBoard events with training.log_with: auto/tensorboard)
      FINISHED               written last: the run completed

A finished run is immutable to every command but an explicit, safe replacement:
``check_target`` refuses any output inside a run's ``model/`` or ``checkpoints/`` (or any saved
model folder), any of its record files, and any output that is, or holds, one of the command's
own inputs. ``train --overwrite`` trains the new run beside the old one (``RUN.overwrite``) and
swaps it in only once it has finished (``swap_in``); until then the old run stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from .config import ExperimentConfig, TaskSpec, data_root
from .errors import UserError
from .fileio import FileSystemError, atomic_write, file_system_error
from .schema import from_mapping, to_mapping


# What a run writes; anything else in its folder (the user's own files) survives --overwrite.
RUN_OUTPUTS = ("FINISHED", "metrics.jsonl", "experiment.json", "report.html", "checkpoints", "reports", "model",
               "plots", "logs")
# Inside a run, these are what later commands read; nothing may be written into them.
PROTECTED = ("model", "checkpoints", "experiment.json", "metrics.jsonl", "FINISHED")
MODEL_MANIFEST = "multitask.json"
# In a staging folder of 'train --overwrite': the run directory it is to replace.
REPLACES = "REPLACES"


def _is_run(path: Path) -> bool:
    return (path / "experiment.json").is_file() or (path / "FINISHED").is_file()


def _is_model(path: Path) -> bool:
    return (path / MODEL_MANIFEST).is_file()


def _protected_reason(target: Path) -> str | None:
    if target.is_dir() and _is_run(target):
        return "is a run directory"
    if target.is_dir() and _is_model(target):
        return "is a saved model"
    chain = [target, *target.parents]
    for below, folder in zip(chain, chain[1:]):
        if _is_model(folder):
            return f"is inside the saved model {folder}"
        if _is_run(folder) and below.name in PROTECTED:
            return f"is the run's own {below.name}" + ("/" if below.name in ("model", "checkpoints") else "") + \
                f" (run {folder})"
    return None


def check_target(target: str | Path, flag: str, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse to write ``target`` (``flag`` names it in the message) where that would change a
    run, a saved model, or one of the command's ``inputs``."""
    resolved = Path(target).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if resolved == source:
            raise UserError(f"{flag} {target}: is one of this command's inputs; writing there would replace it. "
                            "Choose another path.")
        if resolved in source.parents:
            raise UserError(f"{flag} {target}: holds this command's input {given}; writing there would replace it. "
                            "Choose another path.")
    reason = _protected_reason(resolved)
    if reason:
        raise UserError(f"{flag} {target}: {reason}, which no command but training changes; "
                        "choose a path outside the run's model/ and checkpoints/.")


def staging_dir(target: RunDir) -> RunDir:
    """Where 'train --overwrite' trains the run that is to replace ``target``."""
    return RunDir(target.path.parent / f"{target.path.name}.overwrite")


def replaced_by(run: RunDir) -> Path | None:
    """The run directory a staging folder is to replace once it finishes, else None."""
    marker = run.path / REPLACES
    return Path(marker.read_text(encoding="utf-8").strip()) if marker.is_file() else None


def start_replacement(target: RunDir) -> RunDir:
    """A fresh staging folder for a run that will replace ``target`` (see ``swap_in``)."""
    staging = staging_dir(target)
    if staging.path.exists():
        if not staging.path.is_dir() or (any(staging.path.iterdir()) and replaced_by(staging) is None):
            raise UserError(f"{staging.path}: exists and is not an earlier replacement of {target.path}; "
                            "move it away so that --overwrite can train the new run there.")
        shutil.rmtree(staging.path)  # an earlier --overwrite that did not finish: start over
    staging.path.mkdir(parents=True)
    atomic_write(staging.path / REPLACES, str(target.path.resolve()) + "\n")
    return staging


def swap_in(staging: RunDir, target: Path) -> None:
    """Put the finished run in ``staging`` at ``target``; the old run there goes, except files of
    the user's own (not run outputs), which move into the new run."""
    (staging.path / REPLACES).unlink(missing_ok=True)
    if not target.exists():
        os.replace(staging.path, target)
        return
    for entry in target.iterdir():
        if entry.name not in RUN_OUTPUTS and not (staging.path / entry.name).exists():
            os.replace(entry, staging.path / entry.name)
    aside = target.parent / f".{target.name}.replaced-{os.getpid()}"
    os.replace(target, aside)
    try:
        os.replace(staging.path, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


T = TypeVar("T")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resume_note(run: RunDir, command: str = "train") -> str:
    """What is left to continue from (the last good checkpoint, or nothing), as a sentence."""
    from .training.checkpoint import checkpoint_note

    note = checkpoint_note(run, command)
    return note[0].upper() + note[1:] + "."


@contextmanager
def explained_failures(run: RunDir, command: str = "train") -> Iterator[None]:
    """A file-system error while training becomes one line naming the path, and saying what
    checkpoint is left to resume from (with ``nlp-mtl COMMAND --resume``)."""
    try:
        yield
    except FileSystemError as err:
        raise FileSystemError(f"{err} {resume_note(run, command)}") from None
    except Exception as err:  # noqa: BLE001  (only errno-bearing errors are converted)
        converted = file_system_error(err, run.path)
        if converted is None:
            raise
        raise FileSystemError(f"{converted} {resume_note(run, command)}") from None


def replace_run(target: RunDir, work: Callable[[RunDir], T], command: str = "train") -> T:
    """'train --overwrite' of a run: ``work`` trains into a staging folder beside ``target``, which
    replaces ``target`` only when ``work`` returns. On any failure ``target`` is unchanged, and the
    staging folder is kept only if it holds a checkpoint to continue from."""
    from .training.checkpoint import find_checkpoint

    staging = start_replacement(target) if _is_main_process() else staging_dir(target)
    try:
        with explained_failures(staging, command):
            result = work(staging)
    except BaseException as err:
        kept = _is_main_process() and find_checkpoint(staging.last_dir) is not None
        if _is_main_process() and not kept:
            shutil.rmtree(staging.path, ignore_errors=True)
        if not isinstance(err, UserError):
            raise
        note = f"{target.path}: unchanged"
        if kept:
            note += (f"; {staging.path} keeps the new run, which replaces {target.path} when it finishes "
                     "(or delete that folder)")
        raise type(err)(f"{err} {note}.") from None
    finish_replacement(staging)
    return result


def finish_replacement(run: RunDir) -> None:
    """If ``run`` is the staging folder of a replacement, swap it in (every process waits)."""
    target = replaced_by(run)
    if target is None:
        return
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()
    # A run that logged to trackers has ended its process group already (end_training); only
    # the main process writes, so then it swaps alone.
    together = state.num_processes > 1 and dist.is_available() and dist.is_initialized()
    if together:
        state.wait_for_everyone()
    if state.is_main_process:
        swap_in(run, target)
    if together:
        state.wait_for_everyone()


def holds_run(path: Path) -> bool:
    """A finished run, or one with a checkpoint or an experiment record: what --overwrite replaces."""
    return _is_run(path) or (path / "checkpoints").is_dir()


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    model_dir = property(lambda self: self.path / "model")
    best_dir = property(lambda self: self.path / "checkpoints" / "best")
    last_dir = property(lambda self: self.path / "checkpoints" / "last")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    experiment_path = property(lambda self: self.path / "experiment.json")
    finished_path = property(lambda self: self.path / "FINISHED")
    reports_dir = property(lambda self: self.path / "reports")
    plots_dir = property(lambda self: self.path / "plots")
    logs_dir = property(lambda self: self.path / "logs")
    report_page = property(lambda self: self.path / "report.html")
    adapt_dir = property(lambda self: self.path / "adapt")

    def report_path(self, task: str, split: str, suffix: str) -> Path:
        """reports/<task>.<split>.<suffix> (txt or json)."""
        return self.reports_dir / f"{task}.{split}.{suffix}"

    def summary_path(self, split: str, suffix: str) -> Path:
        return self.reports_dir / f"summary.{split}.{suffix}"

    @staticmethod
    def holds_model(path: Path) -> bool:
        """A run directory (its model/) or a saved model directory."""
        return (path / MODEL_MANIFEST).is_file() or (path / "model" / MODEL_MANIFEST).is_file()

    @classmethod
    def for_config(cls, config: ExperimentConfig, output_dir: str | Path | None = None) -> RunDir:
        """The run directory: ``output_dir`` if given, else the config's, else runs/<name>."""
        return cls(output_dir or config.output_dir or f"runs/{config.name}")

    def check_new(self, overwrite: bool) -> None:
        """Refuse to train into a directory holding a run, finished or not, unless told to."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: is a file; the run directory must be a folder (choose another --output-dir).")
        if any(parent.exists() and not parent.is_dir() for parent in self.path.parents):
            raise UserError(f"{self.path}: a file is where a folder of this path is expected; choose another --output-dir.")
        if not overwrite:
            if self.finished_path.exists():
                raise UserError(
                    f"{self.path}: holds a finished run; pass --overwrite to replace it or choose another --output-dir."
                )
            if (self.last_dir / "trainer_state.json").exists():
                raise UserError(
                    f"{self.path}: holds an unfinished run; continue it with --resume {self.path}, "
                    "or pass --overwrite to start over."
                )

    def prepare_new(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # Only reached with --overwrite or for a fresh directory: the old run's outputs go, so
        # nothing of it can be mistaken for the new one.
        for stale in (self.finished_path, self.metrics_path, self.experiment_path, self.path / "report.html"):
            stale.unlink(missing_ok=True)
        for stale_dir in (self.path / "checkpoints", self.path / "reports", self.model_dir, self.path / "plots",
                          self.path / "logs"):
            shutil.rmtree(stale_dir, ignore_errors=True)

    def write_experiment(self, config: ExperimentConfig, specs: list[TaskSpec]) -> None:
        # Specs built in Python are stored below with the others; the config refers to them by name.
        config = replace(config, tasks=[t.name if isinstance(t, TaskSpec) else t for t in config.tasks])
        payload = {
            "config": to_mapping(config),
            "config_source": config.source,
            "data_root": str(data_root(config)),
            "tasks": [{**to_mapping(spec), "source": spec.source} for spec in specs],
        }
        atomic_write(self.experiment_path, json.dumps(payload, indent=2) + "\n")

    def read_experiment(self) -> tuple[ExperimentConfig, list[TaskSpec], Path]:
        if not self.experiment_path.is_file():
            raise UserError(f"{self.path}: not a run directory (no experiment.json).")
        where = str(self.experiment_path)
        try:
            payload: dict[str, Any] = json.loads(self.experiment_path.read_text())
            config = replace(from_mapping(ExperimentConfig, payload["config"], where),
                             source=payload.get("config_source", ""))
            specs = []
            for raw in payload["tasks"]:
                source = raw.pop("source", "")
                specs.append(replace(from_mapping(TaskSpec, raw, where), source=source))
            return config, specs, Path(payload["data_root"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            # A truncated or hand-edited record: the run's inputs cannot be told, so nothing runs.
            detail = f"missing {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
            raise UserError(f"{where}: unreadable run record ({detail}); it is written by nlp-mtl train, "
                            "so restore it or train the run again.") from None

    def mark_finished(self, seconds: float) -> None:
        atomic_write(self.finished_path, json.dumps({"seconds": round(seconds, 1)}) + "\n")
