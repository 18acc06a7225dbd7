"""Structure the architecture promises: every module imports, module-level imports form no
cycle, task kinds are asked of the task type, and the training loop fits on a screen."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import nlp_mtl

PACKAGE = Path(nlp_mtl.__file__).parent


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="nlp_mtl."))


def _module_level_imports(name: str) -> set[str]:
    """Modules of nlp_mtl that ``name`` imports when it is imported (not inside functions, not
    under TYPE_CHECKING)."""
    path = PACKAGE.joinpath(*name.split(".")[1:])
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    tree = ast.parse(source.read_text())
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("nlp_mtl"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                if base.startswith("nlp_mtl"):
                    for alias in node.names:
                        candidate = f"{base}.{alias.name}"
                        found.add(candidate if candidate in _ALL else base)

    visit(tree.body)
    return found


_ALL = set(_modules()) | {"nlp_mtl"}


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)


def test_no_import_cycles_between_modules():
    # A package's __init__ importing its own submodules is how packages work; a cycle through
    # two modules (or a module and another package) is what this forbids.
    graph = {m: {d for d in _module_level_imports(m) if d != m and d in _ALL} for m in _ALL}

    def own_init(a: str, b: str) -> bool:
        return b.startswith(a + ".") or a.startswith(b + ".")

    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if own_init(node, nxt):
                    continue
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in path and len(path) < 8:
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "\n".join(sorted(set(cycles))[:10])


def test_no_task_type_string_comparisons_outside_task_types():
    names = "|".join(re.escape(n) for n in ["token_classification", "sequence_classification",
                                            "multi_label_classification"])
    pattern = re.compile(rf"""(==|!=|\bin\b)\s*\(?["']({names})["']|["']({names})["']\s*(==|!=)""")
    # An alias (TOKEN = "token_classification") is how a comparison hides from the pattern above.
    alias = re.compile(rf"""^[A-Z][A-Z0-9_]*\s*(:[^=]+)?=\s*["']({names})["']\s*$""")
    # The exported model's own modeling file compares Hugging Face's problem_type, which happens
    # to be spelled like our multi-label type.
    allowed = {"export_modeling.py"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "task_types" in path.parts or path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or alias.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_engine_step_loop_fits_on_a_screen():
    from nlp_mtl.training.engine import Engine

    for method in (Engine.fit, Engine._micro_step):
        assert len(inspect.getsource(method).splitlines()) <= 40


def test_no_function_over_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "\n".join(long)
