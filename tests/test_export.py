"""`nlp-mtl export`: each task leaves as a plain Hugging Face model that pipeline() loads and
that predicts what `nlp-mtl predict` predicts."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from nlp_mtl.backbone import load_encoder, load_tokenizer
from nlp_mtl.cli import main
from nlp_mtl.export import export_task
from nlp_mtl.inference import Predictor
from nlp_mtl.model import MultiTaskModel, TaskHeadInfo

from .conftest import make_data_dir, ner_sentences, sentiment_rows, write_experiment


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("export")
    make_data_dir(tmp)
    config = write_experiment(tmp, tiny_bert, ["toy_ner", "toy_sent"])
    run = tmp / "run"
    assert main(["--quiet", "train", str(config), "--output-dir", str(run)]) == 0
    return run


def _sample_texts() -> list[str]:
    ner = [" ".join(words) for words, _ in ner_sentences(25, 99)]
    return ner + [text for text, _ in sentiment_rows(25, 98)]


PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["nlp_mtl"] = None  # the user has only transformers: any import of ours would fail
    from transformers import pipeline
    directory, kind, texts = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
    if kind == "token-classification":
        nlp = pipeline(kind, model=directory, aggregation_strategy="first")
        out = [[(e["entity_group"], e["start"], e["end"]) for e in r] for r in nlp(texts)]
    else:
        nlp = pipeline(kind, model=directory, trust_remote_code=True)
        out = [r["label"] for r in nlp(texts)]
    print(json.dumps(out))
""")


def _pipeline_in_clean_process(directory, kind, texts):
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(directory), kind], input=json.dumps(texts),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_exported_tasks_load_in_pipeline_and_predict_like_nlp_mtl(trained_run, tmp_path):
    out_ner, out_sent = tmp_path / "ner", tmp_path / "sent"
    assert main(["export", str(trained_run), "--task", "toy_ner", "--out", str(out_ner)]) == 0
    assert main(["export", str(trained_run), "--task", "toy_sent", "--out", str(out_sent)]) == 0

    config = json.loads((out_ner / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    labels = MultiTaskModel.from_pretrained(trained_run).tasks["toy_ner"].labels
    assert config["id2label"] == {str(i): label for i, label in enumerate(labels)}
    assert config["label2id"] == {label: i for i, label in enumerate(labels)}
    assert (out_ner / "tokenizer.json").is_file() and (out_ner / "README.md").is_file()
    # mean pooling has no stock class: the directory carries its own modeling file
    assert json.loads((out_sent / "config.json").read_text())["auto_map"]
    assert (out_sent / "modeling_nlp_mtl.py").is_file()

    texts = _sample_texts()
    ours = Predictor(MultiTaskModel.from_pretrained(trained_run), batch_size=1).predict(texts)
    ner = _pipeline_in_clean_process(out_ner, "token-classification", texts)
    sent = _pipeline_in_clean_process(out_sent, "text-classification", texts)
    expected_ner = [[[e["type"], e["start"], e["end"]] for e in r["tasks"]["toy_ner"]["entities"]] for r in ours]
    assert ner == expected_ner
    assert sum(map(len, ner)) > 10  # the sample has entities, so the comparison means something
    assert sent == [r["tasks"]["toy_sent"]["label"] for r in ours]
    assert len(set(sent)) > 1


def test_cls_pooled_head_exports_as_the_stock_class(tiny_bert, tmp_path):
    torch.manual_seed(0)
    tasks = [TaskHeadInfo("topic", "sequence_classification", "sequence_classification", ["a", "b", "c"],
                          head_options={"pooling": "cls"})]
    model = MultiTaskModel(load_encoder(str(tiny_bert)), tasks, load_tokenizer(str(tiny_bert)))
    model.save_pretrained(tmp_path / "model")
    result = export_task(tmp_path / "model", "topic", tmp_path / "out")
    assert result.architecture == "BertForSequenceClassification" and not result.remote_code
    assert result.max_abs_diff <= 1e-5
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert "bert.pooler.dense.weight" in weights
    assert not (tmp_path / "out" / "modeling_nlp_mtl.py").exists()


def test_export_refuses_unknown_task_and_existing_output(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--task", "toy_nerr", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "toy_nerr" in err and "did you mean 'toy_ner'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["export", str(trained_run), "--task", "toy_ner", "--out", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    # --overwrite replaces an earlier export only, never a folder of other files
    assert main(["export", str(trained_run), "--task", "toy_ner", "--out", str(tmp_path / "taken"), "--overwrite"]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".taken.*"))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "deberta-v2", "electra"])
def test_every_encoder_family_exports_token_and_sequence_heads(family, tmp_path):
    from .tiny_encoders import build_tiny_model_dir

    backbone = build_tiny_model_dir(family, tmp_path / "backbone")
    torch.manual_seed(0)
    tasks = [
        TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER", "I-PER"]),
        TaskHeadInfo("mean", "sequence_classification", "sequence_classification", ["neg", "pos"]),
        TaskHeadInfo("cls", "sequence_classification", "sequence_classification", ["a", "b", "c"],
                     head_options={"pooling": "cls"}),
    ]
    model = MultiTaskModel(load_encoder(str(backbone)), tasks, load_tokenizer(str(backbone)))
    model.save_pretrained(tmp_path / "model")
    results = {t.name: export_task(tmp_path / "model", t.name, tmp_path / t.name) for t in tasks}
    # every export is loaded back through its Auto class and compared inside export_task
    assert all(r.max_abs_diff <= 1e-4 for r in results.values())
    assert not results["ner"].remote_code and results["ner"].architecture.endswith("ForTokenClassification")
    assert results["mean"].remote_code
    # [CLS] -> dense -> tanh is the stock head of BERT and RoBERTa, and DeBERTa's with its activation set;
    # DistilBERT (ReLU) and ELECTRA (GELU) pool differently, so they carry their own class
    assert results["cls"].remote_code == (family in ("distilbert", "electra"))


def test_export_refuses_a_file_or_the_source_itself_as_output(trained_run, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["export", str(trained_run), "--task", "toy_ner", "--out", str(tmp_path / "file")]) == 2
    assert main(["export", str(trained_run), "--task", "toy_ner", "--out", str(trained_run), "--overwrite"]) == 2
    assert main(["export", str(trained_run / "model"), "--task", "toy_ner", "--out", str(trained_run),
                 "--overwrite"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert (trained_run / "model" / "multitask.json").is_file()
