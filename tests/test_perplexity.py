"""Prefix perplexity: one-pass and batched scores equal naive per-position loops."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from hf_genssl import GenSSLForCausalLM, GenSSLForMaskedLM, GenSSLForPreTraining
from hf_genssl.perplexity import plot_prefix_curves, prefix_perplexity
from tests.conftest import tiny_config

TEXTS = ["the man said that he would not be there", "she had been there before", "it was one of them"]


def naive_causal_nll(model, tokenizer, text):
    """Score each position with its own call: the causal LM's next-token distribution after x_<t."""
    ids = tokenizer(text)["input_ids"]  # BOS + tokens
    causal = GenSSLForCausalLM(model.config).eval()
    causal.load_state_dict(model.state_dict())
    total = []
    for t in range(1, len(ids)):
        with torch.no_grad():
            logits = causal(torch.tensor([ids[:t]]), use_cache=False).logits[0, -1]
        total.append(-logits.log_softmax(-1)[ids[t]].item())
    return total


def naive_masked_nll(model, tokenizer, text):
    """Each position t on its own: prefix, then [MASK] at every later position, read at t."""
    ids = tokenizer(text)["input_ids"]
    total = []
    for t in range(1, len(ids)):
        row = torch.tensor([ids[:t] + [tokenizer.mask_token_id] * (len(ids) - t)])
        with torch.no_grad():
            logits = model(input_ids=row).logits[0, t]
        total.append(-logits.log_softmax(-1)[ids[t]].item())
    return total


@pytest.fixture(scope="module")
def models(tokenizer):
    torch.manual_seed(0)
    causal = GenSSLForPreTraining(tiny_config(vocab_size=len(tokenizer))).eval()
    masked = GenSSLForMaskedLM(tiny_config(vocab_size=len(tokenizer), content_attention="bidirectional")).eval()
    return causal, masked


def test_two_stream_one_pass_equals_naive_loop(models, tokenizer):
    causal, _ = models
    result = prefix_perplexity(causal, TEXTS, tokenizer, batch_size=2)
    naive = [x for text in TEXTS for x in naive_causal_nll(causal, tokenizer, text)]
    assert result.tokens_scored == len(naive) and result.method == "query-stream"
    assert result.perplexity == pytest.approx(math.exp(sum(naive) / len(naive)), rel=1e-4)


def test_batched_masked_equals_naive_loop(models, tokenizer):
    _, masked = models
    result = prefix_perplexity(masked, TEXTS, tokenizer, batch_size=5)
    naive = [x for text in TEXTS for x in naive_masked_nll(masked, tokenizer, text)]
    assert result.tokens_scored == len(naive) and result.method == "masked-prefix"
    assert result.perplexity == pytest.approx(math.exp(sum(naive) / len(naive)), rel=1e-4)


@pytest.mark.parametrize("which", [0, 1])
def test_windowing_equals_no_window_when_the_text_fits(models, tokenizer, which):
    model = models[which]
    whole = prefix_perplexity(model, TEXTS, tokenizer)
    windowed = prefix_perplexity(model, TEXTS, tokenizer, window=40, stride=7)
    assert windowed.perplexity == pytest.approx(whole.perplexity, rel=1e-5)
    assert windowed.windows == whole.windows == len(TEXTS)


def test_stride_scores_every_token_once(models, tokenizer):
    causal, _ = models
    long_text = " ".join(TEXTS * 4)
    n = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    result = prefix_perplexity(causal, [long_text], tokenizer, window=16, stride=8, bucket_size=4)
    assert result.tokens_scored == n and result.windows > 1
    # prefix lengths 0-7 occur once (the first window), later tokens see 8-15 tokens of context
    prefixes = collections.Counter((i - first_window_begin(i, 16, 8)) // 4 for i in range(n))
    assert [(b["prefix_from"], b["tokens"]) for b in result.by_prefix_length] == [
        (4 * k, count) for k, count in sorted(prefixes.items())]
    assert [b["tokens"] for b in result.by_prefix_length[:2]] == [4, 4]


def test_bad_inputs(models, tokenizer):
    causal, _ = models
    with pytest.raises(ValueError, match="stride"):
        prefix_perplexity(causal, TEXTS, tokenizer, window=8, stride=9)
    with pytest.raises(ValueError, match="window"):
        prefix_perplexity(causal, TEXTS, tokenizer, window=64)
    with pytest.raises(ValueError, match="empty"):
        prefix_perplexity(causal, ["", ""], tokenizer)


def test_plot(models, tokenizer, tmp_path):
    causal, masked = models
    curves = {"ar": prefix_perplexity(causal, TEXTS, tokenizer, bucket_size=2),
              "masked": prefix_perplexity(masked, TEXTS, tokenizer, bucket_size=2)}
    path = plot_prefix_curves(curves, tmp_path / "curve.png")
    assert path.stat().st_size > 1000


def test_evaluate_module_loads_by_path_and_matches(models, tokenizer, tmp_path):
    from hf_genssl.metrics import load_metric

    causal, _ = models
    causal.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    metric = load_metric("prefix_perplexity")
    result = metric.compute(predictions=TEXTS, model_id=str(tmp_path), batch_size=2)
    direct = prefix_perplexity(causal, TEXTS, tokenizer)
    assert result["perplexity"] == pytest.approx(direct.perplexity, rel=1e-5)
    assert result["tokens_scored"] == direct.tokens_scored


def first_window_begin(i: int, window: int, stride: int) -> int:
    """Windows start at 0, stride, 2 * stride, ...; token i is scored in the first one that holds it."""
    return 0 if i < window else ((i - window) // stride + 1) * stride


def naive_windowed_nll(model, tokenizer, text, window, stride, masked, trailing_masks=None):
    """(prefix length, NLL) of every text token, each scored with its own call on [BOS] + its window's tokens before
    it (a causal model's last row), or on [BOS] + those tokens + [MASK] up to the window's end (read at the token),
    or + exactly ``trailing_masks`` [MASK]s."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not masked:  # a masked LM head has no query-stream vector to hand over (and needs none here)
        causal = GenSSLForCausalLM(model.config).eval()
        causal.load_state_dict(model.state_dict())
    scored = []
    for i in range(len(ids)):
        begin = first_window_begin(i, window, stride)
        context = [tokenizer.bos_token_id, *ids[begin:i]]
        with torch.no_grad():
            if masked:
                end = min(begin + window, len(ids))
                masks = end - i if trailing_masks is None else trailing_masks
                row = torch.tensor([context + [tokenizer.mask_token_id] * masks])
                logits = model(input_ids=row).logits[0, len(context)]
            else:
                logits = causal(torch.tensor([context]), use_cache=False).logits[0, -1]
        scored.append((i - begin, -logits.log_softmax(-1)[ids[i]].item()))
    return scored


@pytest.fixture(scope="module")
def sharp_models(tokenizer):
    """Models whose predictions depend strongly on the context (a wide initialisation), so scoring a token with the
    wrong context or at the wrong position changes its NLL by far more than the tolerance."""
    torch.manual_seed(1)
    causal = GenSSLForPreTraining(tiny_config(vocab_size=len(tokenizer), initializer_range=0.5)).eval()
    masked = GenSSLForMaskedLM(tiny_config(vocab_size=len(tokenizer), initializer_range=0.5,
                                           content_attention="bidirectional")).eval()
    return causal, masked


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_windowed_perplexity_equals_a_naive_loop_over_positions(sharp_models, tokenizer, which):
    """stride < window on a text several windows long: every token is scored once, in the first window holding it,
    from that window's tokens before it; the score of each prefix length equals a per-position loop."""
    model = sharp_models[which == "masked"]
    window, stride = 8, 3
    text = " ".join(TEXTS * 2)
    scored = naive_windowed_nll(model, tokenizer, text, window, stride, masked=which == "masked")
    assert len(scored) > 3 * window
    result = prefix_perplexity(model, [text], tokenizer, window=window, stride=stride, batch_size=16, bucket_size=1)
    nll = torch.tensor([x for _, x in scored], dtype=torch.float64)
    assert nll.std() > 0.5  # the check below could not tell positions apart on a near-constant model
    assert result.tokens_scored == len(scored)
    assert result.mean_nll == pytest.approx(nll.mean().item(), rel=1e-5)
    by_prefix: dict[int, list[float]] = {}
    for prefix, x in scored:
        by_prefix.setdefault(prefix, []).append(x)
    assert [(b["prefix_from"], b["tokens"]) for b in result.by_prefix_length] == [
        (p, len(xs)) for p, xs in sorted(by_prefix.items())]
    for bucket in result.by_prefix_length:
        expected = math.exp(sum(by_prefix[bucket["prefix_from"]]) / len(by_prefix[bucket["prefix_from"]]))
        assert bucket["perplexity"] == pytest.approx(expected, rel=1e-4), bucket


@pytest.mark.parametrize("trailing_masks", [1, 3])
def test_fixed_trailing_masks_equal_a_naive_loop_and_differ_from_masks_to_the_window_end(sharp_models, tokenizer,
                                                                                          trailing_masks):
    """``trailing_masks=H``: every token is read from [BOS] + its window's tokens before it + exactly H [MASK]s, as a
    per-position loop computes it; on a context-sensitive model that is a different number from the default
    (masks up to the window's end, whose count tells the model where the window ends)."""
    masked = sharp_models[1]
    window, stride = 8, 3
    text = " ".join(TEXTS * 2)
    fixed = naive_windowed_nll(masked, tokenizer, text, window, stride, masked=True, trailing_masks=trailing_masks)
    to_the_end = naive_windowed_nll(masked, tokenizer, text, window, stride, masked=True)
    nll = torch.tensor([x for _, x in fixed], dtype=torch.float64)
    other = torch.tensor([x for _, x in to_the_end], dtype=torch.float64)
    assert (nll - other).abs().mean() > 0.1  # the check below can tell the two variants apart
    result = prefix_perplexity(masked, [text], tokenizer, window=window, stride=stride, batch_size=5,
                               bucket_size=1, trailing_masks=trailing_masks)
    assert result.tokens_scored == len(fixed) and result.trailing_masks == trailing_masks
    assert result.mean_nll == pytest.approx(nll.mean().item(), rel=1e-5)
    by_prefix: dict[int, list[float]] = {}
    for prefix, x in fixed:
        by_prefix.setdefault(prefix, []).append(x)
    for bucket in result.by_prefix_length:
        expected = math.exp(sum(by_prefix[bucket["prefix_from"]]) / len(by_prefix[bucket["prefix_from"]]))
        assert bucket["perplexity"] == pytest.approx(expected, rel=1e-4), bucket
    default = prefix_perplexity(masked, [text], tokenizer, window=window, stride=stride, batch_size=5)
    assert default.trailing_masks is None and default.mean_nll == pytest.approx(other.mean().item(), rel=1e-5)


def test_trailing_masks_bad_inputs_and_default_window(models, tokenizer):
    causal, masked = models
    with pytest.raises(ValueError, match="trailing_masks applies to masked"):
        prefix_perplexity(causal, TEXTS, tokenizer, trailing_masks=1)
    with pytest.raises(ValueError, match="trailing_masks applies to masked"):
        prefix_perplexity(masked, TEXTS, tokenizer, trailing_masks=0)
    positions = masked.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"window must be in \\[1, {positions - 4}\\].*4 for the trailing masks"):
        prefix_perplexity(masked, TEXTS, tokenizer, window=positions - 3, trailing_masks=4)
    assert prefix_perplexity(masked, TEXTS, tokenizer, trailing_masks=4).window == positions - 4
    assert prefix_perplexity(masked, TEXTS, tokenizer, trailing_masks=1).window == positions - 1
