"""The key references in docs/reference/ are generated from the config schema: they must match it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nlp_mtl import config as cfg
from nlp_mtl import docs_reference as ref

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_reference_pages_are_up_to_date():
    for rel, text in ref.pages().items():
        path = DOCS / rel
        assert path.is_file(), f"{path} is missing: run python -m nlp_mtl.docs_reference --write"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is stale (the config schema changed): run python -m nlp_mtl.docs_reference --write")


def test_every_yaml_key_is_in_the_reference():
    pages = ref.pages()
    config_page, spec_page = pages[ref.CONFIG_PAGE], pages[ref.TASK_SPEC_PAGE]
    for cls in (cfg.ExperimentConfig, cfg.TaskEntry, cfg.BackboneConfig, cfg.SamplerConfig, cfg.TrainingConfig,
                cfg.DataConfig, cfg.AdapterConfig, cfg.MetaConfig):
        for f in dataclasses.fields(cls):
            if f.name != "source":
                assert f"| `{f.name}` |" in config_page, f"{cls.__name__}.{f.name}"
    for cls in (cfg.TaskSpec, cfg.DataSpec, cfg.CarvedSplit):
        for f in dataclasses.fields(cls):
            if f.name != "source":
                assert f"| `{f.name}` |" in spec_page, f"{cls.__name__}.{f.name}"
    assert "`source`" not in config_page.split("| key |", 1)[1]  # provenance, not a YAML key


@dataclasses.dataclass
class _Example:
    # Comment above,
    # on two lines.
    above: int = 1
    below: str = "x"
    """Attribute docstring."""
    trailing: bool = True  # trailing comment
    # A comment that ends here.

    plain: float = 0.5
    choice: str | None = None


def test_field_docs_read_comments_and_attribute_docstrings():
    docs = ref.field_docs(_Example)
    assert docs == {"above": "Comment above, on two lines.", "below": "Attribute docstring.",
                    "trailing": "trailing comment"}


def test_types_defaults_and_literal_choices_come_from_the_schema():
    page = ref.pages()[ref.CONFIG_PAGE]
    assert "| `strategy` | one of `proportional`, `temperature`, `uniform`, `annealed` | `proportional` |" in page
    assert "| `lr` | float | `5e-5` |" in page
    assert "| `tasks` | list of string or [mapping](#task-entry) | **required** |" in page
    assert "`lora`" in page and "`houlsby`" in page  # registry names for adapters.type


def test_check_mode_reports_a_stale_page(tmp_path, capsys):
    assert ref.main(["--write", "--docs-dir", str(tmp_path)]) == 0
    assert ref.main(["--check", "--docs-dir", str(tmp_path)]) == 0
    (tmp_path / ref.CONFIG_PAGE).write_text("old\n", encoding="utf-8")
    assert ref.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert "stale" in capsys.readouterr().err
