"""nlp-mtl: multi-task fine-tuning of transformer encoders.

    import nlp_mtl
    nlp_mtl.train("configs/conll_trec_sst2.yaml", output_dir="runs/joint")
    model = nlp_mtl.MultiTaskModel.from_pretrained("runs/joint")
    model.predict("John lives in Berlin.")

Names are imported on first use, so `import nlp_mtl` (and `nlp-mtl --help`) stays instant
rather than loading torch, transformers and scikit-learn up front.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "api", "resume": "api", "meta_train": "api", "adapt": "api",
    "BackboneConfig": "config", "DataConfig": "config", "DataSpec": "config", "ExperimentConfig": "config",
    "SamplerConfig": "config", "TaskEntry": "config", "TaskSpec": "config", "TrainingConfig": "config",
    "load_experiment": "config", "load_task_spec": "config",
    "export_task": "export", "Predictor": "inference", "MultiTaskModel": "model",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nlp_mtl' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
