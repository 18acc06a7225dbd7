import torch

from nlp_mtl.backbone import load_encoder, load_tokenizer
from nlp_mtl.model import MultiTaskModel, TaskHeadInfo
from nlp_mtl.model.heads import Head
from nlp_mtl.registry import HEADS


def _model(tiny_bert):
    tasks = [
        TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER", "I-PER"]),
        TaskHeadInfo("sent", "sequence_classification", "sequence_classification", ["neg", "pos"], {"pooling": "cls"}),
    ]
    return MultiTaskModel(load_encoder(str(tiny_bert)), tasks, load_tokenizer(str(tiny_bert))).eval()


def _batch(model):
    return dict(model.tokenizer(["alice met bob", "the movie"], padding=True, return_tensors="pt"))


def test_forward_shapes_and_loss(tiny_bert):
    model = _model(tiny_bert)
    batch = _batch(model)
    out = model("ner", batch["input_ids"], batch["attention_mask"], labels=torch.zeros_like(batch["input_ids"]))
    assert out["logits"].shape == (*batch["input_ids"].shape, 3) and out["loss"].ndim == 0
    out = model("sent", batch["input_ids"], batch["attention_mask"], labels=torch.tensor([0, 1]))
    assert out["logits"].shape == (2, 2)


def test_encode_all_matches_per_task_forward(tiny_bert):
    model = _model(tiny_bert)
    batch = _batch(model)
    together = model.encode_all(batch["input_ids"], batch["attention_mask"])
    for task in ("ner", "sent"):
        alone = model(task, batch["input_ids"], batch["attention_mask"])["logits"]
        torch.testing.assert_close(together[task], alone)


def test_save_and_load_round_trip_is_exact_and_pickle_free(tiny_bert, tmp_path):
    model = _model(tiny_bert)
    model.save_pretrained(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert {"multitask.json", "model.safetensors", "heads/ner.safetensors", "heads/sent.safetensors"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = MultiTaskModel.from_pretrained(tmp_path / "m")
    batch = _batch(model)
    for task in ("ner", "sent"):
        torch.testing.assert_close(model(task, **batch)["logits"], loaded(task, **batch)["logits"], rtol=0, atol=0)
    assert loaded.tasks["sent"].head_options == {"pooling": "cls"}


def test_new_head_type_is_one_class_and_a_decorator(tiny_bert):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class MaxOptions:
        type: str = "max_pool_test"

    @HEADS.register("max_pool_test")
    class MaxPoolHead(Head):
        Options = MaxOptions

        def __init__(self, hidden_size, num_labels, options):
            super().__init__()
            self.linear = torch.nn.Linear(hidden_size, num_labels)

        def forward(self, hidden, attention_mask):
            return self.linear(hidden.max(1).values)

    encoder = load_encoder(str(tiny_bert))
    model = MultiTaskModel(encoder, [TaskHeadInfo("x", "sequence_classification", "max_pool_test", ["a", "b", "c"])])
    out = model("x", torch.tensor([[2, 7, 3]]), torch.ones(1, 3, dtype=torch.long))
    assert out["logits"].shape == (1, 3)

