"""scripts/fewshot_sentences.py: every method's settings are valid, and a method that names a
fresh adapter gets that adapter (not adapt's default) on the same support sets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nlp_mtl.backbone import load_tokenizer
from nlp_mtl.config import load_task_spec
from nlp_mtl.fewshot import adapt
from nlp_mtl.fewshot.adapt import AdaptSettings, load_new_task

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fewshot_sentences.py"


def _script():
    spec = importlib.util.spec_from_file_location("fewshot_sentences", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_is_valid_settings_and_adapter():
    module = _script()
    for method in module.METHODS.values():
        if method is None:  # SetFit: the setfit package, not adapt
            continue
        _, settings = module.split_method(method)  # AdapterSetup parses the options: a typo fails here
        AdaptSettings(**settings)


@pytest.mark.parametrize("method, kind", [("adapt + pairs, lr 3e-4", "houlsby"), ("adapt + pairs, lora r16 all", "lora")])
def test_a_method_gets_the_adapter_it_names(data_dir, tiny_bert, monkeypatch, method, kind):
    module = _script()
    seen = []
    real = adapt.few_shot_adapt

    def spy(model, task, settings, *args, **kwargs):
        before = model.adapter_setup.type if model.adapter_setup else None
        summary = real(model, task, settings, *args, **kwargs)
        seen.append((before, model.adapter_setup.type, settings.pair_rounds))
        return summary

    monkeypatch.setattr(adapt, "few_shot_adapt", spy)
    task = load_new_task(load_task_spec(data_dir / "specs" / "toy_sent.yaml"), data_dir / "data",
                         load_tokenizer(str(tiny_bert)))
    scores = module.adapt_scores(task, 4, [1, 2], module.METHODS[method], str(tiny_bert))
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)
    # Installed before adapt (LoRA) or by adapt's default (Houlsby); the pair stage ran either way.
    assert seen == [("lora" if kind == "lora" else None, kind, 20)]
