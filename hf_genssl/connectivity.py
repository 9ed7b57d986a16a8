"""Feature connectivity: the surrogate of the paper's Figure 2.

The paper argues through an augmentation graph: an objective whose (context, target) pairs connect more samples
gives features that cluster the data better. Its measurable surrogate is the mean of the *top* pairwise cosine
similarities between the features of held-out samples (about 8000 of them): for every sample, the average
cosine similarity to its ``k`` most similar other samples, averaged over samples.

:func:`top_similarity` computes it in row chunks, so 8000 x 8000 similarities never sit in memory at once;
:func:`text_features` gives the features of a GenSSL language checkpoint (mean-pooled content stream), and
:func:`hf_genssl.vision_eval.extract_features` those of a ViT. The ``connectivity`` ``evaluate`` module in
``hf_genssl/metrics/`` wraps :func:`top_similarity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["text_features", "top_similarity"]


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
