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

import warnings
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "GroupVisibility",
    "visibility_mask",
    "GenSSLRotaryEmbedding",
    "rotary_cos_sin",
    "apply_rotary",
    "eager_attention_forward",
    "TwoStreamAttention",
    "GenSSLMLP",
    "TwoStreamBlock",
    "gather_rows",
    "run_block_stack",
    "skinny_linear",
]


_NEVER_VISIBLE = torch.iinfo(torch.long).max // 2  # group id given to padding keys: no row's limit reaches it


class GroupVisibility:
    """The one visibility rule kept as group ids: row i may see key j iff ``key_group_ids[j] < row_limits[i]``.

    This object is what every layer receives as its ``attention_mask``. It holds ``O(rows + keys)`` numbers, not a
    ``(rows x keys)`` mask; each attention backend turns it into what its kernel wants, once per forward (the
    result is cached here and shared by all layers):

    * ``eager`` / ``sdpa``: the boolean mask ``(batch, 1, rows, keys)`` (:meth:`dense`); ``sdpa`` skips even that
      when the group ids are ``arange`` (autoregressive, see :meth:`causal_layout`) and runs ``is_causal``
      calls instead;
    * ``flex_attention``: a ``BlockMask`` (:meth:`block_mask`) whose blocks are classified from the per-block
      minimum / maximum group ids, so no ``rows x keys`` tensor is ever built and blocks nobody may see are skipped.

    Args:
        row_limits: ``(batch, rows)``; ``gid + 1`` for content-stream rows, ``gid`` for query-stream rows.
        key_group_ids: ``(batch, keys)`` group id of each key (content token).
        key_padding_mask: ``(batch, keys)``, 1/True for real tokens, 0/False for padding.

    A row with nothing to see (the query row of the always-visible BOS/CLS token, which is never a target) would
    make softmax return NaN; such rows see the first real key instead. Their outputs are never read as
    predictions, and no other row is affected.
    """

    def __init__(
        self,
        row_limits: torch.Tensor,
        key_group_ids: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ):
        # contiguous: a compiled kernel that captures these guards on their strides (expanded aranges would recompile)
        row_limits, key_group_ids = row_limits.contiguous(), key_group_ids.contiguous()
        self.row_limits = row_limits
        if key_padding_mask is not None:
            real = key_padding_mask.bool()
            key_group_ids = key_group_ids.masked_fill(~real, _NEVER_VISIBLE)
            self.first_key = real.to(torch.int8).argmax(-1)  # (batch,) first real key
        else:
            self.first_key = torch.zeros(key_group_ids.shape[0], dtype=torch.long, device=key_group_ids.device)
        self.key_group_ids = key_group_ids
        self.empty_rows = row_limits <= key_group_ids.amin(-1, keepdim=True)  # (batch, rows)
        self._cache: dict = {}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of the mask this object stands for: ``(batch, 1, rows, keys)``."""
        return (self.row_limits.shape[0], 1, self.row_limits.shape[1], self.key_group_ids.shape[1])

    def rows(self, start: int) -> GroupVisibility:
        """The same rule for rows ``start:`` only (the last layer of a pretraining forward runs query rows only)."""
        sliced = object.__new__(GroupVisibility)
        sliced.row_limits = self.row_limits[:, start:].contiguous()
        sliced.empty_rows = self.empty_rows[:, start:].contiguous()
        sliced.key_group_ids, sliced.first_key = self.key_group_ids, self.first_key
        sliced._cache = {}
        if "dense" in self._cache:
            sliced._cache["dense"] = self._cache["dense"][:, :, start:]
        return sliced

    def mask_mod(self, batch: torch.Tensor, head: torch.Tensor, row: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The rule for one (row, key) pair, in flex attention's ``mask_mod`` signature."""
        visible = self.key_group_ids[batch, key] < self.row_limits[batch, row]
        return visible | (self.empty_rows[batch, row] & (key == self.first_key[batch]))

    def dense(self) -> torch.Tensor:
        """Boolean mask ``(batch, 1, rows, keys)``; True = may attend (the SDPA convention). Built once."""
        if "dense" not in self._cache:
            visible = self.key_group_ids[:, None, :] < self.row_limits[:, :, None]
            keys = torch.arange(self.key_group_ids.shape[1], device=visible.device)
            first = keys[None, None, :] == self.first_key[:, None, None]
            self._cache["dense"] = (visible | (self.empty_rows[:, :, None] & first))[:, None]
        return self._cache["dense"]

    def sees_everything(self) -> bool:
        """Whether every row sees every key (decoding steps, unpadded bidirectional input): then no mask is needed.

        A data-dependent answer (one host sync): under ``torch.compile`` it answers ``False`` without looking.
        """
        if torch.compiler.is_compiling():
            return False
        return bool(self.key_group_ids.amax() < self.row_limits.amin())  # padding keys never pass

    def causal_layout(self) -> tuple[int, ...] | None:
        """The rule as causal problems, when it is one: keys ``arange(T)`` (no padding, which would fail that) and
        rows in blocks of T whose limits are ``arange(T) + 1`` (content rows: causal) or ``arange(T)`` (query rows:
        strictly causal). Returns each block's offset, e.g. ``(1, 0)`` for autoregressive ``[content; query]``
        rows, ``(0,)`` for query rows alone; ``None`` otherwise.

        A data-dependent answer (one host sync, once per forward); ``None`` under ``torch.compile``.
        """
        if "causal_layout" not in self._cache:
            layout = None
            rows, keys = self.row_limits.shape[1], self.key_group_ids.shape[1]
            if not torch.compiler.is_compiling() and keys > 1 and rows % keys == 0:
                order = torch.arange(keys, device=self.row_limits.device)
                offsets = (self.row_limits.reshape(-1, rows // keys, keys) - order)[..., :1].amin(0).flatten()
                expected = torch.cat([order + int(offset) for offset in offsets.tolist()])
                if set(offsets.tolist()) <= {0, 1} and bool(
                    (self.key_group_ids == order).all() & (self.row_limits == expected).all()
                ):
                    layout = tuple(offsets.tolist())
            self._cache["causal_layout"] = layout
        return self._cache["causal_layout"]

    def block_mask(self, block_size: int = 128):
        """flex attention's ``BlockMask`` for this rule, built from per-block group-id ranges (no dense mask).

        A (row block, key block) tile is skipped when its smallest key group id reaches the largest row limit
        (nobody in it may look), is *full* (no per-element mask) when its largest key group id is below the
        smallest row limit, and *partial* (``mask_mod`` decides per element) otherwise. Tiles holding the first
        key of a block with an empty row are kept, so that row can see the first key.
        """
        if "block_mask" not in self._cache:
            from torch.nn.attention.flex_attention import BlockMask

            batch, rows = self.row_limits.shape
            keys = self.key_group_ids.shape[1]
            n_row_blocks, n_key_blocks = -(-rows // block_size), -(-keys // block_size)

            def block_range(x: torch.Tensor, n_blocks: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
                padded = nn.functional.pad(x, (0, n_blocks * block_size - x.shape[1]), value=fill)
                blocks = padded.view(x.shape[0], n_blocks, block_size)
                return blocks.amin(-1), blocks.amax(-1)

            # Rows past the end are padded with limits that change no min/max decision of real rows.
            row_min, _ = block_range(self.row_limits, n_row_blocks, _NEVER_VISIBLE)
            _, row_max = block_range(self.row_limits, n_row_blocks, -_NEVER_VISIBLE)
            key_min, _ = block_range(self.key_group_ids, n_key_blocks, _NEVER_VISIBLE)
            _, key_max = block_range(self.key_group_ids, n_key_blocks, _NEVER_VISIBLE)
            full = key_max[:, None, :] < row_min[:, :, None]  # (batch, row blocks, key blocks)
            any_visible = key_min[:, None, :] < row_max[:, :, None]
            empty_in_block = nn.functional.pad(self.empty_rows, (0, n_row_blocks * block_size - rows))
            empty_in_block = empty_in_block.view(batch, n_row_blocks, block_size).any(-1)
            first_block = (
                torch.arange(n_key_blocks, device=full.device)[None, :] == (self.first_key // block_size)[:, None]
            )
            any_visible = any_visible | (empty_in_block[:, :, None] & first_block[:, None, :])
            partial = any_visible & ~full

            def as_indices(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                counts = chosen.sum(-1, dtype=torch.int32)
                order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True).to(torch.int32)
                return counts[:, None], order[:, None]  # (batch, 1 head, row blocks[, key blocks])

            kv_num_blocks, kv_indices = as_indices(partial)
            full_num_blocks, full_indices = as_indices(full)
            self._cache["block_mask"] = BlockMask.from_kv_blocks(
                kv_num_blocks, kv_indices, full_num_blocks, full_indices,
                BLOCK_SIZE=block_size, mask_mod=self.mask_mod, seq_lengths=(rows, keys),
            )
        return self._cache["block_mask"]


def visibility_mask(
    row_limits: torch.Tensor,
    key_group_ids: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one visibility rule as a boolean mask ``(batch, 1, rows, keys)``: row i may see key j iff
    ``key_group_ids[j] < row_limits[i]`` and j is real (True = may attend, the SDPA convention).

    Arguments as :class:`GroupVisibility`, which the models pass to the attention instead of this dense mask.
    """
    return GroupVisibility(row_limits, key_group_ids, key_padding_mask).dense()


def rotary_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE angles for integer ``positions`` ``(batch, n)`` and inverse frequencies ``(head_dim / 2,)``: ``cos`` and a
    *signed* ``sin``, each ``(batch, n, head_dim)``, both multiplied by ``attention_scaling`` (yarn's and longrope's
    factor; 1 otherwise).

    The rotate-half convention of Llama/GPT-NeoX is ``x * cos + rotate_half(x) * sin`` with
    ``rotate_half(x) = (-x2, x1)``. The sign is folded into the returned ``sin`` (``(-sin, +sin)`` over the two
    halves), so applying it needs only a swap of the halves (:func:`apply_rotary`): fewer ops per decoding step.
    """
    angles = positions[..., None].float() * inv_freq.to(device=positions.device, dtype=torch.float32)
    cos, sin = angles.cos(), angles.sin()
    if attention_scaling != 1.0:
        cos, sin = cos * attention_scaling, sin * attention_scaling
    return torch.cat([cos, cos], dim=-1).to(dtype), torch.cat([-sin, sin], dim=-1).to(dtype)


class GenSSLRotaryEmbedding(nn.Module):
    """RoPE angles from ``config.rope_parameters``, computed the way transformers' ``LlamaRotaryEmbedding`` computes
    them: inverse frequencies (and the attention scaling yarn / longrope ask for) from transformers'
    ``ROPE_INIT_FUNCTIONS`` for every scaled ``rope_type`` (linear, dynamic, yarn, longrope, llama3), dynamic NTK /
    longrope updated with the input length by transformers' ``dynamic_rope_update``. ``forward(x, position_ids)``
    returns ``(cos, signed_sin)`` (:func:`rotary_cos_sin`) in ``x``'s dtype.

    The angles of each forward's positions are computed in that forward (a few element-wise ops on ``(batch, rows,
    head_dim)``), not read from a table of every position: the table had to be cached per device and dtype in Python
    state, which ``torch.compile`` guarded on (one recompile after the first call), and dynamic scaling changes the
    frequencies with the input length anyway.
    """

    inv_freq: torch.Tensor

    def __init__(self, config, device: torch.device | None = None):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init = (self.compute_default_rope_parameters if self.rope_type == "default"
                     else ROPE_INIT_FUNCTIONS[self.rope_type])
        inv_freq, self.attention_scaling = rope_init(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device: torch.device | None = None, seq_len: int | None = None,
                                        **kwargs: Any) -> tuple[torch.Tensor, float]:
        """Unscaled RoPE (``rope_type="default"``): ``1 / theta^(2i / head_dim)``, attention scaling 1."""
        base, dim = config.rope_parameters["rope_theta"], config.head_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)), 1.0

    def _apply(self, fn, recurse: bool = True):
        """Follows the model across devices but keeps the frequencies in float32 through a dtype cast
        (``model.to(torch.bfloat16)``, ``.half()``): bf16 frequencies are off by up to 0.4%, an angle error of
        ~0.7 rad at position 500. (transformers' own rotary modules are cast with the model.)"""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    @dynamic_rope_update  # "dynamic" / "longrope": the frequencies follow the input length (transformers' code)
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_cos_sin(position_ids, self.inv_freq, self.attention_scaling, x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``(batch, heads, n, head_dim)`` with tables from :func:`rotary_cos_sin` ``(batch, 1, n,
    head_dim)``."""
    swapped_halves = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # (x2, x1); the signs live in signed_sin
    return x * cos + swapped_halves * signed_sin


_SKINNY_ROWS = 16


def skinny_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; for a plain ``nn.Linear`` on CPU with at most 16 rows, computed as ``W @ x.T``.

    Why: a decoding step pushes only 2-16 rows through each projection and through the vocabulary head. CPU BLAS
    runs that skinny ``x @ W.T`` by packing ``W`` first, which doubles the memory traffic of the weights;
    ``W @ x.T`` streams them once (about twice as fast for an 8192 x 256 head, torch 2.13;
    ``benchmarks/bench_generate.py`` shows the effect on decoding). Anything else (many rows, GPU, a LoRA or
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


def causal_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: tuple[int, ...], scaling: float | None = None
) -> torch.Tensor:
    """Attention of causal row blocks (:meth:`GroupVisibility.causal_layout`) as ``is_causal`` SDPA calls, no mask.

    Output ``(batch, rows, heads, head_dim)``. A block with offset 1 (content rows, ``gid[j] <= gid[i]``) is plain
    causal attention. A block with offset 0 (query rows, ``gid[j] < gid[i]``): rows ``1..T-1`` against keys
    ``0..T-2`` with ``is_causal=True`` (top-left aligned) see exactly keys ``< i``; row 0 sees only the first key (the
    empty-row rule), so its output is that key's value. Why: no mask is built or read, and on a GPU ``is_causal``
    without a mask is what the FlashAttention kernel takes (any ``attn_mask`` rules it out).
    """
    keys = key.shape[2]
    sdpa = nn.functional.scaled_dot_product_attention
    parts = []
    for block, offset in enumerate(layout):
        rows = query[:, :, block * keys:(block + 1) * keys]
        if offset == 1:
            parts.append(sdpa(rows, key, value, is_causal=True, scale=scaling))
        else:
            parts.append(value[:, :, :1])
            parts.append(sdpa(rows[:, :, 1:], key[:, :, :-1], value[:, :, :-1], is_causal=True, scale=scaling))
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


FLEX_MIN_ROWS = 128  # one flex block: fewer rows (decoding steps) skip nothing and would compile per shape
_compiled_flex_attention = None


def flex_attention_call(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask, scaling: float | None = None
) -> torch.Tensor:
    """``flex_attention`` with a ``BlockMask``, compiled once per shape; output ``(batch, rows, heads, head_dim)``.

    Why not transformers' ``flex_attention_forward``: it compiles with dynamic shapes, and in torch 2.13 the CPU
    code generated for a second shape does not build (inductor C++ error). ``dynamic=False`` compiles each shape
    once (13-20 s the first time; a training run has one shape). Inside an outer ``torch.compile`` the plain
    function is traced instead.
    """
    global _compiled_flex_attention
    from torch.nn.attention.flex_attention import flex_attention

    attend = flex_attention
    if query.device.type == "cpu" and not torch.is_grad_enabled():  # torch refuses CPU inputs that require grad
        query, key, value = query.detach(), key.detach(), value.detach()
    if not torch.compiler.is_compiling():
        if _compiled_flex_attention is None:
            _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
        attend = _compiled_flex_attention
    return attend(query, key, value, block_mask=block_mask, scale=scaling).transpose(1, 2).contiguous()


_warned_flex_cpu_backward = False


def two_stream_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: GroupVisibility | torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatch to ``module.config._attn_implementation`` with the mask form that backend wants.

    A :class:`GroupVisibility` becomes a ``BlockMask`` for ``flex_attention``, two ``is_causal`` calls for ``sdpa``
    when the rule is causal (see :func:`causal_sdpa`), and the boolean mask otherwise (``sdpa``,
    ``eager``, any kernel registered with transformers' ``AttentionInterface``). torch has no flex backward on
    CPU: a CPU forward that needs gradients runs ``sdpa`` instead (with a warning, once); so do calls with fewer
    than ``FLEX_MIN_ROWS`` rows (decoding steps).
    """
    global _warned_flex_cpu_backward
    implementation = module.config._attn_implementation or "eager"
    if isinstance(attention_mask, GroupVisibility):
        needs_weights = kwargs.get("output_attentions", False)
        if implementation == "flex_attention" and not needs_weights:
            needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
            if query.device.type == "cpu" and needs_grad:
                if not _warned_flex_cpu_backward:
                    _warned_flex_cpu_backward = True
                    logger.warning("flex_attention has no backward pass on CPU in this torch; training runs sdpa.")
                implementation = "sdpa"
            elif query.shape[2] >= FLEX_MIN_ROWS:
                if dropout > 0.0:
                    raise ValueError("flex_attention has no attention dropout: set attention_probs_dropout_prob=0.")
                return flex_attention_call(query, key, value, attention_mask.block_mask(), scaling), None
            else:
                implementation = "sdpa"
        if implementation == "sdpa" and dropout == 0.0 and not needs_weights:
            layout = attention_mask.causal_layout()
            if layout is not None:
                return causal_sdpa(query, key, value, layout, scaling), None
        attention_mask = attention_mask.dense()
    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    return attention_interface(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


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
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        width = self.num_heads * self.head_dim  # hidden_size unless the config sets head_dim
        self.q_proj = nn.Linear(config.hidden_size, width)
        self.k_proj = nn.Linear(config.hidden_size, width)
        self.v_proj = nn.Linear(config.hidden_size, width)
        self.o_proj = nn.Linear(width, config.hidden_size)

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
        query = self._heads(skinny_linear(self.q_proj, queries))
        key = self._heads(skinny_linear(self.k_proj, content))
        value = self._heads(skinny_linear(self.v_proj, content))
        if rotary is not None:  # rows [content; query] carry their own positions; keys are the content rows
            cos, sin = rotary
            first_row = 0 if content_queries else n_content
            query = apply_rotary(query, cos[:, :, first_row:], sin[:, :, first_row:])
            key = apply_rotary(key, cos[:, :, :n_content], sin[:, :, :n_content])
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        output, weights = two_stream_attention_forward(
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
        return skinny_linear(self.o_proj, output), weights


class GenSSLMLP(nn.Module):
    """The position-wise feed-forward network of a block (``fc_in`` -> activation -> ``fc_out`` -> dropout).

    Row-wise, so the stacked ``[content; query]`` rows of both streams go through it in one call.
    """

    def __init__(self, config):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(skinny_linear(self.fc_out, self.act(skinny_linear(self.fc_in, x))))


class TwoStreamBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm Transformer block over stacked ``[content; query]`` rows, weights shared by both streams."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = TwoStreamAttention(config, layer_idx)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GenSSLMLP(config)

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

        ``rotary``: RoPE ``(cos, signed_sin)`` ``(batch, 1, rows, head_dim)`` for every row ``[content; query]`` (the
        first ``n_content`` are also the keys'), from :func:`rotary_cos_sin`.
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
    mask: GroupVisibility | torch.Tensor | None,
    last_layer_queries_only: bool = False,
    last_layer_queries_from_content: tuple[torch.Tensor, GroupVisibility | None] | None = None,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    **layer_kwargs: Any,
) -> tuple[torch.Tensor, int, tuple | None, tuple | None]:
    """Run the blocks over stacked ``[content (n_content rows); query]`` rows; shared by the text and image models.

    Args:
        mask: the one visibility rule of every block (a :class:`GroupVisibility`, or a boolean mask
            ``(batch, 1, rows, keys)``), or ``None`` (everything visible).
        last_layer_queries_only: the last block computes the query rows only (no one reads the final content
            stream during pretraining or decoding): its cost drops by the content rows' share.
        last_layer_queries_from_content: ``(row index (batch, k), visibility of those rows)``: content rows copied
            as the query rows of the last block, for a one-stream model that needs outputs at only k positions.
            Needs ``last_layer_queries_only``.
        layer_kwargs: passed to every block (``past_key_values``, ``rotary``, ...).

    Returns:
        ``(rows, n_content, hidden_states, attentions)``: the final rows (``n_content`` of them content, 0 when the
        last block ran queries only), and the per-block content streams / attention maps when requested.
    """
    if last_layer_queries_from_content is not None and not last_layer_queries_only:
        raise ValueError("last_layer_queries_from_content needs last_layer_queries_only=True.")
    all_hidden_states = () if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for index, layer in enumerate(layers):
        if output_hidden_states:
            hidden_states, content = _split_off_content(hidden_states, n_content)
            all_hidden_states += (content,)
        content_queries = not (last_layer_queries_only and index == len(layers) - 1)
        layer_mask = mask
        if not content_queries:
            hidden_states, layer_mask = _last_layer_rows(hidden_states, n_content, mask,
                                                         last_layer_queries_from_content)
        hidden_states, weights = layer(hidden_states, n_content, layer_mask, content_queries=content_queries,
                                       output_attentions=output_attentions, **layer_kwargs)
        if output_attentions:
            all_attentions += (weights,)
        if not content_queries:
            n_content = 0  # only query rows are left
    return hidden_states, n_content, all_hidden_states, all_attentions


def _split_off_content(hidden_states: torch.Tensor, n_content: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The content rows, and the rows re-joined from them: the recorded content is the tensor the block reads, so
    it stays on the gradient path (``hidden_states[i].retain_grad()`` works, as in every transformers model)."""
    content = hidden_states[:, :n_content]
    if n_content < hidden_states.shape[1]:
        return torch.cat([content, hidden_states[:, n_content:]], dim=1), content
    return content, content


def _last_layer_rows(
    hidden_states: torch.Tensor,
    n_content: int,
    mask: GroupVisibility | torch.Tensor | None,
    queries_from_content: tuple[torch.Tensor, GroupVisibility | None] | None,
) -> tuple[torch.Tensor, GroupVisibility | torch.Tensor | None]:
    """Rows and mask of a last block that computes query rows only: the selected content rows appended as its
    queries (with their own visibility), or the rule restricted to the query rows already there."""
    if queries_from_content is not None:
        rows, rows_mask = queries_from_content
        return torch.cat([hidden_states, gather_rows(hidden_states, rows)], dim=1), rows_mask
    if isinstance(mask, GroupVisibility):
        return hidden_states, mask.rows(n_content)
    if mask is not None:
        return hidden_states, mask[:, :, n_content:]
    return hidden_states, None


def __getattr__(name: str):
    """``TwoStreamMLP``, the old name of :class:`GenSSLMLP` (nothing in it is two-stream), kept for one release."""
    if name == "TwoStreamMLP":
        warnings.warn("TwoStreamMLP is renamed GenSSLMLP; the old name goes in the next release.", FutureWarning,
                      stacklevel=2)
        return GenSSLMLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
