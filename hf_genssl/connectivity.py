"""Feature connectivity: the surrogate of the paper's Figure 2.

The paper argues through an augmentation graph: an objective whose (context, target) pairs connect more samples
gives features that cluster the data better. Its measurable surrogate is the mean of the *top* pairwise cosine
similarities between the features of held-out samples (about 8000 of them): for every sample, the average
cosine similarity to its ``k`` most similar other samples, averaged over samples.

That surrogate is label-blind (it cannot tell intra-class from inter-class similarity, which is what the paper
means) and, read from the mean-pooled last content layer, it compares unlike things: AR / semi-AR pretraining never
supervises that layer. :func:`label_connectivity` is the label-aware measure: leave-one-out k-nearest-neighbour
accuracy and the fraction of same-class neighbours, on a labelled set, from the representation each model is
classified with (:func:`classification_features` for language checkpoints: the query row for causal ones, as
fine-tuning reads them).

:func:`top_similarity` computes it in row chunks, so 8000 x 8000 similarities never sit in memory at once;
:func:`text_features` gives the features of a GenSSL language checkpoint (mean-pooled content stream), and
:func:`hf_genssl.vision_eval.extract_features` those of a ViT. The ``connectivity`` ``evaluate`` module in
``hf_genssl/metrics/`` wraps :func:`top_similarity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["classification_features", "label_connectivity", "text_features", "top_similarity"]


@torch.no_grad()
def top_similarity(features: torch.Tensor | Sequence[Sequence[float]], k: int = 10,
                   chunk_size: int = 1024) -> dict[str, float]:
    """Mean over samples of the mean cosine similarity to their ``k`` nearest other samples.

    Args:
        features: ``(n, dim)``, one row per held-out sample (n >= 2).
        k: neighbours per sample (clipped to ``n - 1``).
        chunk_size: rows of the similarity matrix computed at a time.

    Returns:
        ``{"top_k_similarity": ..., "top_1_similarity": ..., "mean_similarity": ..., "k": k, "num_samples": n}``;
        ``mean_similarity`` is the mean over all pairs, for reference (a high top-k with a low mean means tight
        neighbourhoods rather than collapsed features).
    """
    features = torch.as_tensor(features, dtype=torch.float32)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be (num_samples >= 2, dim); got shape {tuple(features.shape)}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    n = len(features)
    k = min(k, n - 1)
    unit = torch.nn.functional.normalize(features, dim=1)
    top_k, top_1, total = 0.0, 0.0, 0.0
    for start in range(0, n, chunk_size):
        similarity = unit[start : start + chunk_size] @ unit.T
        rows = torch.arange(len(similarity))
        total += float(similarity.sum() - similarity[rows, start + rows].sum())
        similarity[rows, start + rows] = -float("inf")  # a sample is not its own neighbour
        nearest = similarity.topk(k, dim=1).values
        top_k += float(nearest.mean(1).sum())
        top_1 += float(nearest[:, 0].sum())
    return {"top_k_similarity": top_k / n, "top_1_similarity": top_1 / n,
            "mean_similarity": total / (n * (n - 1)), "k": k, "num_samples": n}


@torch.no_grad()
def text_features(model, texts: Sequence[str], tokenizer=None, max_length: int = 128,
                  batch_size: int = 32) -> torch.Tensor:
    """``(len(texts), hidden)``: the content stream of a GenSSL checkpoint, mean-pooled over each text's tokens.

    Mean pooling over the content stream is the same readout for every objective (the masked models' stream is
    bidirectional, the (semi-)AR models' causal), so features of different checkpoints are comparable.
    ``model`` may be a path or a loaded model; ``tokenizer`` defaults to the one saved with the checkpoint.
    """
    from .perplexity import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model, tokenizer)
    if not texts:
        raise ValueError("texts is empty.")
    backbone = model.base_model
    max_length = min(max_length, backbone.config.max_position_embeddings)
    device = next(backbone.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(device)
        hidden = backbone(batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        weights = batch["attention_mask"][..., None].to(hidden.dtype)
        chunks.append(((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def label_connectivity(features: torch.Tensor | Sequence[Sequence[float]], labels: torch.Tensor | Sequence[int],
                       k: int = 10, chunk_size: int = 1024) -> dict[str, float]:
    """Label-aware connectivity: how often a sample's ``k`` nearest neighbours (cosine) share its label.

    Leave-one-out over the labelled set (a sample is not its own neighbour). ``knn_accuracy``: the fraction of
    samples whose neighbours' majority vote is their label (a tied vote goes to the lowest label among the tied
    ones); ``same_class_fraction``: the mean fraction of the ``k`` neighbours that share the sample's label.

    Returns ``{"knn_accuracy", "same_class_fraction", "chance_same_class", "k", "num_samples"}``; the chance
    level is the probability that a random other sample shares the label (what label-blind features score).
    """
    features = torch.as_tensor(features, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if features.ndim != 2 or len(features) < 2 or len(labels) != len(features):
        raise ValueError(f"features must be (n >= 2, dim) with one label each; got {tuple(features.shape)} and "
                         f"{len(labels)} labels.")
    n = len(features)
    k = min(k, n - 1)
    num_classes = int(labels.max()) + 1
    unit = torch.nn.functional.normalize(features.flatten(1), dim=1)
    correct, same = 0, 0.0
    for start in range(0, n, chunk_size):
        similarity = unit[start : start + chunk_size] @ unit.T
        rows = torch.arange(len(similarity))
        similarity[rows, start + rows] = -float("inf")
        neighbours = labels[similarity.topk(k, dim=1).indices]  # (rows, k)
        own = labels[start : start + len(similarity), None]
        same += float((neighbours == own).float().mean(1).sum())
        votes = torch.zeros(len(similarity), num_classes).scatter_add_(1, neighbours, torch.ones(neighbours.shape))
        correct += int((votes.argmax(1) == own[:, 0]).sum())
    counts = torch.bincount(labels, minlength=num_classes).double()
    chance = float((counts * (counts - 1)).sum() / (n * (n - 1)))
    return {"knn_accuracy": correct / n, "same_class_fraction": same / n, "chance_same_class": chance, "k": k,
            "num_samples": n}


@torch.no_grad()
def classification_features(model, texts: Sequence[str], tokenizer=None, max_length: int = 128,
                            batch_size: int = 32) -> torch.Tensor:
    """``(len(texts), hidden)``: what ``GenSSLForSequenceClassification`` feeds its classification head.

    The query row after the last token for causal checkpoints (``classifier_pooling="auto"``), the mean content
    stream for bidirectional ones: the representation each model is fine-tuned from, taken before fine-tuning.
    ``model`` is a checkpoint path or a loaded ``GenSSLForSequenceClassification``.
    """
    from transformers import AutoTokenizer

    from .models.modeling_genssl import GenSSLForSequenceClassification

    if not isinstance(model, GenSSLForSequenceClassification):
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = GenSSLForSequenceClassification.from_pretrained(model)
    if tokenizer is None:
        raise ValueError("pass the tokenizer with a loaded model.")
    if not texts:
        raise ValueError("texts is empty.")
    model.eval()
    max_length = min(max_length, model.config.max_position_embeddings)
    device = next(model.parameters()).device
    captured = []
    handle = model.score.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].float().cpu()))
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt").to(device)
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return torch.cat(captured)
