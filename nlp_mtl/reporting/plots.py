"""PNG plots of a run, written into RUN_DIR/plots/.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than pyplot, so no
backend is selected and no global figure registry or rcParams change: training (or a caller
with its own matplotlib setup) is left exactly as it was.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..fileio import atomic_write
from ..registry import TASK_TYPES
from .run_data import RunData, TaskInfo, load_run, main_metric
from ..run_dir import RunDir

DPI = 150
# Wide enough to read, narrow enough that the page shows two side by side.
WIDTH = 5.4
# Colour-blind-safe (Okabe-Ito), so task lines stay distinguishable for everyone.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
SPLIT_COLOURS = {"validation": "#56B4E9", "test": "#0072B2"}
TEXT = "#1f2933"
MUTED = "#616e7c"
GRID = "#e4e7eb"
# Beyond this many classes the per-cell counts no longer fit; the colours still read.
MAX_ANNOTATED_CLASSES = 25


TRAINING_LOSS = "training_loss.png"
VALIDATION = "validation.png"


def _safe(name: str) -> str:
    """Task names become file names; keep them to characters every file system accepts."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def confusion_name(task: str, split: str) -> str:
    return f"confusion.{_safe(task)}.{split}.png"


def entity_f1_name(task: str) -> str:
    return f"entity_f1.{_safe(task)}.png"


def _style(ax: Axes, title: str, xlabel: str = "", ylabel: str = "") -> None:
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold", color=TEXT, pad=10)
    ax.set_xlabel(xlabel, color=MUTED)
    ax.set_ylabel(ylabel, color=MUTED)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa5b1")
    ax.tick_params(colors=MUTED, labelcolor=TEXT)
    ax.set_axisbelow(True)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    atomic_write(path, buffer.getvalue())  # a reader never sees half a PNG
    return path


def _legend(ax: Axes) -> None:
    # Below the axes: with several tasks an in-plot legend hides the curves it explains.
    labels = ax.get_legend_handles_labels()[1]
    columns = len(labels) if sum(len(label) + 6 for label in labels) <= 70 else 2
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=max(1, columns), frameon=False, fontsize=8.5)


def _log_axis(ax: Axes) -> None:
    ax.set_yscale("log")
    # 0.05 / 0.1 / 0.2 / 0.5 read at a glance; 10^-1 notation and unlabeled decades do not.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _best_step(run: RunData) -> int | None:
    if run.end_event and isinstance(run.end_event.get("best_step"), int):
        return run.end_event["best_step"]
    scored = [e for e in run.validation_events if isinstance(e.get("score"), (int, float))]
    return max(scored, key=lambda e: e["score"])["step"] if scored else None


def plot_training_loss(run: RunData, path: Path) -> Path | None:
    """Training loss per task over steps; None before the first logged step."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for event in run.train_events:
        for task, loss in (event.get("loss") or {}).items():
            steps, values = series.setdefault(task, ([], []))
            steps.append(event["step"])
            values.append(float(loss))
    if not series:
        return None
    fig = Figure(figsize=(WIDTH, 3.9), layout="constrained")
    ax = fig.add_subplot()
    for i, (task, (steps, values)) in enumerate(series.items()):
        ax.plot(steps, values, color=PALETTE[i % len(PALETTE)], linewidth=1.8, label=task)
    positive = all(v > 0 for _, values in series.values() for v in values)
    spread = max(max(v) for _, v in series.values()) / max(min(min(v) for _, v in series.values()), 1e-12)
    if positive and spread > 20:
        # Losses of different tasks span orders of magnitude; on a linear axis the small ones flatten.
        _log_axis(ax)
    ax.grid(True, color=GRID, linewidth=0.8)
    _style(ax, "Training loss per task", "step", "loss (mean over log interval)")
    _legend(ax)
    return _save(fig, path)


def plot_validation(run: RunData, path: Path) -> Path | None:
    """Each task's main validation metric over steps; None before the first validation."""
    if not run.validation_events:
        return None
    fig = Figure(figsize=(WIDTH, 3.9), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, task in enumerate(run.tasks):
        points = [(e["step"], e["metrics"][task.name]) for e in run.validation_events
                  if isinstance(e.get("metrics"), dict) and isinstance(e["metrics"].get(task.name), dict)]
        metric = main_metric(task, points[0][1]) if points else None
        points = [(step, m[metric]) for step, m in points if metric and isinstance(m.get(metric), (int, float))]
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, [100 * v for v in values], marker="o", markersize=4.5, linewidth=1.8,
                color=PALETTE[i % len(PALETTE)], label=f"{task.name} ({metric})")
        drawn += 1
    scored = [(e["step"], e["score"]) for e in run.validation_events if isinstance(e.get("score"), (int, float))]
    if scored:
        steps, values = zip(*scored)
        ax.plot(steps, [100 * v for v in values], linestyle="--", linewidth=1.4, color=MUTED,
                label="mean (model selection)")
        drawn += 1
    if not drawn:
        return None
    best = _best_step(run)
    if best is not None:
        ax.axvline(best, color="#9aa5b1", linestyle=":", linewidth=1.2)
        # At the bottom: late in training, where the best step usually is, the curves sit high.
        ax.annotate(f"best: step {best}", xy=(best, 0), xycoords=("data", "axes fraction"), xytext=(-4, 4),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8, color=MUTED)
    ax.grid(True, color=GRID, linewidth=0.8)
    _style(ax, "Validation: main metric per task", "step", "score (%)")
    _legend(ax)
    return _save(fig, path)


def plot_confusion(task: str, split: str, confusion: dict[str, Any], path: Path) -> Path | None:
    """Confusion-matrix heatmap, coloured by row share so small classes are as readable as large ones."""
    labels = [str(label) for label in confusion.get("labels") or []]
    matrix = confusion.get("matrix") or []
    n = len(labels)
    if not n or len(matrix) != n or any(len(row) != n for row in matrix):
        return None
    shares = [[count / max(sum(row), 1) for count in row] for row in matrix]
    # Sized from the class count and label length, so 2 classes are not huge and 30 not cramped.
    grid = min(max(0.5 * n, 2.6), 9.0)
    cell = grid / n
    label_in = 0.075 * max(len(label) for label in labels)  # ~9 pt characters
    slanted = label_in > 0.9 * cell
    width = grid + label_in + 1.7  # y tick labels, axis label, colour bar
    height = grid + (0.71 * label_in if slanted else 0.2) + 1.0  # x tick labels, axis label, title
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="equal")
    if n <= MAX_ANNOTATED_CLASSES:
        widest = max(len(f"{count:,}") for row in matrix for count in row)
        size = max(5.0, min(10.0, cell * 72 / (0.62 * widest + 1.2)))
        for r in range(n):
            for c in range(n):
                colour = "white" if shares[r][c] > 0.55 else TEXT
                ax.text(c, r, f"{matrix[r][c]:,}", ha="center", va="center", fontsize=size, color=colour)
    # Labels that fit their cell stay upright; longer ones are slanted so neighbours do not overlap.
    ax.set_xticks(range(n), labels, rotation=45 if slanted else 0, ha="right" if slanted else "center",
                  rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.tick_params(length=0, colors=MUTED, labelcolor=TEXT)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("predicted", color=MUTED)
    ax.set_ylabel("gold", color=MUTED)
    # Over the whole figure, not the axes: a small matrix is narrower than its title.
    fig.suptitle(f"{task} · {split} · confusion matrix", x=0.03, ha="left", fontsize=11, fontweight="bold",
                 color=TEXT)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("share of gold row", color=MUTED)
    bar.ax.tick_params(colors=MUTED, labelsize=8)
    bar.outline.set_visible(False)
    return _save(fig, path)


def _entity_scores(report: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """Per entity type (per label for plain tagging): F1 and support; averages are left out."""
    return {name: (float(values["f1-score"]), int(values.get("support", 0)))
            for name, values in report.items()
            if isinstance(values, dict) and "f1-score" in values and not name.endswith(" avg")}


def plot_entity_f1(task: str, reports: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Horizontal F1 bars per entity type, one bar per split, so long tag sets stay legible."""
    scores = {split: _entity_scores(report.get("report") or {}) for split, report in reports.items()}
    scores = {split: s for split, s in scores.items() if s}
    if not scores:
        return None
    types = sorted({t for s in scores.values() for t in s})
    splits = list(scores)
    height = 0.8 / len(splits)
    fig = Figure(figsize=(WIDTH, max(2.4, 0.3 * len(types) * len(splits) + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    for i, split in enumerate(splits):
        offsets = [y - 0.4 + height * (i + 0.5) for y in range(len(types))]
        values = [100 * scores[split].get(t, (0.0, 0))[0] for t in types]
        bars = ax.barh(offsets, values, height=height * 0.92, color=SPLIT_COLOURS.get(split, PALETTE[i % len(PALETTE)]),
                       label=split)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=3, fontsize=8.5, color=TEXT)
    support_split = "test" if "test" in scores else splits[0]
    support = scores[support_split]
    ax.set_yticks(range(len(types)), [f"{t}  (n={support[t][1]:,})" if t in support else t for t in types],
                  fontsize=9)
    ax.invert_yaxis()  # alphabetical from the top
    ax.set_xlim(0, 108)  # room for the value labels past 100
    ax.grid(True, axis="x", color=GRID, linewidth=0.8)
    ax.tick_params(axis="y", length=0)
    _style(ax, f"{task} · F1 per entity type", f"F1 (%)   ·   n = support in {support_split}")
    if len(splits) > 1:
        _legend(ax)
    return _save(fig, path)


# Per-task plot kinds a task type may ask for (TaskType.plots): file name and plotting function.
TASK_PLOTS = {"label_f1": (entity_f1_name, plot_entity_f1)}


def _task_plots(run: RunData, task: TaskInfo, out: Path) -> list[Path | None]:
    reports = {split: r for (name, split), r in run.reports.items() if name == task.name}
    written: list[Path | None] = []
    for split, report in reports.items():
        confusion = (report.get("report") or {}).get("confusion_matrix")
        if isinstance(confusion, dict):
            written.append(plot_confusion(task.name, split, confusion, out / confusion_name(task.name, split)))
    if reports:
        for kind in _task_type_plots(task.task_type):
            name, plot = TASK_PLOTS[kind]
            written.append(plot(task.name, reports, out / name(task.name)))
    return written


def _task_type_plots(task_type: str) -> tuple[str, ...]:
    # A run may name a task type this process has not registered (a plug-in not imported):
    # its generic plots still come out.
    return TASK_TYPES.get(task_type).plots if task_type in TASK_TYPES else ()


def write_plots(run_dir: str | Path) -> list[Path]:
    """Write RUN_DIR/plots/*.png for whatever the run has so far; returns the files written, in page order."""
    return write_run_plots(load_run(run_dir))


def write_run_plots(run: RunData) -> list[Path]:
    """write_plots for an already loaded run."""
    out = RunDir(run.path).plots_dir
    written = [plot_training_loss(run, out / TRAINING_LOSS), plot_validation(run, out / VALIDATION)]
    for task in run.tasks:
        written += _task_plots(run, task, out)
    return [path for path in written if path is not None]
