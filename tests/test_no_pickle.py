"""Loading never unpickles: a planted pickle where weights are expected is refused, unrun."""

import os
import pickle
import re
from pathlib import Path

import pytest

from nlp_mtl.backbone import load_encoder, load_tokenizer
from nlp_mtl.errors import UserError
from nlp_mtl.model import MultiTaskModel, TaskHeadInfo

PACKAGE = Path(__file__).resolve().parents[1] / "nlp_mtl"


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _saved_model(tiny_bert, path):
    tasks = [TaskHeadInfo("sent", "sequence_classification", "sequence_classification", ["a", "b"])]
    MultiTaskModel(load_encoder(str(tiny_bert)), tasks, load_tokenizer(str(tiny_bert))).save_pretrained(path)
    return path


def test_planted_pickle_instead_of_encoder_weights_is_refused(tiny_bert, tmp_path):
    model_dir = _saved_model(tiny_bert, tmp_path / "model")
    marker = tmp_path / "PWNED"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="safetensors only"):
        MultiTaskModel.from_pretrained(model_dir)
    assert not marker.exists()


def test_planted_pickle_instead_of_head_or_optimizer_is_refused(tiny_bert, tmp_path):
    import torch

    from nlp_mtl.training.checkpoint import load_checkpoint

    model_dir = _saved_model(tiny_bert, tmp_path / "model")
    marker = tmp_path / "PWNED"
    (model_dir / "heads" / "sent.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="unreadable head weights|truncated or was replaced"):  # checksum first
        MultiTaskModel.from_pretrained(model_dir)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text('{"trainer": {}, "optimizer": {"param_groups": []}, "scheduler": {}}')
    (ckpt / "optimizer.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    (ckpt / "rng.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(ckpt, optimizer, scheduler)
    assert not marker.exists()


def test_source_never_unpickles():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*import pickle|^\s*from pickle", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
