from . import heads  # noqa: F401  (registers the built-in heads)
from .multitask import AdapterSetup, MultiTaskModel, TaskHeadInfo

__all__ = ["AdapterSetup", "MultiTaskModel", "TaskHeadInfo"]
