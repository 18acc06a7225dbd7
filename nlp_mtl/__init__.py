"""nlp-mtl: multi-task fine-tuning of transformer encoders."""

from . import task_types  # noqa: F401  (registers the built-in task types)
from .data import readers  # noqa: F401  (registers the built-in data formats)
from .model import MultiTaskModel

__version__ = "0.1.0"
__all__ = ["MultiTaskModel", "__version__"]
