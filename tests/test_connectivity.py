"""Connectivity (top pairwise cosine similarity), checked against a brute-force loop and hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from hf_genssl.connectivity import text_features, top_similarity
from tests.conftest import tiny_config


def brute_force(features: torch.Tensor, k: int) -> tuple[float, float]:
    """Plain Python loops over pairs, straight from the definition."""
    rows = features.tolist()
    n = len(rows)

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    top_k, mean = 0.0, 0.0
    for i in range(n):
        others = sorted((cosine(rows[i], rows[j]) for j in range(n) if j != i), reverse=True)
        top_k += sum(others[:k]) / k
        mean += sum(others) / (n - 1)
    return top_k / n, mean / n


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_top_similarity_matches_brute_force_in_any_chunking(chunk_size):
    features = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    result = top_similarity(features, k=3, chunk_size=chunk_size)
    expected_top, expected_mean = brute_force(features, 3)
    assert result["top_k_similarity"] == pytest.approx(expected_top, abs=1e-5)
    assert result["mean_similarity"] == pytest.approx(expected_mean, abs=1e-5)
    assert result["num_samples"] == 23 and result["k"] == 3


def test_hand_made_cases():
    # Two identical samples and one orthogonal one: each of the pair has a twin (1), the third's best is 0.
    assert top_similarity([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], k=1)["top_1_similarity"] == pytest.approx(2 / 3)
    # Moving one sample next to another raises the metric (perturbation in the expected direction).
    features = torch.eye(4)
    before = top_similarity(features, k=1)["top_1_similarity"]
    features[1] = torch.tensor([1.0, 0.05, 0.0, 0.0])
    assert top_similarity(features, k=1)["top_1_similarity"] > before + 0.4
    assert top_similarity(features, k=50)["k"] == 3  # clipped to n - 1


def test_bad_input():
    with pytest.raises(ValueError, match="num_samples >= 2"):
        top_similarity([[1.0, 2.0]])
    with pytest.raises(ValueError, match="k must be"):
        top_similarity(torch.randn(4, 2), k=0)


def test_text_features_are_mean_pooled_content_stream():
    from hf_genssl import GenSSLModel, train_tokenizer

    texts = ["the cat sat on the mat", "a dog ran", "the cat ran on the mat and sat"]
    tokenizer = train_tokenizer(texts * 5, vocab_size=300)
    model = GenSSLModel(tiny_config(vocab_size=len(tokenizer), content_attention="bidirectional")).eval()
    features = text_features(model, texts, tokenizer, batch_size=2)
    assert features.shape == (3, model.config.hidden_size)
    one = tokenizer(texts[1], return_tensors="pt")  # unpadded, alone: padding in the batch must change nothing
    expected = model(one["input_ids"]).last_hidden_state.mean(1)[0]
    torch.testing.assert_close(features[1], expected, atol=1e-5, rtol=1e-5)


def test_connectivity_metric_module_offline():
    from hf_genssl.metrics import load_metric

    metric = load_metric("connectivity")
    result = metric.compute(predictions=[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], k=1)
    assert result["top_1_similarity"] == pytest.approx(2 / 3)
