"""Task types: what a kind of task reads, how it is tokenised, decoded and scored.

Importing this package registers the built-in types; a new type is one module here with
``@TASK_TYPES.register("name")``.
"""

from . import multi_label_classification, sequence_classification, token_classification  # noqa: F401
from .base import HFExport, TaskReport, TaskType

__all__ = ["HFExport", "TaskReport", "TaskType"]
