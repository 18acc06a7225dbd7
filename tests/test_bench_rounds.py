"""scripts/bench.py --rounds: configurations run round robin and each row is its median round."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_runs(speeds: dict[str, list[float]], order: list[str]):
    calls = {name: iter(values) for name, values in speeds.items()}

    def run(name):
        order.append(name)
        speed = next(calls[name])
        return {"samples_per_s": speed, "tokens_per_s": 20 * speed, "tokens_per_sample": 20.0}

    return {name: (lambda name=name: run(name)) for name in speeds}


def test_rounds_alternate_and_report_the_median(bench, capsys):
    order: list[str] = []
    runs = fake_runs({"ours": [40.0, 50.0, 48.0], "Trainer, group_by_length": [45.0, 43.0, 60.0]}, order)
    rows = bench.run_rounds(runs, 3)
    assert order == ["ours", "Trainer, group_by_length"] * 3
    assert rows["ours"]["samples_per_s"] == 48.0 and rows["ours"]["tokens_per_s"] == 960.0
    assert rows["Trainer, group_by_length"]["samples_per_s"] == 45.0
    assert rows["ours"]["rounds_samples_per_s"] == [40.0, 50.0, 48.0]
    assert "(round 3/3)" in capsys.readouterr().out


def test_one_round_is_the_run_itself(bench):
    rows = bench.run_rounds(fake_runs({"ours": [41.0]}, []), 1)
    assert rows == {"ours": {"samples_per_s": 41.0, "tokens_per_s": 820.0, "tokens_per_sample": 20.0}}


def test_an_even_count_takes_the_lower_middle(bench):
    rows = bench.run_rounds(fake_runs({"ours": [50.0, 40.0]}, []), 2)
    assert rows["ours"]["samples_per_s"] == 40.0


def test_the_table_pairs_each_round_with_the_trainers_round(bench, capsys):
    rows = bench.run_rounds(fake_runs({"ours": [40.0, 50.0, 48.0], "Trainer, group_by_length": [20.0, 40.0, 32.0]},
                                      []), 3)
    out = {"matmul_gflops": {"fp32": 100.0, "bf16": 400.0}}
    bench.training_table(rows, out, flops_per_token=1e9, batch_size=32, steps=10, warmup=2)
    assert out["training"]["ours"]["vs_trainer_group_by_length"] == 48.0 / 32.0
    assert out["training"]["ours"]["rounds_vs_trainer_group_by_length"] == [2.0, 1.25, 1.5]
    printed = capsys.readouterr().out
    assert "per round 1.25x-2.00x" in printed
    assert printed.count("per round") == 1  # not on the Trainer's own row
    assert "rounds_vs_trainer_group_by_length" not in out["training"]["Trainer, group_by_length"]
