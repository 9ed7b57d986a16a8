"""Prefix perplexity: the paper's Eq. 2, the same quantity for every kind of checkpoint.

``PPL = exp(mean_t -log p(x_t | x_<t))`` over held-out text.

* (semi-)autoregressive checkpoints (``content_attention="causal"``): one two-stream forward pass per window
  with one token per group (``group_ids = arange``), so the query row of token t sees exactly ``x_<t``. Exact.
* masked checkpoints (``"bidirectional"``): token t is read from the prefix ``x_<t`` followed by ``[MASK]``s.
  That is one input per scored token; the inputs of a window are stacked and run ``batch_size`` at a time, so
  a window of T tokens costs about ``T / batch_size`` passes. Two variants, which tell the model different things:

  - ``trailing_masks=None`` (the default, the paper's Eq. 2 as usually computed): ``[MASK]`` at every later
    position of the window, so the input always spans the whole window. The model sees nothing of the text after
    t, but the number of masks tells it how many tokens remain before the window ends, and at a text's last
    window, where the text ends. It is exact for the question "how well does the model predict x_t from
    ``x_<t`` when told the length of what follows", not for left-to-right generation, which never knows it.
  - ``trailing_masks=H``: exactly ``H`` masks after the prefix whatever t is (``H = 1``: one ``[MASK]``, at the
    position to predict). The input's length then says nothing about the text: every token is scored with the
    same ``H`` masks after it. This is the score of a generator that writes one token (or ``H``) at a time. The
    window is at most the model's positions minus ``H`` (``H = 1``: the same windows, tokens and contexts as the
    default, only the masks after t differ).

Long texts are scored in windows of ``window`` tokens moving by ``stride`` (every token is scored once, with
up to ``window - 1`` tokens of context); each window starts with the always-visible BOS token. The result
also breaks the score down by prefix length (how many text tokens the prediction saw), the curve behind
the paper's Figure 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .collators import right_pad

__all__ = ["PerplexityResult", "load_model_and_tokenizer", "prefix_perplexity", "plot_prefix_curves", "windows_for"]


@dataclass
class PerplexityResult:
    """Prefix perplexity of a model on some texts, with its breakdown by prefix length."""

    perplexity: float
    mean_nll: float
    tokens_scored: int
    windows: int
    window: int
    stride: int
    method: str
    by_prefix_length: list[dict] = field(default_factory=list)
    trailing_masks: int | None = None  # masked checkpoints: None = masks to the window end, H = exactly H masks

    def to_dict(self) -> dict:
        return asdict(self)


def windows_for(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, score_from)`` text-token spans: the window covers ``[begin, end)`` and scores ``[score_from,
    end)``."""
    spans, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(begin, previous_end)))
        previous_end = end
        if end == n_tokens:
            break
    return spans


def load_model_and_tokenizer(model, tokenizer=None, trust_remote_code: bool = False):
    """``(model, tokenizer)`` from a checkpoint path / Hub id (its pretraining head through the registered GenSSL
    classes, the tokenizer saved with it; the checkpoint's own code runs only with ``trust_remote_code=True``) or
    from a model object and its tokenizer; the model is put in eval mode."""
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForPreTraining, AutoTokenizer

        from .hub import from_pretrained

        path, model = model, from_pretrained(AutoModelForPreTraining, model, trust_remote_code=trust_remote_code)
        tokenizer = tokenizer or from_pretrained(AutoTokenizer, path, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise ValueError("Pass the tokenizer with the model (or a checkpoint path that holds one).")
    return model.eval(), tokenizer


def _load(model, tokenizer, trust_remote_code: bool = False):
    model, tokenizer = load_model_and_tokenizer(model, tokenizer, trust_remote_code)
    if not hasattr(model, "model") or not hasattr(model, "lm_head"):
        raise TypeError("prefix_perplexity needs a GenSSL model with a language-model head.")
    return model, tokenizer


@torch.no_grad()
def _score_query_stream(backbone, head, rows, targets, batch_size, pad_id, progress):
    """NLL of every target position, one two-stream pass per batch of windows (one token per group)."""
    nlls = []
    for start in tqdm(range(0, len(rows), batch_size), desc="prefix perplexity", disable=not progress):
        ids, mask = right_pad(rows[start : start + batch_size], pad_id)
        group_ids = torch.arange(ids.shape[1]).expand_as(ids)
        hidden = backbone(ids.to(backbone.device), attention_mask=mask.to(backbone.device),
                          group_ids=group_ids.to(backbone.device), use_cache=False,
                          return_content_stream=False).query_hidden_state
        for r, positions in enumerate(targets[start : start + batch_size]):
            logits = head(hidden[r, positions]).float()
            nlls.append(
                torch.nn.functional.cross_entropy(logits, ids[r, positions].to(logits.device), reduction="none")
            )
    return nlls


@torch.no_grad()
def _score_masked_prefixes(backbone, head, rows, targets, batch_size, pad_id, mask_id, progress,
                           trailing_masks: int | None = None):
    """NLL of every target position t from ``x_<t`` + ``[MASK]`` up to the window end (``trailing_masks=None``)
    or + exactly ``trailing_masks`` masks, batched across positions."""
    inputs, read_at, answers = [], [], []
    for row, positions in zip(rows, targets, strict=True):
        if trailing_masks is None:
            after = torch.arange(len(row))[None] >= positions[:, None]  # (n_targets, L): masked from t on
            inputs.extend(torch.where(after, mask_id, row[None]).unbind(0))
        else:
            masks = torch.full((trailing_masks,), mask_id, dtype=row.dtype)
            inputs.extend(torch.cat([row[:t], masks]) for t in positions.tolist())
        read_at.append(positions)
        answers.append(row[positions])
    read_at, answers = torch.cat(read_at), torch.cat(answers)
    nlls = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="prefix perplexity (masked)", disable=not progress):
        ids, mask = right_pad(inputs[start : start + batch_size], pad_id)
        hidden = backbone(ids.to(backbone.device), attention_mask=mask.to(backbone.device),
                          use_cache=False).last_hidden_state
        rows_here = torch.arange(ids.shape[0])
        logits = head(hidden[rows_here, read_at[start : start + batch_size]]).float()
        nlls.append(torch.nn.functional.cross_entropy(
            logits, answers[start : start + batch_size].to(logits.device), reduction="none"))
    # regroup per window, in order
    flat = torch.cat(nlls)
    return list(flat.split([len(p) for p in targets]))


def prefix_perplexity(
    model,
    texts: Sequence[str],
    tokenizer=None,
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    bucket_size: int = 8,
    progress: bool = False,
    trust_remote_code: bool = False,
    trailing_masks: int | None = None,
) -> PerplexityResult:
    """Exact prefix perplexity of ``texts`` under a GenSSL checkpoint (model object or path).

    Args:
        model: a GenSSL model with an LM head (``GenSSLForPreTraining``, ``...ForCausalLM``, ``...ForMaskedLM``)
            or a checkpoint path/Hub id (loaded through the registered GenSSL classes).
        texts: held-out texts; each is tokenized on its own and scored from its first token.
        tokenizer: the checkpoint's tokenizer (loaded from the path when ``model`` is one).
        window: text tokens per window (default: the model's positions minus one for the BOS, minus
            ``trailing_masks - 1`` more when it is set).
        stride: how far a window moves (default: ``window``, no overlap); must be ``<= window``.
        batch_size: rows per forward pass (windows for causal checkpoints, prefixes for masked ones).
        bucket_size: width of the prefix-length buckets of ``by_prefix_length``.
        trust_remote_code: run the checkpoint's own code when it has some (only for checkpoints you trust).
        trailing_masks: masked checkpoints only: ``None`` scores token t with ``[MASK]`` at every later position of
            its window (the input's length tells the model where the window ends), ``H`` with exactly ``H`` masks
            after the prefix (nothing about the text's length; see the module docstring).
    """
    model, tokenizer = _load(model, tokenizer, trust_remote_code)
    backbone, head = model.model, model.lm_head
    config = backbone.config
    masked = config.content_attention == "bidirectional"
    if trailing_masks is not None and (not masked or trailing_masks < 1):
        raise ValueError("trailing_masks applies to masked (bidirectional) checkpoints and must be >= 1; a causal "
                         f"checkpoint's query stream sees no masks (got {trailing_masks} for a "
                         f"{config.content_attention!r} checkpoint).")
    max_window = config.max_position_embeddings - (trailing_masks or 1)  # the BOS, or the prefix's masks
    window = max_window if window is None else window
    stride = window if stride is None else stride
    if window < 1 or window > max_window:
        room = f"{trailing_masks} for the trailing masks" if trailing_masks else "one of them for the BOS token"
        raise ValueError(f"window must be in [1, {max_window}] (the model has {config.max_position_embeddings} "
                         f"positions, {room}), got {window}.")
    if stride < 1 or stride > window:
        raise ValueError(f"stride must be in [1, window={window}] (a larger stride would skip tokens), got {stride}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    if bos is None or pad is None or (masked and tokenizer.mask_token_id is None):
        raise ValueError("The tokenizer needs BOS and pad tokens (and a mask token for masked checkpoints).")

    rows, targets = [], []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long texts are windowed below
        for begin, end, score_from in windows_for(len(ids), window, stride):
            rows.append(torch.tensor([bos, *ids[begin:end]], dtype=torch.long))
            targets.append(torch.arange(score_from - begin + 1, end - begin + 1))
    if not rows:
        raise ValueError("No tokens to score: the texts are empty.")

    if masked:
        nlls = _score_masked_prefixes(backbone, head, rows, targets, batch_size, pad, tokenizer.mask_token_id, progress,
                                      trailing_masks)
    else:
        nlls = _score_query_stream(backbone, head, rows, targets, batch_size, pad, progress)
    nll = torch.cat(nlls).cpu().double()
    prefix = torch.cat(targets) - 1  # text tokens visible to the prediction

    buckets = []
    for low in range(0, int(prefix.max()) + 1, bucket_size):
        chosen = (prefix >= low) & (prefix < low + bucket_size)
        if chosen.any():
            buckets.append({"prefix_from": low, "prefix_to": low + bucket_size - 1, "tokens": int(chosen.sum()),
                            "perplexity": math.exp(nll[chosen].mean().item())})
    mean = nll.mean().item()
    return PerplexityResult(
        perplexity=math.exp(mean), mean_nll=mean, tokens_scored=len(nll), windows=len(rows), window=window,
        stride=stride, method="masked-prefix" if masked else "query-stream", by_prefix_length=buckets,
        trailing_masks=trailing_masks,
    )


def plot_prefix_curves(curves: dict[str, PerplexityResult | dict], path: str | Path, title: str | None = None) -> Path:
    """Perplexity against prefix length, one line per model (the paper's Figure 3), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, result in curves.items():
        buckets = result.by_prefix_length if isinstance(result, PerplexityResult) else result["by_prefix_length"]
        xs = [(b["prefix_from"] + b["prefix_to"]) / 2 for b in buckets]
        ax.plot(xs, [b["perplexity"] for b in buckets], marker="o", markersize=3, label=name)
    ax.set_xlabel("prefix length (tokens visible to the prediction)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(title or "Prefix perplexity by prefix length")
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
