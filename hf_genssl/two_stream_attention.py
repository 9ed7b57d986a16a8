"""Two-stream attention with one visibility rule, shared by the language model and the ViT.

Every objective of the paper is a choice of a per-token **group id** ``gid`` (an order):

* content stream ``h``: token i may attend to token j iff ``gid[j] <= gid[i]``;
* query stream ``g``:   position i may attend to content j iff ``gid[j] <  gid[i]``.

``gid = arange(T)`` is autoregressive, ``arange(T) // g`` semi-autoregressive, ``zeros`` bidirectional,
"unmasked 0 / masked 1" is MPNet-style masked modelling. Both comparisons are the same test
``gid[j] < limit[i]`` with ``limit = gid + 1`` for content rows and ``limit = gid`` for query rows, so
the whole module holds one rule and never asks which objective it is serving.

Keys and values come from the content stream only, so both streams run as ONE attention call per
layer: the rows ``[h; g]`` are stacked along the sequence axis (``2T`` queries) against the ``T``
content keys, with a ``(2T x T)`` boolean mask. Projections and MLPs run once on the stacked rows.

Written by hand because no maintained library has it: transformers' XLNet runs the streams as two
separate einsum attentions over a relative-position scheme, and ``masking_utils`` builds square
(self-attention) masks only. The attention kernel itself is transformers' attention interface
(``sdpa`` by default, dispatching to ``torch.nn.functional.scaled_dot_product_attention``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = [
    "visibility_mask",
    "rotary_cos_sin",
    "apply_rotary",
    "eager_attention_forward",
    "TwoStreamAttention",
    "TwoStreamMLP",
    "TwoStreamBlock",
    "gather_rows",
    "run_block_stack",
]


def visibility_mask(
    row_limits: torch.Tensor,
    key_group_ids: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one visibility rule: row i may see key j iff ``key_group_ids[j] < row_limits[i]`` and j is real.

    Args:
        row_limits: ``(batch, rows)``; ``gid + 1`` for content-stream rows, ``gid`` for query-stream rows.
        key_group_ids: ``(batch, keys)`` group id of each key (content token).
        key_padding_mask: ``(batch, keys)``, 1/True for real tokens, 0/False for padding.

    Returns:
        Boolean mask ``(batch, 1, rows, keys)``; True = may attend (the SDPA convention).

    A row with nothing to see (the query row of the always-visible BOS/CLS token, which is never a
    target) would make softmax return NaN; such rows are pointed at the first real key instead. Their
    outputs are never read as predictions, and no other row is affected.
    """
    visible = key_group_ids[:, None, :] < row_limits[:, :, None]
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.bool()
        visible = visible & key_padding_mask[:, None, :]
        first_key = key_padding_mask & (key_padding_mask.cumsum(-1) == 1)
    else:
        first_key = torch.zeros_like(key_group_ids, dtype=torch.bool)
        first_key[:, 0] = True
    empty_rows = ~visible.any(-1, keepdim=True)
    visible = visible | (empty_rows & first_key[:, None, :])
    return visible[:, None]


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype=torch.float32):
    """RoPE angles for integer ``positions`` ``(batch, n)``: ``cos`` and a *signed* ``sin``, each ``(batch, n, head_dim)``.

    The rotate-half convention of Llama/GPT-NeoX is ``x * cos + rotate_half(x) * sin`` with
    ``rotate_half(x) = (-x2, x1)``. The sign is folded into the returned ``sin`` (``(-sin, +sin)`` over the two
    halves), so applying it needs only a swap of the halves (:func:`apply_rotary`): fewer ops per decoding step.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions[..., None].float() * inv_freq
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos().to(dtype), torch.cat([-sin, sin], dim=-1).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``(batch, heads, n, head_dim)`` with tables from :func:`rotary_cos_sin` ``(batch, 1, n, head_dim)``."""
    swapped_halves = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # (x2, x1); the signs live in signed_sin
    return x * cos + swapped_halves * signed_sin


_SKINNY_ROWS = 16


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; for a plain ``nn.Linear`` on CPU with at most 16 rows, computed as ``W @ x.T``.

    Why: a decoding step pushes only 2-8 rows through each projection. CPU BLAS runs that skinny ``x @ W.T``
    by packing ``W`` first, which doubles the memory traffic of the weights; ``W @ x.T`` streams them once
    (``benchmarks/bench_generate.py`` shows the effect on decoding). Anything else (many rows, GPU, a LoRA or
    quantized wrapper) goes through the module unchanged.
    """
    if x.device.type != "cpu" or type(layer) is not nn.Linear or x.numel() > _SKINNY_ROWS * x.shape[-1]:
        return layer(x)
    weight, bias = layer.weight, layer.bias
    flat = x.reshape(-1, x.shape[-1]).T
    out = torch.mm(weight, flat) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat)
    return out.T.contiguous().view(*x.shape[:-1], -1)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain matmul-softmax-matmul attention; same contract as transformers' ``sdpa_attention_forward``.

    Accepts the boolean (True = attend) masks built by :func:`visibility_mask` as well as additive float masks.
    Returns ``(batch, rows, heads, head_dim)`` and the attention probabilities.
    """
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


class TwoStreamAttention(nn.Module):
    """Multi-head attention whose queries may come from both streams but whose keys/values come from content only.

    ``hidden_states`` holds the rows ``[content (n_content rows); query stream]``. Keys and values are
    projected from the first ``n_content`` rows only; with ``content_queries=False`` (the last layer of a
    pretraining forward, where no one reads the content stream) the content rows are not used as queries.
    """

    is_causal = False  # the mask always carries the pattern; never let SDPA add its own causal mask

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        n_content: int,
        attention_mask: torch.Tensor,
        content_queries: bool = True,
        past_key_values=None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        content = hidden_states[:, :n_content]
        queries = hidden_states if content_queries else hidden_states[:, n_content:]
        query = self._heads(linear(self.q_proj, queries))
        key = self._heads(linear(self.k_proj, content))
        value = self._heads(linear(self.v_proj, content))
        if rotary is not None:  # rows [content; query] carry their own positions; keys are the content rows
            cos, sin = rotary
            first_row = 0 if content_queries else n_content
            query = apply_rotary(query, cos[:, :, first_row:], sin[:, :, first_row:])
            key = apply_rotary(key, cos[:, :, :n_content], sin[:, :, :n_content])
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(output.shape[0], output.shape[1], -1)
        return linear(self.o_proj, output), weights


class TwoStreamMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(linear(self.fc_out, self.act(linear(self.fc_in, x))))


class TwoStreamBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm Transformer block over stacked ``[content; query]`` rows, weights shared by both streams."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = TwoStreamAttention(config, layer_idx)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TwoStreamMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        n_content: int,
        attention_mask: torch.Tensor,
        content_queries: bool = True,
        past_key_values=None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the updated rows (all rows, or only the query-stream rows when ``content_queries=False``).

        ``rotary``: RoPE ``(cos, signed_sin)`` ``(batch, 1, rows, head_dim)`` for every row ``[content; query]`` (the first
        ``n_content`` are also the keys'), from :func:`rotary_cos_sin`.
        """
        attn_out, weights = self.attn(
            self.ln_1(hidden_states),
            n_content,
            attention_mask,
            content_queries=content_queries,
            past_key_values=past_key_values,
            rotary=rotary,
            **kwargs,
        )
        residual = hidden_states if content_queries else hidden_states[:, n_content:]
        hidden_states = residual + self.dropout(attn_out)
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, weights


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k]]`` for ``(batch, n, d)`` rows and a ``(batch, k)`` index."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def run_block_stack(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    n_content: int,
    mask: torch.Tensor | None,
    last_layer_queries_only: bool = False,
    last_layer_extra_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    **layer_kwargs: Any,
) -> tuple[torch.Tensor, int, tuple | None, tuple | None]:
    """Run the blocks over stacked ``[content (n_content rows); query]`` rows; shared by the text and image models.

    Args:
        mask: the one visibility mask ``(batch, 1, rows, keys)`` of every block, or ``None`` (everything visible).
        last_layer_queries_only: the last block computes the query rows only (no one reads the final content
            stream during pretraining or decoding): its cost drops by the content rows' share.
        last_layer_extra_rows: ``(row index (batch, k), mask)``: content rows to repeat as query rows of the last
            block (a one-stream model that needs outputs at only k positions); implies ``last_layer_queries_only``.
        layer_kwargs: passed to every block (``past_key_values``, ``rotary``, ...).

    Returns:
        ``(rows, n_content, hidden_states, attentions)``: the final rows (``n_content`` of them content, 0 when the
        last block ran queries only), and the per-block content streams / attention maps when requested.
    """
    all_hidden_states = () if output_hidden_states else None
    all_attentions = () if output_attentions else None
    queries_only_at_end = last_layer_queries_only or last_layer_extra_rows is not None
    for index, layer in enumerate(layers):
        if output_hidden_states:
            all_hidden_states += (hidden_states[:, :n_content],)
        content_queries = not (queries_only_at_end and index == len(layers) - 1)
        layer_mask = mask
        if not content_queries:
            if last_layer_extra_rows is not None:  # the selected content rows ride along as query rows
                rows, layer_mask = last_layer_extra_rows
                hidden_states = torch.cat([hidden_states, gather_rows(hidden_states, rows)], dim=1)
            elif mask is not None:
                layer_mask = mask[:, :, n_content:]
        hidden_states, weights = layer(hidden_states, n_content, layer_mask, content_queries=content_queries,
                                       output_attentions=output_attentions, **layer_kwargs)
        if output_attentions:
            all_attentions += (weights,)
        if not content_queries:
            n_content = 0  # only query rows are left
    return hidden_states, n_content, all_hidden_states, all_attentions
