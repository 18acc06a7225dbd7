"""Plots written into a run and the self-contained HTML page of ``nlp-mtl report``."""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nlp_mtl.cli import main
from nlp_mtl.reporting import load_run, write_plots, write_report

from .conftest import write_experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOPIC_LABELS = ["R&D", "sales", "support"]
TOPIC_MATRIX = [[17, 2, 1], [3, 25, 0], [0, 4, 28]]
# A report line with characters HTML must escape: the page has to show it, not parse it.
TOPIC_TEXT = ("== topic (test) ==\n              precision    recall  f1-score   support\n\n"
              "         R&D     0.8500    0.8500    0.8500        20\n"
              "       sales     0.8065    0.8929    0.8475        28\n"
              "     support     0.9655    0.8750    0.9180        32\n\n"
              "    accuracy                         0.8750        80\n")
NER_TEXT = ("== ner (test) ==\n              precision    recall  f1-score   support\n\n"
            "         LOC     0.9000    0.9000    0.9000        40\n"
            "         PER     0.8000    0.8000    0.8000        30\n\n"
            "   micro avg     0.8571    0.8571    0.8571        70\n")


def _dump(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _experiment(name: str = "fake_run") -> dict:
    return {
        "config": {
            "name": name,
            "backbone": {"name": "tiny-test-bert", "tokenizer": None},
            "sampler": {"strategy": "proportional", "temperature": 2.0},
            "training": {"batch_size": 8, "lr": 0.0003, "steps": 40, "seed": 7, "warmup_ratio": 0.1,
                         "weight_decay": 0.01, "mixed_precision": "no"},
        },
        "data_root": "/data",
        "tasks": [
            {"name": "ner", "type": "token_classification", "metric": "f1", "max_length": 32,
             "sampling_weight": 1.0, "loss_weight": 1.0},
            {"name": "topic", "type": "sequence_classification", "metric": "accuracy", "max_length": 32,
             "sampling_weight": 0.5, "loss_weight": 1.0},
        ],
    }


def _ner_report(split: str, f1: float) -> dict:
    return {
        "task": "ner", "split": split, "main_metric": "f1",
        "metrics": {"precision": f1, "recall": f1, "f1": f1, "token_accuracy": 0.97, "examples": 50, "truncated": 0},
        "report": {
            "LOC": {"precision": 0.9, "recall": 0.9, "f1-score": 0.9, "support": 40.0},
            "PER": {"precision": 0.8, "recall": 0.8, "f1-score": 0.8, "support": 30.0},
            "micro avg": {"precision": f1, "recall": f1, "f1-score": f1, "support": 70.0},
            "macro avg": {"precision": 0.85, "recall": 0.85, "f1-score": 0.85, "support": 70.0},
            "weighted avg": {"precision": f1, "recall": f1, "f1-score": f1, "support": 70.0},
        },
    }


def _topic_report(split: str, accuracy: float) -> dict:
    report: dict = {label: {"precision": 0.85, "recall": 0.85, "f1-score": 0.85, "support": 20.0}
                    for label in TOPIC_LABELS}
    report["accuracy"] = accuracy
    report["confusion_matrix"] = {"labels": TOPIC_LABELS, "matrix": TOPIC_MATRIX}
    return {"task": "topic", "split": split, "main_metric": "accuracy", "report": report,
            "metrics": {"accuracy": accuracy, "macro_f1": 0.871, "weighted_f1": 0.874, "examples": 80, "truncated": 0}}


def make_run(path: Path, *, reports: bool = True, validation: bool = True) -> Path:
    """A finished run directory in the format training writes, by hand (see runs/*/ for real ones)."""
    _dump(path / "experiment.json", _experiment())
    _dump(path / "model" / "multitask.json", {"format_version": 1, "tasks": [
        {"name": "ner", "task_type": "token_classification", "labels": ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
         "metric": "f1"},
        {"name": "topic", "task_type": "sequence_classification", "labels": TOPIC_LABELS, "metric": "accuracy"},
    ]})
    events = [{"event": "train", "step": s, "lr": 3e-4, "loss": {"ner": 2.0 / s, "topic": 1.1 - s / 100},
               "batches": {"ner": 6, "topic": 4}} for s in (10, 20, 30, 40)]
    if validation:
        events.insert(2, {"event": "validation", "step": 20, "score": 0.7, "metrics": {
            "ner": {"f1": 0.6, "precision": 0.6, "recall": 0.6}, "topic": {"accuracy": 0.8, "macro_f1": 0.75}}})
        events.append({"event": "validation", "step": 40, "score": 0.85, "metrics": {
            "ner": {"f1": 0.82, "precision": 0.8, "recall": 0.84}, "topic": {"accuracy": 0.88, "macro_f1": 0.87}}})
        events.append({"event": "end", "steps": 40, "best_step": 40, "seconds": 12.5})
    lines = [json.dumps(e) for e in events] + ['{"event": "train", "step": 5']  # a line a kill cut in half
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if reports:
        for split, f1, accuracy in (("validation", 0.82, 0.88), ("test", 0.8571, 0.875)):
            _dump(path / "reports" / f"ner.{split}.json", _ner_report(split, f1))
            _dump(path / "reports" / f"topic.{split}.json", _topic_report(split, accuracy))
            (path / "reports" / f"ner.{split}.txt").write_text(NER_TEXT.replace("(test)", f"({split})"))
            (path / "reports" / f"topic.{split}.txt").write_text(TOPIC_TEXT.replace("(test)", f"({split})"))
            _dump(path / "reports" / f"summary.{split}.json", {"split": split, "tasks": {
                "ner": {"main_metric": "f1", "metrics": _ner_report(split, f1)["metrics"]},
                "topic": {"main_metric": "accuracy", "metrics": _topic_report(split, accuracy)["metrics"]}}})
        (path / "FINISHED").write_text('{"seconds": 12.5}\n')
    return path


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture()
def fake_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def test_write_plots_writes_one_valid_png_per_piece(fake_run):
    paths = write_plots(fake_run)
    # Page order: training curves, then per task (entity F1 bars, confusion matrices by split).
    assert [p.name for p in paths] == ["training_loss.png", "validation.png", "entity_f1.ner.png",
                                       "confusion.topic.validation.png", "confusion.topic.test.png"]
    assert all(p.parent == fake_run / "plots" for p in paths)
    for path in paths:
        data = path.read_bytes()
        width, height = png_size(data)
        assert len(data) > 5_000 and width >= 300 and height >= 250, (path.name, len(data), width, height)
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (fake_run / "plots").iterdir()) == sorted(p.name for p in paths)


def test_write_plots_again_replaces_files(fake_run):
    first = {p.name: p.read_bytes() for p in write_plots(fake_run)}
    second = write_plots(fake_run)
    assert {p.name for p in second} == set(first)


def test_missing_pieces_are_skipped_not_errors(tmp_path):
    # Mid-training: train events only, no validation yet, no reports, no FINISHED.
    run = make_run(tmp_path / "early", reports=False, validation=False)
    assert [p.name for p in write_plots(run)] == ["training_loss.png"]
    page = write_report(run).read_text()
    assert "unfinished" in page and "No reports yet" in page

    # Nothing logged at all.
    bare = tmp_path / "bare"
    _dump(bare / "experiment.json", _experiment("bare"))
    assert write_plots(bare) == []
    assert "No training metrics logged yet" in write_report(bare).read_text()


def test_confusion_matrix_with_many_long_labels_renders(tmp_path):
    from nlp_mtl.reporting.plots import plot_confusion

    labels = [f"category_number_{i}" for i in range(30)]
    matrix = [[(i * 7 + j * 3) % 11 for j in range(30)] for i in range(30)]
    path = plot_confusion("many", "test", {"labels": labels, "matrix": matrix}, tmp_path / "c.png")
    width, height = png_size(path.read_bytes())
    assert 500 < width < 3000 and 500 < height < 3000
    # A matrix that does not match its labels is skipped, not drawn wrong.
    assert plot_confusion("bad", "test", {"labels": ["a", "b"], "matrix": [[1, 2]]}, tmp_path / "d.png") is None


def test_report_is_one_self_contained_page(fake_run):
    path = write_report(fake_run)
    assert path == fake_run / "report.html"
    page = path.read_text(encoding="utf-8")

    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(list((fake_run / "plots").glob("*.png"))) == 5
    assert all(base64.b64decode(image)[:8] == PNG_MAGIC for image in images)
    # Nothing outside the page: every src is a data URI; no scripts, stylesheets or links out.
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    for forbidden in ("<script", "<link", "http://", "https://", "url("):
        assert forbidden not in page, forbidden

    assert "<title>fake_run" in page and "<h1>fake_run</h1>" in page
    for text in ("tiny-test-bert", "0.0003", ">40<", ">8<", "ner", "topic", "token classification"):
        assert text in page, text
    # Summary tables for both splits, scores in %.
    assert "85.71" in page and "87.50" in page and "88.00" in page
    # The classification reports, escaped: '&' shown as text, not taken as markup.
    assert "R&amp;D     0.8500" in page and "R&D     0.8500" not in page
    assert "micro avg     0.8571" in page and "== topic (validation) ==" in page


def test_report_output_option(fake_run, tmp_path):
    out = tmp_path / "elsewhere" / "page.html"
    assert write_report(fake_run, out) == out
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert not (fake_run / "report.html").exists()


def test_cli_report_prints_the_path(fake_run, capsys):
    assert main(["report", str(fake_run)]) == 0
    assert capsys.readouterr().out.strip() == str(fake_run / "report.html")
    assert (fake_run / "plots" / "training_loss.png").is_file()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nlp_mtl.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("case, expected", [
    ("empty_dir", "not a run directory (no experiment.json)"),
    ("missing", "no such run directory"),
    ("bad_json", "not a valid experiment file"),
])
def test_cli_report_on_a_non_run_dir_exits_2_with_one_line(tmp_path, case, expected):
    target = tmp_path / case
    if case != "missing":
        target.mkdir()
    if case == "bad_json":
        (target / "experiment.json").write_text("{not json")
    result = _cli("report", str(target))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nlp-mtl: error: ") and expected in lines[0], result.stderr
    assert not (target / "plots").exists() and not (target / "report.html").exists()


def test_cli_report_help_has_example():
    result = _cli("report", "--help")
    assert result.returncode == 0 and "example: nlp-mtl report" in result.stdout


def test_plotting_leaves_matplotlib_global_state_alone(fake_run):
    # In a fresh interpreter: pyplot never imported, rcParams unchanged. (Read rcParams raw:
    # reading 'backend' through rcParams itself would resolve it and import pyplot.)
    code = ("import sys, matplotlib; "
            "raw = lambda: {k: dict.__getitem__(matplotlib.rcParams, k) for k in matplotlib.rcParams}; "
            "before = raw(); "
            "from nlp_mtl.reporting import write_plots; assert write_plots(sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
            "assert raw() == before, 'rcParams changed'")
    result = subprocess.run([sys.executable, "-c", code, str(fake_run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plot_failure_at_end_of_training_only_warns(fake_run, monkeypatch, caplog):
    import nlp_mtl.reporting
    from nlp_mtl.run_dir import RunDir
    from nlp_mtl.training.trainer import _write_plots

    def broken(run_dir):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(nlp_mtl.reporting, "write_plots", broken)
    with caplog.at_level(logging.WARNING):
        _write_plots(RunDir(fake_run))
    assert "could not write plots" in caplog.text and "no fonts today" in caplog.text


def test_training_writes_plots_into_the_run(data_dir, tiny_bert):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], steps=10, evaluations=2, log_every=5)
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    names = {p.name for p in (run / "plots").iterdir()}
    assert names == {"training_loss.png", "validation.png", "entity_f1.toy_ner.png",
                     "confusion.toy_sent.validation.png", "confusion.toy_sent.test.png"}
    for name in names:
        png_size((run / "plots" / name).read_bytes())

    # The page built from a real run: every task, its report text and the embedded plots.
    page = write_report(run).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(names)
    loaded = load_run(run)
    for task in ("toy_ner", "toy_sent"):
        assert f"<h3>{task}<" in page
        report_line = next(line for line in loaded.report_texts[(task, "test")].splitlines() if "macro avg" in line)
        assert report_line in page
