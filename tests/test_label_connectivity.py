"""Label-aware connectivity (kNN accuracy, same-class neighbours) and the features it reads."""

from __future__ import annotations

import pytest
import torch

from hf_genssl.connectivity import classification_features, label_connectivity


def brute_force(features: torch.Tensor, labels: list[int], k: int) -> tuple[float, float]:
    """The definition, one sample at a time in plain Python (cosine, leave-one-out, ties to the lowest label)."""
    unit = [f / f.norm() for f in features]
    correct, same = 0, 0.0
    for i, u in enumerate(unit):
        others = sorted((j for j in range(len(unit)) if j != i), key=lambda j: -float(u @ unit[j]))[:k]
        neighbour_labels = [labels[j] for j in others]
        same += sum(label == labels[i] for label in neighbour_labels) / k
        votes = {label: neighbour_labels.count(label) for label in set(neighbour_labels)}
        vote = min(label for label, count in votes.items() if count == max(votes.values()))
        correct += vote == labels[i]
    return correct / len(unit), same / len(unit)


def test_separated_classes_are_fully_connected_and_shuffled_labels_sit_at_chance():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 5
    labels = torch.arange(3).repeat_interleave(40)
    features = centres[labels] + 0.1 * torch.randn(120, 16, generator=generator)
    clear = label_connectivity(features, labels, k=10)
    assert clear["knn_accuracy"] == 1.0 and clear["same_class_fraction"] == 1.0
    assert clear["chance_same_class"] == pytest.approx(3 * 40 * 39 / (120 * 119))
    shuffled = label_connectivity(features, labels[torch.randperm(120, generator=generator)], k=10)
    assert abs(shuffled["same_class_fraction"] - shuffled["chance_same_class"]) < 0.1


def test_hand_computed_example_with_an_outlier_and_tied_votes():
    # two clusters and one sample labelled 1 sitting inside cluster 0; k = 2 (see the comments for each sample)
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    labels = [0, 0, 1, 1, 1]
    # neighbours: 0 -> (4, 1): labels 1, 0, tie -> 0 (right); 1 -> (4, 0): tie -> 0 (right);
    # 2 -> (3, 1): tie -> 0 (wrong); 3 -> (2, 1): tie -> 0 (wrong); 4 -> (0, 1): 0 (wrong)
    result = label_connectivity(features, labels, k=2)
    assert result["knn_accuracy"] == pytest.approx(2 / 5)
    assert result["same_class_fraction"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.5 + 0.0) / 5)


def test_matches_the_definition_on_random_data_across_chunks():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(37, 5, generator=generator)
    labels = torch.randint(0, 4, (37,), generator=generator).tolist()
    result = label_connectivity(features, labels, k=5, chunk_size=8)
    assert (result["knn_accuracy"], result["same_class_fraction"]) == pytest.approx(brute_force(features, labels, 5))


def test_classification_features_are_what_the_classification_head_sees(tokenizer):
    """Causal checkpoint: the query row after the last token; its head applied to these features gives the model's
    logits, and a text's features do not depend on the padding of its batch."""
    from hf_genssl import GenSSLConfig, GenSSLForSequenceClassification

    torch.manual_seed(0)
    config = GenSSLConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = GenSSLForSequenceClassification(config).eval()
    texts = ["a short one", "a somewhat longer text with more words in it", "middle sized text here"]
    features = classification_features(model, texts, tokenizer, batch_size=2)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(model.score(features), logits)
    alone = classification_features(model, texts[:1], tokenizer)
    torch.testing.assert_close(alone[0], features[0], atol=1e-5, rtol=1e-5)
    assert model._pooling() == "query"
