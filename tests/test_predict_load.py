"""Many concurrent predict calls through the Python API give exactly the one-at-a-time outputs."""

import random
from concurrent.futures import ThreadPoolExecutor

from nlp_mtl.backbone import load_encoder, load_tokenizer
from nlp_mtl.inference import Predictor
from nlp_mtl.model import MultiTaskModel, TaskHeadInfo

from .conftest import FILLER, PEOPLE, PLACES


def test_200_concurrent_requests_match_sequential(tiny_bert):
    tasks = [
        TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
        TaskHeadInfo("sent", "sequence_classification", "sequence_classification", ["neg", "pos"]),
    ]
    model = MultiTaskModel(load_encoder(str(tiny_bert)), tasks, load_tokenizer(str(tiny_bert))).eval()
    predictor = Predictor(model)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(PEOPLE + PLACES + FILLER) for _ in range(rng.randint(1, 30))) + " ." for _ in range(200)]
    sequential = [predictor.predict([t])[0] for t in texts]
    with ThreadPoolExecutor(max_workers=16) as pool:
        concurrent = list(pool.map(lambda t: predictor.predict([t])[0], texts))
    assert concurrent == sequential
    # and a batch of many inputs at once gives the same labels
    batched = predictor.predict(texts)
    assert [r["tasks"]["sent"]["label"] for r in batched] == [r["tasks"]["sent"]["label"] for r in sequential]
    assert [r["tasks"]["ner"]["tags"] for r in batched] == [r["tasks"]["ner"]["tags"] for r in sequential]


def test_concurrent_requests_match_sequential_with_adapter_groups(tiny_bert):
    """Each pass selects its adapter group on the shared model: concurrent passes must not run
    through another request's group."""
    import torch

    from nlp_mtl.model import AdapterSetup

    tasks = [
        TaskHeadInfo("ner", "token_classification", "token_classification", ["O", "B-PER", "I-PER"], adapter="a"),
        TaskHeadInfo("sent", "sequence_classification", "sequence_classification", ["neg", "pos"], adapter="b"),
    ]
    torch.manual_seed(0)
    model = MultiTaskModel(load_encoder(str(tiny_bert)), tasks, load_tokenizer(str(tiny_bert)),
                           AdapterSetup("lora", {"rank": 4}, ["a", "b"])).eval()
    with torch.no_grad():  # trained-looking adapters: the two groups give different encodings
        for p in model.adapters.parameters():
            p.normal_(0, 0.5)
    predictor = Predictor(model)
    rng = random.Random(1)
    texts = [" ".join(rng.choice(PEOPLE + PLACES + FILLER) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    sequential = [predictor.predict([t])[0] for t in texts]
    with ThreadPoolExecutor(max_workers=16) as pool:
        concurrent = list(pool.map(lambda t: predictor.predict([t])[0], texts))
    assert concurrent == sequential
    # model.predict makes a Predictor per call: the guard must be the model's, not a Predictor's
    with ThreadPoolExecutor(max_workers=16) as pool:
        assert list(pool.map(model.predict, texts)) == sequential
