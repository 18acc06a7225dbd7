"""Sequence classifier for exported tasks whose head no stock Hugging Face class reproduces.

``nlp-mtl export`` copies this file next to the exported weights as ``modeling_nlp_mtl.py`` and
points ``auto_map`` in ``config.json`` at it, so that

    pipeline("text-classification", model=DIR, trust_remote_code=True)

loads it with nothing but ``transformers`` installed. It imports nothing from nlp_mtl for that
reason. Stock classes pool the first token through a family-specific layer; heads trained here
with mean pooling (the default, as the embedded MiniLM was pretrained that way) need this class.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig as FamilyConfig  # nlp-mtl export rewrites this line per encoder family
from transformers import BertModel as FamilyModel  # and this one
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

# Hugging Face's config.problem_type for label sets: one sigmoid per label, binary cross-entropy.
MULTI_LABEL = "multi_label_classification"
# Encoders whose AutoModel would add BERT's unused pooler unless told not to.
_HAS_POOLER = ("bert", "roberta", "xlm-roberta", "camembert")


class NlpMtlForSequenceClassification(PreTrainedModel):
    config_class = FamilyConfig
    base_model_prefix = "encoder"
    # The wrapped encoder runs the attention, so it decides which implementations are possible.
    _supports_sdpa = getattr(FamilyModel, "_supports_sdpa", False)
    _supports_flash_attn = getattr(FamilyModel, "_supports_flash_attn", False)
    _supports_flex_attn = getattr(FamilyModel, "_supports_flex_attn", False)
    _supports_attention_backend = getattr(FamilyModel, "_supports_attention_backend", False)

    def __init__(self, config: FamilyConfig) -> None:
        super().__init__(config)
        kwargs = {"add_pooling_layer": False} if config.model_type in _HAS_POOLER else {}
        self.encoder = FamilyModel(config, **kwargs)
        self.pooling = getattr(config, "nlp_mtl_pooling", "mean")
        hidden = config.hidden_size
        if self.pooling == "cls":
            self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(getattr(config, "nlp_mtl_dropout", 0.1))
        self.classifier = nn.Linear(hidden, config.num_labels)
        self._uses_token_types = getattr(config, "type_vocab_size", 0) > 1
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._uses_token_types:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = torch.tanh(self.dense(hidden[:, 0]))
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None and self.config.problem_type == MULTI_LABEL:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
