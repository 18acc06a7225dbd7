"""Per-task adapters: attach, train only what they should, save/load, package, predict."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from nlp_mtl.cli import main
from nlp_mtl.errors import ConfigError, UserError
from nlp_mtl.model import AdapterSetup, MultiTaskModel, TaskHeadInfo
from nlp_mtl.model.task_package import load_task_package, save_task_package

from .conftest import write_experiment
from .tiny_encoders import build_tiny_model_dir

SENTENCES = ["alice visited paris", "bob saw rome and berlin today , great movie"]


def _model(tiny_bert, kind="lora", options=None, groups=("a", "b")):
    from nlp_mtl.backbone import load_encoder, load_tokenizer

    tasks = [TaskHeadInfo("a", "token_classification", "token_classification", ["O", "B-X", "I-X"], adapter="a"),
             TaskHeadInfo("b", "sequence_classification", "sequence_classification", ["p", "n"], adapter="b")]
    setup = AdapterSetup(kind, options or {}, list(groups))
    return MultiTaskModel(load_encoder(str(tiny_bert)), tasks, load_tokenizer(str(tiny_bert)), setup)


def _batch(model):
    enc = model.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("kind,options,per_layer", [
    ("lora", {"rank": 4}, 2), ("lora", {"rank": 2, "target_modules": ["query", "key", "value", "intermediate"]}, 4),
    ("houlsby", {"reduction_factor": 4}, 2), ("pfeiffer", {}, 1)])
def test_adapters_attach_to_the_right_layers_and_start_as_identity(tiny_bert, kind, options, per_layer):
    model = _model(tiny_bert, kind, options).eval()
    layers = model.encoder.config.num_hidden_layers
    assert len(model.adapters["a"].deltas) == per_layer * layers
    ids, mask = _batch(model)
    bare = model.encode(ids, mask)
    # LoRA's B and the bottleneck's up-projection start at zero: the adapted encoder is the base one.
    assert torch.allclose(model.encode_through("a", ids, mask), bare, atol=1e-6)
    with torch.no_grad():
        for p in model.adapters["a"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.allclose(model.encode_through("a", ids, mask), bare, atol=1e-4)
    # the other group is still at its initialisation, and outside routed() the encoder is bare
    assert torch.allclose(model.encode_through("b", ids, mask), bare, atol=1e-6)
    assert torch.allclose(model.encode(ids, mask), bare, atol=1e-6)


def test_lora_matches_the_formula_and_peft(tiny_bert):
    """Our LoRA computes W x + (alpha/r) B A x on the targeted layers, as peft's does."""
    model = _model(tiny_bert, "lora", {"rank": 4, "alpha": 8}).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.adapters["a"].parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    query = model.encoder.encoder.layer[0].attention.self.query
    delta = model.adapters["a"].deltas["encoder__layer__0__attention__self__query"]
    x = torch.randn(3, 5, query.in_features)
    expected = x @ (query.weight + 2.0 * delta.lora_B @ delta.lora_A).t() + query.bias
    with model.routed("a"):
        assert torch.allclose(query(x), expected, atol=1e-5)

    peft = pytest.importorskip("peft")
    from nlp_mtl.backbone import load_encoder

    reference = peft.get_peft_model(load_encoder(str(tiny_bert)), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    state = reference.state_dict()
    with torch.no_grad():
        for name, d in model.adapters["a"].deltas.items():
            prefix = "base_model.model." + name.replace("__", ".")
            state[f"{prefix}.lora_A.default.weight"].copy_(d.lora_A)
            state[f"{prefix}.lora_B.default.weight"].copy_(d.lora_B)
    reference.load_state_dict(state)
    ids, mask = _batch(model)
    ours = model.encode_through("a", ids, mask)
    theirs = reference.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_unknown_adapter_type_and_target_are_config_errors(tiny_bert):
    with pytest.raises(ConfigError, match="unknown adapter type 'loar'.*did you mean 'lora'"):
        _model(tiny_bert, "loar")
    with pytest.raises(ConfigError, match="'qkv' matches no linear layer"):
        _model(tiny_bert, "lora", {"target_modules": ["qkv"]})
    with pytest.raises(ConfigError, match="unknown key 'rnak'"):
        _model(tiny_bert, "lora", {"rnak": 4})


@pytest.mark.parametrize("family", ["distilbert", "roberta", "deberta-v2"])
def test_adapters_find_their_layers_in_other_encoder_families(tmp_path, family):
    from nlp_mtl.backbone import load_encoder

    encoder = load_encoder(str(build_tiny_model_dir(family, tmp_path / family)))
    for kind in ("lora", "houlsby"):
        model = MultiTaskModel(encoder, [], None, AdapterSetup(kind, {}, ["g"]))
        assert len(model.adapters["g"].deltas) == 2 * encoder.config.num_hidden_layers
        model._hooks.remove()


def _adapter_run(data_dir, tiny_bert, adapters, **training):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], **training)
    raw = yaml.safe_load(config.read_text())
    raw["adapters"] = adapters
    config.write_text(yaml.safe_dump(raw))
    run = data_dir / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    return run


def test_adapter_training_leaves_the_encoder_untouched_and_round_trips(data_dir, tiny_bert, capsys):
    run = _adapter_run(data_dir, tiny_bert, {"type": "houlsby", "options": {"reduction_factor": 4}, "lr": 1e-2},
                       steps=60)
    model = MultiTaskModel.from_pretrained(run)
    base = MultiTaskModel.from_pretrained(run)  # fresh copy for comparisons
    from nlp_mtl.backbone import load_encoder

    original = load_encoder(str(tiny_bert)).state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.encoder.state_dict().items())
    trained = model.adapters["toy_ner"].deltas
    assert any(float(d.up.weight.detach().abs().sum()) > 0 for d in trained.values())  # the adapter learnt
    assert sorted(p.name for p in (run / "model" / "adapters").iterdir()) == ["toy_ner.safetensors", "toy_sent.safetensors"]

    # A task package: adapter + head alone, loaded onto the bare encoder, predicts the same.
    package = save_task_package(model, "toy_ner", data_dir / "pkg")
    bare = MultiTaskModel(load_encoder(str(run / "model")), [], model.tokenizer)
    assert load_task_package(bare, package) == "toy_ner"
    ids = model.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = base.eval()("toy_ner", ids["input_ids"], ids["attention_mask"])["logits"]
        got = bare.eval()("toy_ner", ids["input_ids"], ids["attention_mask"])["logits"]
    assert torch.equal(expected, got)
    assert json.loads((package / "task.json").read_text())["adapter"]["type"] == "houlsby"

    # Loading it onto a different encoder is refused, by fingerprint.
    from nlp_mtl.backbone import load_tokenizer

    other = MultiTaskModel(load_encoder(str(tiny_bert)), [], load_tokenizer(str(tiny_bert)))
    with torch.no_grad():
        next(other.encoder.parameters()).add_(1.0)
    with pytest.raises(UserError, match="different base encoder"):
        load_task_package(other, package)

    # A package never replaces a folder that is not one, and needs --overwrite to replace one.
    with pytest.raises(UserError, match="exists and is not empty"):
        save_task_package(model, "toy_ner", package)
    with pytest.raises(UserError, match="not a task package"):
        save_task_package(model, "toy_ner", run, overwrite=True)
    assert (run / "FINISHED").is_file()

    # predict: each task through its own adapter; --add-task brings a packaged one in.
    capsys.readouterr()
    assert main(["predict", str(run), "--text", SENTENCES[1]]) == 0
    both = json.loads(capsys.readouterr().out)
    assert set(both["tasks"]) == {"toy_ner", "toy_sent"}
    assert main(["export", str(run), "--task", "toy_sent", "--out", str(data_dir / "sent_pkg"), "--adapter-only"]) == 0
    capsys.readouterr()
    assert main(["predict", str(package.parent / "run"), "--text", SENTENCES[1]]) == 0
    assert main(["predict", str(run), "--add-task", str(data_dir / "sent_pkg"), "--text", SENTENCES[1]]) == 2
    assert "already in the model" in capsys.readouterr().err


def test_predict_matches_per_task_forward_with_adapters(data_dir, tiny_bert):
    run = _adapter_run(data_dir, tiny_bert, {"type": "lora", "options": {"rank": 4}, "lr": 1e-2}, steps=40)
    model = MultiTaskModel.from_pretrained(run)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.add_(0.1 * torch.randn_like(p))  # make the groups clearly differ
    ids = model.tokenizer(SENTENCES[1], return_tensors="pt")
    together = model.encode_all(ids["input_ids"], ids["attention_mask"])
    for task in ("toy_ner", "toy_sent"):
        alone = model(task, ids["input_ids"], ids["attention_mask"])["logits"]
        assert torch.allclose(together[task], alone, atol=1e-6)


def test_shared_adapter_group_and_parameter_report(data_dir, tiny_bert, capsys):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], steps=10)
    raw = yaml.safe_load(config.read_text())
    raw["adapters"] = {"type": "lora", "groups": {"shared": ["toy_ner", "toy_sent"]}}
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--output-dir", str(data_dir / "run")]) == 0
    out = capsys.readouterr().out
    assert "encoder" in out and "(frozen)" in out and "adapter 'shared'" in out and "% of the encoder" in out
    model = MultiTaskModel.from_pretrained(data_dir / "run")
    assert list(model.adapters) == ["shared"]
    assert {t.adapter for t in model.tasks.values()} == {"shared"}
    # the shared adapter is counted once, not once per task
    adapter = sum(p.numel() for p in model.adapters["shared"].parameters())
    head = sum(p.numel() for p in model.heads["toy_ner"].parameters())
    assert f"toy_ner: head {head:,} parameters, plus adapter 'shared' ({adapter:,}" in out
    assert "shared with toy_sent" in out and "shared with toy_ner" in out


@pytest.mark.parametrize("adapters,message", [
    ({"type": "lora", "options": {"rank": 0}}, "adapters.options: rank and alpha must be > 0"),
    ({"type": "lora", "groups": {"g": ["toy_nre"]}}, "adapters.groups.g: 'toy_nre' is not a task of this experiment"),
    ({"type": "lora", "groups": {"toy_ner": ["toy_sent"]}}, "group 'toy_ner' has the name of task 'toy_ner'"),
    ({"type": "none", "options": {"rank": 4}}, "options/groups given but type is 'none'"),
])
def test_adapter_config_errors(data_dir, tiny_bert, capsys, adapters, message):
    config = write_experiment(data_dir, tiny_bert, ["toy_ner", "toy_sent"], steps=5)
    raw = yaml.safe_load(config.read_text())
    raw["adapters"] = adapters
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--output-dir", str(data_dir / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (data_dir / "r").exists()


def test_lora_task_exports_as_a_stock_model_with_the_adapter_folded_in(data_dir, tiny_bert):
    run = _adapter_run(data_dir, tiny_bert, {"type": "lora", "options": {"rank": 4}, "lr": 1e-2}, steps=30)
    from nlp_mtl.export import export_task

    # export_task itself reloads the export and checks its logits against encoder + adapter.
    result = export_task(run, "toy_ner", data_dir / "exported")
    assert result.max_abs_diff < 1e-4 and result.architecture == "BertForTokenClassification"


def test_bottleneck_task_export_is_refused_with_the_alternative(data_dir, tiny_bert, capsys):
    run = _adapter_run(data_dir, tiny_bert, {"type": "pfeiffer"}, steps=5)
    assert main(["export", str(run), "--task", "toy_ner", "--out", str(data_dir / "x")]) == 2
    assert "--adapter-only" in capsys.readouterr().err


def test_published_files_and_folders_get_normal_permissions(tmp_path):
    import os
    import stat

    from nlp_mtl.fileio import atomic_write, current_umask
    from nlp_mtl.fileio import replace_dir

    atomic_write(tmp_path / "f.json", "{}")
    src = tmp_path / "src"
    src.mkdir(mode=0o700)
    (src / "w.bin").write_bytes(b"x")
    os.chmod(src / "w.bin", 0o600)
    replace_dir(src, tmp_path / "dst")
    umask = current_umask()
    assert stat.S_IMODE(os.stat(tmp_path / "f.json").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "dst").st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "dst" / "w.bin").st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("kind,options", [("lora", {"rank": 4}), ("houlsby", {"reduction_factor": 4})])
def test_scaling_an_adapter_scales_what_it_adds_to_the_encoder(tiny_bert, kind, options):
    """scale_(f) moves the adapted encoder along the line from the bare encoder (0) to the
    adapted one (1): every adapted layer's output becomes base + f * delta."""
    from nlp_mtl.backbone import load_encoder
    from nlp_mtl.model.adapters import AdapterSet, module_key, parse_options, resolve_targets

    encoder = load_encoder(tiny_bert)
    parsed = parse_options(kind, options, "adapters")
    targets = resolve_targets(encoder, kind, parsed)
    adapters = AdapterSet(encoder, kind, parsed, targets)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.1)  # a "trained" adapter: every factor non-zero
    modules = dict(encoder.named_modules())
    name = targets[0]
    layer = modules[name]
    x = torch.randn(3, 5, layer.in_features)
    base = layer(x)
    delta = adapters.deltas[module_key(name)]
    full = delta(x, base) - base
    adapters.scale_(0.25)
    torch.testing.assert_close(delta(x, base) - base, 0.25 * full)
    adapters.scale_(0.0)
    torch.testing.assert_close(delta(x, base), base)


def test_passes_through_different_groups_run_concurrently_and_stay_correct(tiny_bert):
    """Routing is per thread: two threads inside passes through different groups at the same
    time (a barrier makes them overlap; a lock around passes would deadlock it) each get their
    own group's output."""
    import threading

    model = _model(tiny_bert, "lora", {"rank": 4}).eval()
    with torch.no_grad():
        for group, scale in (("a", 0.05), ("b", -0.05)):
            for p in model.adapters[group].parameters():
                p.add_(scale * torch.ones_like(p))
    ids, mask = _batch(model)
    with torch.no_grad():
        expected = {g: model.encode_through(g, ids, mask) for g in ("a", "b")}
    assert not torch.allclose(expected["a"], expected["b"], atol=1e-4)
    both_inside = threading.Barrier(2, timeout=20)
    got: dict[str, torch.Tensor] = {}

    def work(group: str) -> None:
        with torch.no_grad(), model.routed(group):
            both_inside.wait()
            for _ in range(3):
                got[group] = model.encode(ids, mask)

    threads = [threading.Thread(target=work, args=(g,)) for g in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(got) == {"a", "b"}
    for group in ("a", "b"):
        assert torch.allclose(got[group], expected[group], atol=1e-6)
