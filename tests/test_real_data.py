"""End-to-end on slices of ../shared/data with the embedded MiniLM backbone (slow)."""

import json
from pathlib import Path

import pytest

from nlp_mtl.cli import main
from nlp_mtl.config import BUILTIN_TASKS_DIR, load_task_spec
from nlp_mtl.data.loading import load_task_data

from .conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the checkout")
ROOT = Path(__file__).resolve().parents[1]


def test_builtin_specs_read_the_documented_counts():
    counts = {}
    for name in ("conll2003_ner", "trec_coarse", "trec_fine", "sst2", "conll2003_pos", "conll2003_chunk"):
        data = load_task_data(load_task_spec(BUILTIN_TASKS_DIR / f"{name}.yaml"), SHARED_DATA)
        counts[name] = {split: len(rows) for split, rows in data.splits.items()}
        if name == "conll2003_ner":
            entities = sum(t.startswith("B-") for r in data.splits["test"] for t in r["tags"])
            assert entities == 5648  # the official test entity count (shared/data/README.md)
    assert counts["conll2003_ner"] == {"train": 14041, "validation": 3250, "test": 3453}
    assert counts["trec_coarse"] == {"train": 4907, "validation": 545, "test": 500}  # 5,452 train lines, 10 % carved
    assert counts["sst2"] == {"train": 66002, "validation": 1347, "test": 872}  # 67,349 train rows, 2 % carved
    assert counts["trec_fine"]["test"] == 500


@pytest.mark.slow
def test_main_config_on_a_slice_trains_reports_and_predicts(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--quiet", "train", str(ROOT / "configs" / "conll_trec_sst2.yaml"), "--output-dir", str(run),
            "--data-root", str(SHARED_DATA),
            "--set", "training.steps=150", "--set", "training.evaluations=1",
            "--set", "data.limit={train: 1500, validation: 200, test: 300}"]
    assert main(args) == 0
    summary = json.loads((run / "reports" / "summary.test.json").read_text())["tasks"]
    assert set(summary) == {"conll2003_ner", "trec_coarse", "sst2"}
    # 150 steps on 1,500-example slices: far from converged, but well above what an untrained
    # model scores (NER F1 ~0, TREC ~20 %, SST-2 ~50 %).
    assert summary["conll2003_ner"]["metrics"]["f1"] > 0.3, summary
    assert summary["trec_coarse"]["metrics"]["accuracy"] > 0.5, summary
    assert summary["sst2"]["metrics"]["accuracy"] > 0.6, summary
    for task in summary:
        assert (run / "reports" / f"{task}.test.txt").is_file()

    capsys.readouterr()
    assert main(["predict", str(run), "--text", "Angela Merkel met Emmanuel Macron in Paris on Monday."]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["tasks"]) == {"conll2003_ner", "trec_coarse", "sst2"}
    assert "entities" in result["tasks"]["conll2003_ner"] and "label" in result["tasks"]["sst2"]
