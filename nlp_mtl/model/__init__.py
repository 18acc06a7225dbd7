from . import heads  # noqa: F401  (registers the built-in heads)
from .multitask import MultiTaskModel, TaskHeadInfo

__all__ = ["MultiTaskModel", "TaskHeadInfo"]
