"""How many ``predict`` inputs were cut at a task's ``max_length``, marked on each result.

Each result gets ``"truncated"``: the tasks (sorted) for which its input was longer than the
task's ``max_length`` and was cut, as training cuts it; ``[]`` when nothing was cut. Lengths are
counted the way each task is fed: token tasks on the words, sequence tasks on the raw text,
sentence-pair tasks on text and pair.
"""

from __future__ import annotations

from typing import Any

from .inference import split_words
from .registry import TASK_TYPES


def count_truncated(model: Any, inputs: list[str | dict[str, str]], results: list[dict[str, Any]]) -> int:
    """Mark every result with the tasks its input was truncated for; return how many inputs were."""
    tokenizer = model.tokenizer
    texts = [x if isinstance(x, str) else x["text"] for x in inputs]
    pairs = [x.get("text_pair") if isinstance(x, dict) else None for x in inputs]
    lengths: dict[str, list[int]] = {}

    def measure(kind: str) -> list[int]:
        if kind not in lengths:
            if kind == "words":
                enc = tokenizer([split_words(t).words or [""] for t in texts], is_split_into_words=True, verbose=False)
            elif kind == "pair":
                enc = tokenizer(texts, [p or "" for p in pairs], verbose=False)
            else:
                enc = tokenizer(texts, verbose=False)
            lengths[kind] = [len(ids) for ids in enc["input_ids"]]
        return lengths[kind]

    cut = 0
    for i, result in enumerate(results):
        result["truncated"] = []
    for name, info in model.tasks.items():
        if info.pair and not all(pairs):
            continue  # not predicted for this input
        # Token tasks read the input as words, sequence tasks as raw text (as predict encodes them).
        kind = "pair" if info.pair else "words" if TASK_TYPES.get(info.task_type).roles.token_level else "text"
        for i, n in enumerate(measure(kind)):
            if n > info.max_length and name in results[i]["tasks"]:
                results[i]["truncated"].append(name)
    for result in results:
        result["truncated"].sort()
        cut += bool(result["truncated"])
    return cut
