from .evaluate import evaluate_tasks, predict_split
from .reports import format_summary, write_reports

__all__ = ["evaluate_tasks", "format_summary", "predict_split", "write_reports"]
