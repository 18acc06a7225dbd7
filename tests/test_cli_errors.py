"""User mistakes exit with code 2 and one clear message, never a traceback."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nlp_mtl.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("content, expected", [
    ("tasks: [conll2003_ner]\ntrainig: {lr: 1}\n", "unknown key 'trainig' (did you mean 'training'?)"),
    ("tasks: [conll2003_ner]\ntraining: {batch_size: -4}\n", "training.batch_size: expected an integer > 0"),
    ("tasks: [nope]\n", "task 'nope' not found"),
    ("tasks: [conll2003_ner\n", "malformed YAML"),
    ("tasks: [conll2003_ner]\nbackbone: {name: ./no/such/dir}\n", "is not a model directory"),
])
def test_bad_config_exits_2_without_traceback(tmp_path, content, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    result = run_cli("train", str(config), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert str(config) in result.stderr or "bad.yaml" in result.stderr or "backbone" in result.stderr


def test_tasks_validate_reports_bad_data_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("EU B-ORG\nrejects O\n\nPeter X-PER\n")
    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: t\ntype: token_classification\ndata: {{format: conll, train: {tmp_path / 'train.txt'}}}\n")
    result = run_cli("tasks", "validate", str(spec))
    assert result.returncode == 2
    assert "train.txt:4: tag 'X-PER' is not 'O' or B/I-TYPE" in result.stderr and "Traceback" not in result.stderr


def test_help_has_examples():
    result = run_cli("train", "--help")
    assert result.returncode == 0 and "example: nlp-mtl train" in result.stdout
