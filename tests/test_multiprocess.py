"""Two processes (`accelerate launch`, torch.distributed over gloo, on CPU) train like one process with twice the
batch, and evaluation counts every example exactly once."""

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

import nlp_mtl
from nlp_mtl.cli import main

from .conftest import build_tiny_bert, write_experiment


def _train_events(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_on_two_processes(config, run, port, *options, env=None):
    """`nlp-mtl train` under `accelerate launch` with 2 processes; ``port`` differs per test."""
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher not on PATH")
    return subprocess.run(
        # --multi_gpu selects accelerate's torch.distributed launcher; on a machine without GPUs
        # the processes form a gloo group on CPU.
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
         "-m", "nlp_mtl.cli", "--quiet", "train", str(config), "--output-dir", str(run), *options],
        capture_output=True, text=True, timeout=600, env=env,
    )


def _disk_cache(cache):
    return ["--set", "data.storage=disk", "--set", f"data.cache_dir={cache}"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(data_dir, tmp_path):
    bert = build_tiny_bert(tmp_path / "bert_no_dropout", dropout=0.0)
    spec = data_dir / "specs" / "toy_sent.yaml"
    spec.write_text(spec.read_text() + "head: {dropout: 0.0}\n")
    csv = data_dir / "specs" / "toy_sent_csv.yaml"
    csv.write_text(csv.read_text() + "head: {dropout: 0.0}\n")
    # Two sentence tasks of 160 training examples = 10 global batches of 16 each: every batch
    # splits evenly, so the mean of the two halves' losses is the loss of the whole batch.
    common = {"steps": 24, "evaluations": 1, "log_every": 4, "lr": 1e-3}
    one = write_experiment(data_dir, bert, ["toy_sent", "toy_sent_csv"], batch_size=16, **common)
    assert main(["--quiet", "train", str(one), "--output-dir", str(data_dir / "one")]) == 0
    two = write_experiment(data_dir, bert, ["toy_sent", "toy_sent_csv"], batch_size=8, **common)
    result = _train_on_two_processes(two, data_dir / "two", 29517)
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = _train_events(data_dir / "one"), _train_events(data_dir / "two")
    train_a = [e for e in a if e["event"] == "train"]
    train_b = [e for e in b if e["event"] == "train"]
    assert [e["batches"] for e in train_a] == [e["batches"] for e in train_b]  # same task every step
    for x, y in zip(train_a, train_b):
        for task in x["loss"]:
            assert y["loss"][task] == pytest.approx(x["loss"][task], abs=1e-4), (x, y)
    for task in ("toy_sent", "toy_sent_csv"):
        for split, size in (("validation", 40), ("test", 60)):
            report = json.loads((data_dir / "two" / "reports" / f"{task}.{split}.json").read_text())
            # gathered from both processes: every example once, none dropped or duplicated
            assert report["metrics"]["examples"] == size
            assert sum(report["report"][label]["support"] for label in ("neg", "pos")) == size
            single = json.loads((data_dir / "one" / "reports" / f"{task}.{split}.json").read_text())
            assert report["report"]["confusion_matrix"]["matrix"] == single["report"]["confusion_matrix"]["matrix"]


@pytest.mark.slow
def test_two_processes_train_the_main_config_shape(data_dir, tiny_bert):
    """NER + two classification tasks, like the main job: trains, gathers, reports every example."""
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent", "toy_sent_csv"],
                              batch_size=8, steps=30, evaluations=1, log_every=5)
    run = data_dir / "shape"
    result = _train_on_two_processes(config, run, 29518)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_main_config_run(run)


# Loaded by every process the launcher starts (through PYTHONPATH): records which rank runs the
# disk store's checking pass and writes its tokenised splits.
_RECORD_DISK_WORK = textwrap.dedent("""
    import os
    if os.environ.get("NLP_MTL_TEST_DISK_LOG"):
        import nlp_mtl.data.disk_store as disk_store
        import nlp_mtl.data.loading as loading

        def _recorded(module, name):
            original = getattr(module, name)

            def wrapper(*args, **kwargs):
                with open(os.environ["NLP_MTL_TEST_DISK_LOG"], "a") as log:
                    log.write(f"{name} {os.environ.get('RANK', '?')}\\n")
                return original(*args, **kwargs)

            setattr(module, name, wrapper)

        _recorded(loading, "_check_train")
        _recorded(disk_store, "write_split")
""")


@pytest.mark.slow
def test_two_processes_with_disk_storage_tokenise_once(data_dir, tiny_bert, tmp_path):
    """With data.storage 'disk', one process checks and tokenises each train split into the cache
    and the other, waiting on the entry's lock, opens what it wrote instead of doing the same work."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RECORD_DISK_WORK)
    log = tmp_path / "disk_work.log"
    # The package's own folder too: the hook imports it before `-m` puts the working directory on the path.
    package_root = str(Path(nlp_mtl.__file__).resolve().parents[1])
    env = {**os.environ, "NLP_MTL_TEST_DISK_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(hook), package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent", "toy_sent_csv"],
                              batch_size=8, steps=30, evaluations=1, log_every=5)
    run = data_dir / "disk"
    result = _train_on_two_processes(config, run, 29519, *_disk_cache(tmp_path / "cache"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    work = log.read_text().split("\n")[:-1]
    # Each train file checked once and tokenised once, by whichever process took the lock first.
    assert sorted(line.split()[0] for line in work) == ["_check_train"] * 3 + ["write_split"] * 3, work
    _check_main_config_run(run)


@pytest.mark.slow
def test_two_processes_with_disk_storage_report_a_bad_file_without_traceback(data_dir, tiny_bert, tmp_path):
    """The process that checks the file first stops on the bad line with a one-line error; the
    other, waiting on the cache entry's lock rather than at a barrier, prints no traceback."""
    train = data_dir / "data" / "sent_train.jsonl"
    lines = train.read_text().splitlines()
    lines[4] = '{"text": "broken'
    train.write_text("\n".join(lines) + "\n")
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], batch_size=8, steps=10, evaluations=1)
    result = _train_on_two_processes(config, data_dir / "bad", 29520, *_disk_cache(tmp_path / "cache"))
    assert result.returncode != 0
    assert f"{train}:5: invalid JSON" in result.stderr
    for broken in ("[rank0]: Traceback", "[rank1]: Traceback", "Connection closed by peer"):
        assert broken not in result.stderr, result.stderr[-3000:]


def _check_main_config_run(run):
    events = _train_events(run)
    assert sum(e["event"] == "end" for e in events) == 1  # one log, written by the main process only
    assert sum(sum(e["batches"].values()) for e in events if e["event"] == "train") == 30
    for task, size in (("toy_ner", 40), ("toy_sent", 60), ("toy_sent_csv", 60)):
        report = json.loads((run / "reports" / f"{task}.test.json").read_text())
        assert report["metrics"]["examples"] == size
    ner = json.loads((run / "reports" / "toy_ner.test.json").read_text())["report"]
    gold_entities = sum(v["support"] for k, v in ner.items() if k not in ("micro avg", "macro avg", "weighted avg"))
    assert gold_entities > 0
