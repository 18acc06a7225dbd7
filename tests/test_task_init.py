"""nlp-mtl tasks init: drafted specs validate with the right counts; unreadable files get one clear error."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from nlp_mtl.cli import main
from nlp_mtl.config import BUILTIN_TASKS_DIR, load_task_spec
from nlp_mtl.data.loading import load_task_data
from nlp_mtl.errors import DataError
from nlp_mtl.task_init import find_siblings, guess_tag_scheme

from .conftest import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside the checkout")


def _init(tmp_path, capsys, data_file, *options, root=None):
    out = tmp_path / "spec.yaml"
    args = ["tasks", "init", str(data_file), "--out", str(out), *options]
    if root is not None:
        args += ["--data-root", str(root)]
    assert main(args) == 0, capsys.readouterr().err
    notes = capsys.readouterr().out
    return load_task_spec(out), out, notes


def _counts(data):
    return {split: len(rows) for split, rows in data.splits.items()}


@needs_shared
@pytest.mark.parametrize("options, builtin", [((), "conll2003_ner"), (("--column", "tags=1"), "conll2003_pos")])
def test_conll2003_columns_give_the_builtin_tasks(tmp_path, capsys, options, builtin):
    spec, _, notes = _init(tmp_path, capsys, SHARED_DATA / "conll2003" / "train.txt", *options, root=SHARED_DATA)
    reference = load_task_spec(BUILTIN_TASKS_DIR / f"{builtin}.yaml")
    assert spec.type == "token_classification"
    assert (spec.data.columns, spec.data.tag_scheme) == (reference.data.columns, reference.data.tag_scheme)
    # Paths relative to the data root, as the built-in specs write them.
    assert (spec.data.train, spec.data.validation, spec.data.test) == ("conll2003/train.txt", "conll2003/valid.txt",
                                                                       "conll2003/test.txt")
    data, expected = load_task_data(spec, SHARED_DATA), load_task_data(reference, SHARED_DATA)
    assert _counts(data) == {"train": 14041, "validation": 3250, "test": 3453}
    assert data.labels == expected.labels
    assert ("iob2" if builtin == "conll2003_ner" else "none") in notes


@needs_shared
def test_trec_lines_become_a_regex_spec(tmp_path, capsys):
    spec, out, notes = _init(tmp_path, capsys, SHARED_DATA / "trec" / "train_5500.label", root=SHARED_DATA)
    assert (spec.type, spec.data.format, spec.data.encoding) == ("sequence_classification", "regex", "latin-1")
    assert "not UTF-8" in notes and "COARSE:fine" in notes
    data = load_task_data(spec, SHARED_DATA)
    assert _counts(data) == {"train": 4907, "validation": 545}  # no test file named like train_5500.label
    assert len(data.labels) == 50
    # The pattern in the comment gives the 6 coarse classes.
    coarse = next(line for line in out.read_text().splitlines() if "coarse classes: pattern:" in line)
    pattern = yaml.safe_load(coarse.split("pattern:", 1)[1])
    spec_coarse = replace(spec, data=replace(spec.data, pattern=pattern))
    assert load_task_data(spec_coarse, SHARED_DATA).labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


@needs_shared
def test_sst2_tsv_with_header_and_dev_file(tmp_path, capsys):
    spec, out, _ = _init(tmp_path, capsys, SHARED_DATA / "sst2" / "train.tsv", root=SHARED_DATA)
    assert (spec.data.format, spec.data.header, spec.data.columns) == ("tsv", True, {"text": "sentence", "label": "label"})
    assert spec.data.validation == "sst2/dev.tsv"
    data = load_task_data(spec, SHARED_DATA)
    assert _counts(data) == {"train": 67349, "validation": 872} and data.labels == ["0", "1"]
    assert "label_map" in out.read_text()  # 0/1 labels: the comment says how to name them


def test_jsonl_tokens_and_tags_validate(tmp_path, capsys):
    for split, n in (("train", 30), ("dev", 6)):
        with (tmp_path / f"ner_{split}.jsonl").open("w") as f:
            for i in range(n):
                tokens = ["alice", "met", "bob", "in", "new", "york"][: 3 + i % 4]
                tags = ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"][: len(tokens)]
                f.write(json.dumps({"id": i, "tokens": tokens, "pos_tags": ["X"] * len(tokens), "ner_tags": tags}) + "\n")
    spec, out, notes = _init(tmp_path, capsys, tmp_path / "ner_train.jsonl")
    assert spec.data.columns == {"tokens": "tokens", "tags": "ner_tags"} and spec.data.tag_scheme == "iob2"
    assert "'pos_tags'" in notes  # the other per-token field is named, with how to choose it
    assert spec.data.train == "ner_train.jsonl" and spec.data.validation == "ner_dev.jsonl"  # beside the spec
    assert main(["tasks", "validate", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["labels"] == ["O", "B-LOC", "I-LOC", "B-PER"]
    assert {s: v["examples"] for s, v in summary["splits"].items()} == {"train": 30, "validation": 6}
    assert summary["splits"]["train"]["entities"] == sum(
        sum(t.startswith("B-") for t in ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"][: 3 + i % 4]) for i in range(30))


def test_conftest_files_find_their_splits(data_dir, capsys):
    spec, _, _ = _init(data_dir, capsys, data_dir / "data" / "ner_train.txt")
    assert _counts(load_task_data(spec, data_dir / "data")) == {"train": 160, "validation": 40, "test": 40}
    (data_dir / "spec.yaml").unlink()
    spec, _, _ = _init(data_dir, capsys, data_dir / "data" / "sent_train.jsonl")
    assert spec.data.columns == {"text": "sentence", "label": "polarity"}
    assert _counts(load_task_data(spec, data_dir / "data")) == {"train": 180, "validation": 20, "test": 60}  # 10 % carved


def test_a_label_only_test_has_takes_from_splits(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"nice film {i},pos\nbad film {i},neg\n" for i in range(10)))
    (tmp_path / "test.csv").write_text("text,label\nok film,neutral\nnice one,pos\n")
    spec, out, _ = _init(tmp_path, capsys, tmp_path / "train.csv")
    assert spec.labels is not None and spec.labels.from_splits == ["train", "test"]
    assert load_task_data(spec, tmp_path).labels == ["neg", "neutral", "pos"]
    # Without that line, the default still refuses the label.
    out.write_text("\n".join(line for line in out.read_text().splitlines() if not line.startswith("labels:")) + "\n")
    assert main(["tasks", "validate", str(out)]) == 2
    assert "label 'neutral' never appears in the train split" in capsys.readouterr().err


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "", "the file is empty"),
    ("blob.bin", b"\x00\x01\x02abc\x00", "binary data"),
    ("data.txt.gz", b"\x1f\x8b\x08\x00rest", "compressed file"),
    ("array.json", '[{"text": "a", "label": "b"}]', "a JSON array"),
    ("prose.txt", "".join(f"{w} number {i} says something else.\n" for i, w in enumerate(["It", "We", "A", "One", "Then",
                                                                                        "So", "Now", "He"] * 5)),
     "cannot tell the format"),
    ("one_label.tsv", "".join(f"pos\tsome text {i}\n" for i in range(20)), "every example has the label 'pos'"),
    ("ids.jsonl", _jsonl({"tokens": ["a", "b"], "ner_tags": [0, 3]} for _ in range(5)), "are integers (class ids)"),
    ("multi.jsonl", _jsonl({"text": f"t {i}", "labels": ["a", "b"]} for i in range(20)), "multi-label"),
    ("both.jsonl", _jsonl({"tokens": ["a", "b"], "tags": ["O", "B-X"], "label": "x"} for _ in range(5)), "--type"),
    ("bilou.txt", "a B-X\nb L-X\n\nc U-Y\nd O\n", "BILOU"),
    ("mixed.txt", "a B-X\nb NN\n\nc O\nd VB\n", "--tag-scheme"),
    ("ragged.jsonl", '{"text": "a", "label": "b"}\nnot json\n', "line 2 is not JSON"),
])
def test_unreadable_files_get_one_clear_error(tmp_path, capsys, name, content, message):
    path = _write(tmp_path / name, content)
    assert main(["tasks", "init", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"nlp-mtl: error: {path}: ") and message in err and "\n" not in err, err
    assert captured.out == ""


def test_existing_out_is_kept_without_force(tmp_path, capsys):
    data = _write(tmp_path / "train.tsv", "label\ttext\n" + "".join(f"{i % 2}\tsome text {i}\n" for i in range(20)))
    out = _write(tmp_path / "spec.yaml", "mine\n")
    assert main(["tasks", "init", str(data), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(["tasks", "init", str(data), "--out", str(out), "--force"]) == 0
    assert load_task_spec(out).data.columns == {"text": "text", "label": "label"}


def test_without_out_the_spec_goes_to_stdout(tmp_path, capsys):
    data = _write(tmp_path / "train.tsv", "label\ttext\n" + "".join(f"{i % 2}\tsome text {i}\n" for i in range(20)))
    assert main(["tasks", "init", str(data), "--name", "mine"]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)
    assert spec["name"] == "mine" and spec["data"]["train"] == str(data.resolve())
    assert not list(tmp_path.glob("*.yaml"))


@pytest.mark.parametrize("sentences, scheme", [
    ([["B-PER", "I-PER", "O", "B-LOC"]], "iob2"),
    ([["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], "iob1"),
    ([["S-PER", "O", "B-LOC", "E-LOC"]], "bioes"),
    ([["NN", "VBZ", "DT"]], "none"),
])
def test_tag_scheme_guess(sentences, scheme):
    assert guess_tag_scheme(sentences, Path("f"))[0] == scheme


def test_all_o_tags_are_refused():
    with pytest.raises(DataError, match="every tag is 'O'"):
        guess_tag_scheme([["O", "O"]], Path("f"))


def test_siblings_are_named_like_the_train_file(tmp_path):
    for name in ("eng.train", "eng.testa", "eng.testb", "x_train.jsonl", "x_dev.jsonl"):
        (tmp_path / name).write_text("")
    assert find_siblings(tmp_path / "eng.train") == {"validation": tmp_path / "eng.testa", "test": tmp_path / "eng.testb"}
    assert find_siblings(tmp_path / "x_train.jsonl") == {"validation": tmp_path / "x_dev.jsonl"}
