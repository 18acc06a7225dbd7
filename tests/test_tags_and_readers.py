import pytest

from nlp_mtl.config import CarvedSplit, DataSpec, TaskSpec
from nlp_mtl.data.loading import load_task_data
from nlp_mtl.data.readers import Roles, read_conll, read_csv, read_jsonl, read_regex, read_tsv
from nlp_mtl.data.tags import to_iob2
from nlp_mtl.errors import DataError

TOKENS = Roles(required=("tokens", "tags"), token_level=True)
SEQ = Roles(required=("text", "label"), optional=("text_pair",))


def test_iob1_to_iob2():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"], "iob1") == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]


def test_bioes_to_iob2():
    assert to_iob2(["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], "bioes") == ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]


def test_conll_handles_docstart_blank_lines_and_columns(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    rows = list(read_conll(f, DataSpec(format="conll", train="a.txt", columns={"tokens": 0, "tags": 3}), TOKENS))
    assert [r["tokens"] for r in rows] == [["EU", "rejects"], ["Peter"]]
    assert [r["tags"] for r in rows] == [["B-ORG", "O"], ["B-PER"]]
    assert rows[0]["line"] == 3
    pos = list(read_conll(f, DataSpec(format="conll", train="a.txt", columns={"tokens": 0, "tags": 1}), TOKENS))
    assert pos[0]["tags"] == ["NNP", "VBZ"]


def test_conll_ragged_row_names_the_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("EU NNP B-NP B-ORG\nrejects B-VP O\n")
    with pytest.raises(DataError, match=r"a.txt:2: ragged row: 3 columns where earlier rows have 4"):
        list(read_conll(f, DataSpec(format="conll", train="a.txt"), TOKENS))


def test_jsonl_tokens_and_tags_must_match(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a"], "tags": ["O", "O"]}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: 1 tokens but 2 tags"):
        list(read_jsonl(f, DataSpec(format="jsonl", train="a.jsonl"), TOKENS))


def test_csv_with_and_without_header(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text('text,label\n"hello, world",pos\n')
    rows = list(read_csv(f, DataSpec(format="csv", train="h.csv"), SEQ))
    assert rows[0]["text"] == "hello, world" and rows[0]["label"] == "pos"
    g = tmp_path / "n.tsv"
    g.write_text("pos\tfirst\tsecond\n")
    spec = DataSpec(format="tsv", train="n.tsv", header=False, columns={"label": 0, "text": 1, "text_pair": 2})
    rows = list(read_tsv(g, spec, SEQ))
    assert rows[0] == {"text": "first", "text_pair": "second", "label": "pos", "line": 1}


def test_csv_missing_column_is_named(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text("sentence,label\nhi,pos\n")
    with pytest.raises(DataError, match=r"h.csv:1: header has no column 'text'"):
        list(read_csv(f, DataSpec(format="csv", train="h.csv"), SEQ))


def test_regex_reads_label_prefixed_lines(tmp_path):
    f = tmp_path / "trec.label"
    f.write_bytes("DESC:manner How did serfdom develop ?\nHUM:ind Who killed Gandhi \xe9 ?\n".encode("latin-1"))
    spec = DataSpec(format="regex", train="trec.label", encoding="latin-1", pattern=r"^(?P<label>[A-Z]+):\S+ (?P<text>.+)$")
    rows = list(read_regex(f, spec, SEQ))
    assert [(r["label"], r["text"]) for r in rows] == [("DESC", "How did serfdom develop ?"), ("HUM", "Who killed Gandhi é ?")]


def test_wrong_encoding_names_line_and_fix(tmp_path):
    f = tmp_path / "trec.label"
    f.write_bytes(b"DESC:def what ?\nHUM:ind caf\xe9 ?\n")
    spec = DataSpec(format="regex", train="trec.label", pattern=r"^(?P<label>\S+) (?P<text>.+)$")
    with pytest.raises(DataError, match=r"trec.label:2: cannot decode byte 0xe9 as utf-8; set data.encoding"):
        list(read_regex(f, spec, SEQ))


def _spec(tmp_path, **data):
    return TaskSpec(name="t", type="sequence_classification", data=DataSpec(**data), source=str(tmp_path / "t.yaml"))


def test_unseen_test_label_is_an_error(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "test.csv").write_text("text,label\na,x\nb,z\n")
    with pytest.raises(DataError, match=r"test.csv:3: label 'z' never appears in the train split"):
        load_task_data(_spec(tmp_path, format="csv", train="train.csv", test="test.csv"), tmp_path)


def test_carved_validation_is_deterministic_and_disjoint(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(100)))
    spec = _spec(tmp_path, format="csv", train="train.csv", validation=CarvedSplit(0.2, seed=3))
    a, b = load_task_data(spec, tmp_path), load_task_data(spec, tmp_path)
    assert [r["text"] for r in a.splits["validation"]] == [r["text"] for r in b.splits["validation"]]
    assert len(a.splits["validation"]) == 20 and len(a.splits["train"]) == 80
    assert not {r["text"] for r in a.splits["validation"]} & {r["text"] for r in a.splits["train"]}


def test_empty_split_and_missing_file(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="train split is empty"):
        load_task_data(_spec(tmp_path, format="csv", train="train.csv"), tmp_path)
    with pytest.raises(DataError, match="data file 'nope.csv' not found"):
        load_task_data(_spec(tmp_path, format="csv", train="nope.csv"), tmp_path)


def test_labels_inferred_in_stable_order(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"tokens": ["x", "y"], "tags": ["I-PER", "B-LOC"]}\n{"tokens": ["z"], "tags": ["O"]}\n')
    spec = TaskSpec(name="t", type="token_classification", source=str(tmp_path / "t.yaml"),
                    data=DataSpec(format="jsonl", train="a.jsonl", tag_scheme="iob1"))
    data = load_task_data(spec, tmp_path)
    assert data.labels == ["O", "B-LOC", "B-PER"]
    assert data.splits["train"][0]["tags"] == ["B-PER", "B-LOC"]


def test_csv_errors_name_the_line_a_multiline_record_starts_on(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text('text,label\n"two\nlines",pos\n"three\nmore\nlines",\n')
    with pytest.raises(DataError, match=r"m.csv:4: missing label"):
        list(read_csv(f, DataSpec(format="csv", train="m.csv"), SEQ))
