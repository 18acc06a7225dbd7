"""The built-in specs are package data (found through importlib.resources, in a wheel too), and the
data root is found without a checkout or says where it looked."""

import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from nlp_mtl import config
from nlp_mtl.cli import main
from nlp_mtl.config import BUILTIN_TASKS_DIR, builtin_task_specs, load_task_spec, resolve_task_path
from nlp_mtl.data.loading import resolve_data_path
from nlp_mtl.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = {"conll2003_ner", "conll2003_pos", "conll2003_chunk", "trec_coarse", "trec_fine", "sst2"}


def test_builtin_specs_are_found_through_importlib_resources():
    package = resources.files("nlp_mtl.builtin_tasks")
    found = {entry.name.removesuffix(".yaml") for entry in package.iterdir() if entry.name.endswith(".yaml")}
    assert found >= BUILTINS
    assert set(builtin_task_specs()) == found and Path(str(package)) == BUILTIN_TASKS_DIR
    for name in BUILTINS:
        assert load_task_spec(resolve_task_path(name)).name == name


def test_tasks_list_names_every_builtin(capsys):
    assert main(["tasks", "list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed == set(builtin_task_specs())


def test_dependencies_are_ranges_and_constraints_pin_the_cpu_torch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "==" in d]
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "torch==2.13.0" in pins


def test_the_wheel_carries_the_builtin_specs_and_every_subpackage(tmp_path):
    pytest.importorskip("setuptools")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("nlp_mtl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for spec in (ROOT / "tasks").glob("*.yaml"):
        assert f"nlp_mtl/builtin_tasks/{spec.name}" in names
    for init in (ROOT / "nlp_mtl").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names


def test_without_a_data_root_the_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("NLP_MTL_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path / "site-packages")  # an installed package: no checkout
    root = config.default_data_root()
    assert not root.exists()
    spec = load_task_spec(BUILTIN_TASKS_DIR / "conll2003_ner.yaml")
    with pytest.raises(DataError) as err:
        resolve_data_path(spec, "conll2003/train.txt", root)
    message = str(err.value)
    assert "No data root was given" in message and str(tmp_path) in message and "--data-root" in message
    assert "site-packages" not in message


def test_the_environment_variable_wins_over_the_search(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert config.default_data_root() == (tmp_path / "shared" / "data").resolve()
    monkeypatch.setenv("NLP_MTL_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert config.default_data_root() == tmp_path / "elsewhere"
    assert "(from NLP_MTL_DATA_ROOT) does not exist" in config.data_root_help(tmp_path / "elsewhere")
