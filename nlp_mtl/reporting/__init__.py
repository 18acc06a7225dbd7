"""Plots and a self-contained HTML page for a run directory (``nlp-mtl report RUN_DIR``)."""

from .html import write_report
from .plots import write_plots
from .run_data import RunData, load_run

__all__ = ["RunData", "load_run", "write_plots", "write_report"]
