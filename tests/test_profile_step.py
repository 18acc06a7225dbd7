"""scripts/profile_step.py: a profiled window of real training steps, and its summary lines."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"


@pytest.mark.slow
def test_profiles_a_window_of_steps_and_reports_the_matmul_share():
    done = subprocess.run([sys.executable, str(SCRIPT), "--start", "2", "--steps", "2", "--examples", "64",
                           "--batch-size", "8", "--rows", "5"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "steps 3-4" in out
    step_ms = float(re.search(r"step time in the window: ([\d.]+) ms", out).group(1))
    share = float(re.search(r"matrix multiplications: ([\d.]+) %", out).group(1))
    assert step_ms > 0 and 0 < share < 100
    assert "aten::" in out  # the operator table


def test_refuses_an_empty_window():
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--start and --steps" in done.stderr
