"""Experiment trackers (TensorBoard, W&B, MLflow, ...) through accelerate's tracker API.

``training.log_with`` names them: ``auto`` (the default) is TensorBoard when it is installed
and nothing otherwise, ``none`` is nothing, and a name or a list of names asks for those
trackers, each of which must then be installed. metrics.jsonl is written either way; the
trackers are a view on the same numbers.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, did_you_mean

# Tracker name -> (accelerate availability check, pip package).
TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "comet_ml": ("is_comet_ml_available", "comet-ml"),
    "aim": ("is_aim_available", "aim"),
    "clearml": ("is_clearml_available", "clearml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "trackio": ("is_trackio_available", "trackio"),
}


def _available(name: str) -> bool:
    import accelerate.utils

    # Older accelerate releases lack the checks for newer trackers: treat those as absent.
    return bool(getattr(accelerate.utils, TRACKERS[name][0], lambda: False)())


def check_tracker_names(log_with: str | list[str], where: str) -> None:
    """Names only (no imports): part of config validation."""
    names = [log_with] if isinstance(log_with, str) else list(log_with)
    for name in names:
        if name not in TRACKERS and name not in ("auto", "none"):
            raise ConfigError(f"{where}: unknown tracker '{name}'{did_you_mean(name, TRACKERS)}; expected auto, "
                              f"none or one or more of {', '.join(TRACKERS)}.")
    if len(names) > 1 and ({"auto", "none"} & set(names)):
        raise ConfigError(f"{where}: 'auto' and 'none' stand alone, not in a list with other trackers.")


def resolve_trackers(log_with: str | list[str], where: str = "training.log_with") -> list[str]:
    """The trackers to start; a requested tracker that is not installed is a ConfigError."""
    check_tracker_names(log_with, where)
    names = [log_with] if isinstance(log_with, str) else list(log_with)
    if names == ["none"]:
        return []
    if names == ["auto"]:
        return ["tensorboard"] if _available("tensorboard") else []
    for name in names:
        if not _available(name):
            raise ConfigError(f"{where}: tracker '{name}' is not installed (pip install {TRACKERS[name][1]}).")
    return names


def flat_hyperparameters(config: Any) -> dict[str, Any]:
    """Trackers take flat scalar hyperparameters: nested keys joined with '/', lists as text."""
    from ..schema import to_mapping

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), item)
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[prefix] = value if value is not None else "none"
        else:
            flat[prefix] = str(value)

    walk("", to_mapping(config))
    return flat


def scalar_metrics(prefix: str, reports: dict[str, Any]) -> dict[str, float]:
    """``{prefix/task/metric: value}`` for the numeric metrics of each task's report."""
    return {f"{prefix}/{task}/{key}": value for task, report in reports.items()
            for key, value in report.metrics.items() if isinstance(value, (int, float))}
