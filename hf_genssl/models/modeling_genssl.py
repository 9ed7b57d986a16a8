"""GenSSL language model: a decoder-only Transformer with an optional second (query) stream.

Read top to bottom:

1. ``GenSSLPreTrainedModel``  - weight init and the transformers plumbing.
2. ``GenSSLModel``            - embeddings, the one visibility rule, the block stack.
3. Heads                      - pretraining (two-stream or masked), causal LM, masked LM, sequence classification.

How a forward pass decides what sees what: the caller (a data collator) gives ``group_ids``; the model
turns them into one rule, :class:`~two_stream_attention.GroupVisibility`, and never asks
which objective produced them. Without ``group_ids`` only the content stream runs, with group ids
derived from ``config.content_attention`` (positions for ``causal``, zeros for ``bidirectional``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init  # init helpers that respect `_is_hf_initialized`
from transformers.cache_utils import Cache, DynamicCache
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutputWithPast,
)
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_genssl import GenSSLConfig
from .decoding import group_parallel_generate, unmasking_generate
from .two_stream_attention import GenSSLRotaryEmbedding, GroupVisibility, TwoStreamBlock, run_block_stack

__all__ = [
    "GenSSLPreTrainedModel",
    "GenSSLModel",
    "GenSSLModelOutput",
    "GenSSLForPreTraining",
    "GenSSLForPreTrainingOutput",
    "GenSSLForCausalLM",
    "GenSSLForMaskedLM",
    "GenSSLForSequenceClassification",
]

# transformers 5.24 renamed the KV cache's argument and output field from ``past_key_values`` to ``cache`` (and
# ``generate`` now passes ``cache=``). Forward passes accept both spellings; outputs use the installed version's.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# Keys of cached tokens get this group id: everything already in the KV cache is visible to every new row.
_ALWAYS_VISIBLE = torch.iinfo(torch.long).min // 2


class _QueryRows(NamedTuple):
    """Where the query stream's rows are: each row's group id (it sees content of lower groups) and position."""

    group_ids: torch.Tensor
    position_ids: torch.Tensor


@dataclass
class GenSSLModelOutput(BaseModelOutputWithPast):
    """Output of [`GenSSLModel`]: transformers' ``BaseModelOutputWithPast`` plus the query stream.

    Args:
        last_hidden_state: ``(batch, seq, hidden)`` content stream after the final LayerNorm (``None`` when the
            caller asked to skip the content stream of the last layer).
        cache: KV cache of the content stream (named ``past_key_values`` before transformers 5.24).
        hidden_states: ``num_hidden_layers + 1`` tensors, when requested: the content stream entering each block
            (the embeddings first), then the final features after the LayerNorm: ``last_hidden_state`` when the
            content stream was computed to the end, else ``query_hidden_state`` (the heads that read the query
            stream: causal LM, two-stream pretraining, ``"query"`` pooling). So ``hidden_states[-1]`` is always
            what the head reads. All are on the gradient path (``retain_grad`` works).
        attentions: attention probabilities of each block, when requested: ``(batch, heads, rows, keys)`` with rows
            ``[content (seq); query (n_query)]`` stacked, so a head that runs the query stream returns
            ``(2T x T)`` maps (without a cache). Each stream's square map is a slice:
            ``attentions[l][:, :, :seq]`` (content, ``(T x T)``) and ``attentions[l][:, :, seq:]`` (query, one row
            per query position; ``(T x T)`` for the causal LM). The last block of a head that reads only the query
            stream computes query rows only, so its map is the query map alone.
        query_hidden_state: ``(batch, seq, hidden)`` query stream after the final LayerNorm; row i is the
            representation that predicts token i. Only when ``group_ids`` are given.
    """

    query_hidden_state: torch.FloatTensor | None = None


@dataclass
class GenSSLForPreTrainingOutput(ModelOutput):
    """Output of [`GenSSLForPreTraining`].

    Args:
        loss: mean cross-entropy over positions whose label is not -100.
        logits: ``(batch, seq, vocab)``: ``logits[:, i]`` predicts token i (query stream with ``group_ids``,
            content stream without). With labels and ``only_target_logits`` (the default in training mode):
            ``(num_targets, vocab)``, the rows of the target positions in row-major order (``labels != -100``); under
            ``torch.compile`` ``(batch, seq, vocab)`` regardless (static shapes).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class GenSSLPreTrainedModel(PreTrainedModel):
    config_class = GenSSLConfig
    config: GenSSLConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TwoStreamBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False  # arbitrary (2T x T) masks: no flash-attention kernel takes them
    _supports_flex_attn = True  # the rule becomes a BlockMask (GroupVisibility.block_mask)
    _supports_attention_backend = True

    def post_init(self) -> None:
        super().post_init()
        _register_peft_target_modules()

    def save_pretrained(self, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, always writing ``use_cache: true``.

        Why: ``Trainer`` sets ``model.config.use_cache = TrainingArguments.use_cache`` (False by default) on the model
        it trains, so a checkpoint saved after training would generate without its KV cache (4x slower). The cache never
        changes a prediction, only speed, and training never uses it (``use_cache`` defaults to off in train mode).
        """
        use_cache = self.config.use_cache
        self.config.use_cache = True
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            self.config.use_cache = use_cache

    def _warn_if_head_mismatches(self, expected: str, use_instead: str) -> None:
        """Wrong head, silent garbage otherwise: e.g. fill-mask on a causal checkpoint."""
        if self.config.content_attention != expected:
            warnings.warn(
                f"{type(self).__name__} expects a checkpoint with content_attention={expected!r} but this one is "
                f"{self.config.content_attention!r}: its predictions would be meaningless. {use_instead}",
                UserWarning, stacklevel=3)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GenSSLModel) and module.query_stream_start is not None:
            init.normal_(module.query_stream_start, mean=0.0, std=self.config.initializer_range)


class GenSSLModel(GenSSLPreTrainedModel):
    """The bare backbone. Returns the content stream and, given ``group_ids``, the query stream.

    The query stream starts from one learned vector (``query_stream_start``) plus the position embedding:
    it knows *where* it predicts but never *what* is there. ``add_query_stream=False`` builds the backbone without
    that vector, for heads that never run the query stream (the masked LM, mean/last pooling): a parameter that
    never gets a gradient breaks DDP without ``find_unused_parameters``, which ``Trainer`` turns off under gradient
    checkpointing. Such heads ignore the vector when loading a checkpoint that has it.
    """

    def __init__(self, config: GenSSLConfig, add_query_stream: bool = True):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "absolute" else None
        )
        self.rotary_emb = GenSSLRotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.query_stream_start = nn.Parameter(torch.zeros(config.hidden_size)) if add_query_stream else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(TwoStreamBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    # -- inputs -> (positions, group ids, mask) ---------------------------------------------------------------

    def _check_positions(self, positions: torch.Tensor) -> None:
        if torch.compiler.is_compiling():  # a host sync would break the graph; eager runs check every batch
            return
        limit, table = self.config.max_sequence_length, self.config.max_position_embeddings
        if positions.numel() and int(positions.max()) >= limit:
            what = (f"max_position_embeddings={limit}" if limit == table
                    else f"max_sequence_length={limit} (max_position_embeddings={table} with its RoPE scaling)")
            raise ValueError(
                f"Sequence of {int(positions.max()) + 1} tokens is longer than the model's {what}; truncate the "
                "input (e.g. tokenizer(..., truncation=True, max_length=...)) or score it in windows."
            )

    def _check_inputs(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        group_ids: torch.Tensor | None,
        output_attentions: bool,
    ) -> None:
        """Clear errors for inputs that would otherwise fail deep inside (or silently give wrong results)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference.ndim < 2 or reference.shape[0] == 0 or reference.shape[1] == 0:
            raise ValueError(
                f"Got an input of shape {tuple(reference.shape)}: the model needs at least one sequence "
                "of at least one "
                "token, shaped (batch, seq). Skip empty batches and empty texts before calling the model."
            )
        if input_ids is not None and not torch.compiler.is_compiling():  # a host sync would break the graph
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"input_ids contains the id {bad}, outside the vocabulary [0, {self.config.vocab_size}) of this "
                    "model: is the tokenizer the one the model was trained with (len(tokenizer) <= vocab_size)?"
                )
        if group_ids is not None and (group_ids.is_floating_point() or group_ids.is_complex()):
            raise ValueError(
                f"group_ids must be an integer tensor (an order of the tokens), got {group_ids.dtype}; rounding would "
                "silently change what each token sees. Build them with torch.long (the data collators do)."
            )
        if output_attentions and self.config._attn_implementation != "eager":
            warnings.warn(
                f"output_attentions=True under attn_implementation={self.config._attn_implementation!r} returns no "
                "attention maps (only eager computes them): load the model with attn_implementation='eager' or call "
                "model.set_attn_implementation('eager') first.", UserWarning, stacklevel=2)

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, inputs_embeds: torch.Tensor, past_length: int
    ) -> torch.Tensor:
        """The padding mask over cached and new tokens ``(batch, past + seq)``: all ones when none is given."""
        batch_size, seq_length = inputs_embeds.shape[:2]
        if attention_mask is None:
            return torch.ones(batch_size, past_length + seq_length, dtype=torch.long, device=inputs_embeds.device)
        if attention_mask.shape != (batch_size, past_length + seq_length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but should be "
                f"(batch, past + seq) = {(batch_size, past_length + seq_length)}."
            )
        return attention_mask

    def _positions(self, attention_mask: torch.Tensor, past_length: int) -> torch.Tensor:
        """Position of each new token counted over real tokens only, so left or right padding changes nothing."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_length:]
        self._check_positions(positions)
        return positions

    def _default_group_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Group ids of the content stream when the caller gives none: the configured attention."""
        if self.config.content_attention == "causal":
            return positions
        return torch.zeros_like(positions)

    def _group_ids(
        self,
        group_ids: torch.Tensor | None,
        positions: torch.Tensor,
        query_group_ids: torch.Tensor | None,
        query_position_ids: torch.Tensor | None,
        input_shape: torch.Size,
    ) -> tuple[torch.Tensor, _QueryRows | None]:
        """The content rows' group ids, and the query rows (``None`` when only the content stream runs): given
        explicitly, or one per input token at its own position when ``group_ids`` are given."""
        if group_ids is not None and group_ids.shape != input_shape:
            raise ValueError(
                f"group_ids has shape {tuple(group_ids.shape)} but input_ids has {tuple(input_shape)}; "
                "give one group id per input token (the data collators do this)."
            )
        if (query_group_ids is None) != (query_position_ids is None):
            raise ValueError("Pass query_group_ids and query_position_ids together.")
        content_gids = group_ids.long() if group_ids is not None else self._default_group_ids(positions)
        explicit = query_group_ids is not None
        if not explicit and group_ids is not None:  # one query row per token, at its own position
            query_group_ids, query_position_ids = content_gids, positions
        if query_group_ids is None:
            return content_gids, None
        if self.query_stream_start is None:
            raise ValueError(
                f"{type(self).__name__} was built without a query stream (add_query_stream=False: this head never "
                "runs it), so it takes no group_ids; use GenSSLForPreTraining or GenSSLModel for two-stream inputs."
            )
        if explicit:  # the default query positions are the content positions, checked by the caller
            self._check_positions(query_position_ids)
        return content_gids, _QueryRows(query_group_ids, query_position_ids)

    def _visibility(
        self,
        content_gids: torch.Tensor,
        queries: _QueryRows | None,
        attention_mask: torch.Tensor,
        past_length: int,
        output_attentions: bool,
    ) -> GroupVisibility | None:
        """One rule for both streams: rows ``[content; query]`` against the content keys, cached keys always visible.
        Kept as group ids (no ``rows x keys`` mask); ``None`` when every row sees every key."""
        batch_size, device = content_gids.shape[0], content_gids.device
        cached_gids = torch.full((batch_size, past_length), _ALWAYS_VISIBLE, dtype=torch.long, device=device)
        key_gids = torch.cat([cached_gids, content_gids], dim=1)
        row_limits = content_gids + 1 if queries is None else torch.cat([content_gids + 1, queries.group_ids], dim=1)
        mask = GroupVisibility(row_limits, key_gids, attention_mask)
        if not output_attentions and mask.sees_everything():
            # every row sees every key (decoding steps, unpadded masked LM): SDPA's unmasked kernel is faster
            return None
        return mask

    def _embed_rows(
        self, inputs_embeds: torch.Tensor, positions: torch.Tensor, queries: _QueryRows | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The rows ``[content; query]`` entering the first block, and RoPE's ``(cos, signed_sin)`` of every row
        (``None`` with learned positions).

        Positions: learned absolute embeddings added to both streams, or RoPE applied inside attention to every
        row (content and query rows by their own positions) and to the content keys.
        """
        rotary = None
        if self.config.position_embedding_type == "rope":
            row_positions = positions if queries is None else torch.cat([positions, queries.position_ids], dim=1)
            cos, sin = self.rotary_emb(inputs_embeds, row_positions)
            rotary = (cos[:, None], sin[:, None])  # (batch, 1 head, rows, head_dim)
            content_embeds = inputs_embeds
        else:
            content_embeds = inputs_embeds + self.embed_positions(positions)
        hidden_states = self.dropout(content_embeds)
        if queries is not None:
            hidden_states = torch.cat([hidden_states, self.dropout(self._query_embeds(queries, inputs_embeds.dtype))],
                                      dim=1)
        return hidden_states, rotary

    def _query_embeds(self, queries: _QueryRows, dtype: torch.dtype) -> torch.Tensor:
        """The query stream's input: ``query_stream_start`` at each query row's position (added here, or by RoPE)."""
        start = self.query_stream_start.to(dtype)
        if self.config.position_embedding_type == "rope":
            return start.expand(*queries.position_ids.shape, -1)
        return start + self.embed_positions(queries.position_ids)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        group_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_content_stream: bool = True,
        query_group_ids: torch.LongTensor | None = None,
        query_position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> GenSSLModelOutput:
        r"""
        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, past + seq)``; 1 for real tokens, 0 for padding.
            group_ids: ``(batch, seq)`` integer order of the tokens. When given, a second (query) stream runs:
                content token i sees j iff ``group_ids[j] <= group_ids[i]``; query row i sees content j iff
                ``group_ids[j] < group_ids[i]``. Tokens already in ``cache`` are visible to every row.
            position_ids: override the positions (default: counted over real tokens of ``attention_mask``).
            return_content_stream: ``False`` skips the content stream of the last block (only the query stream
                is read during pretraining); ``last_hidden_state`` is then ``None``.
            query_group_ids / query_position_ids: ``(batch, n_query)``: place the query-stream rows explicitly
                instead of one per input token. Query row r predicts the token at ``query_position_ids[r]`` from
                content with group id ``< query_group_ids[r]``. Used by decoding: the rows for the next token (or
                the next group) ride along with the content pass of the tokens just emitted.
            cache: the KV cache of the content stream (``past_key_values``, its name before transformers 5.24, is
                still accepted with a deprecation warning).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        self._check_inputs(input_ids, inputs_embeds, group_ids, output_attentions)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        attention_mask = self._attention_mask(attention_mask, inputs_embeds, past_length)
        if position_ids is None:
            position_ids = self._positions(attention_mask, past_length)  # checked there
        else:
            self._check_positions(position_ids)
        content_gids, queries = self._group_ids(group_ids, position_ids, query_group_ids, query_position_ids,
                                                inputs_embeds.shape[:2])
        hidden_states, rotary = self._embed_rows(inputs_embeds, position_ids, queries)
        hidden_states, n_content, all_hidden_states, all_attentions = run_block_stack(
            self.layers,
            hidden_states,
            inputs_embeds.shape[1],
            self._visibility(content_gids, queries, attention_mask, past_length, output_attentions),
            last_layer_queries_only=queries is not None and not return_content_stream,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            past_key_values=cache,
            rotary=rotary,
        )
        return self._split_streams(self.norm(hidden_states), n_content, queries is not None,
                                   cache if use_cache else None, all_hidden_states, all_attentions)

    @staticmethod
    def _split_streams(
        rows: torch.Tensor,
        n_content: int,
        has_queries: bool,
        cache: Cache | None,
        all_hidden_states: tuple | None,
        all_attentions: tuple | None,
    ) -> GenSSLModelOutput:
        """The final (normalised) rows split into the two streams; ``hidden_states`` gets its last entry, what the
        head reads (see :class:`GenSSLModelOutput`)."""
        content_out = rows[:, :n_content] if n_content else None
        query_out = rows[:, n_content:] if has_queries else None
        if all_hidden_states is not None:
            all_hidden_states += (content_out if content_out is not None else query_out,)
        return GenSSLModelOutput(
            last_hidden_state=content_out,
            query_hidden_state=query_out,
            **{CACHE_FIELD: cache},
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


# ------------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------------


# LoRA's default target modules for GenSSL (PEFT looks them up by model_type when LoraConfig() names none): the
# attention projections, as for Llama-style models in PEFT's own table.
PEFT_TARGET_MODULES = ["q_proj", "v_proj"]


@functools.cache
def _register_peft_target_modules() -> None:
    """Tell PEFT (when installed) which modules ``LoraConfig()`` targets in a GenSSL model; done when the first model
    is built, so importing hf_genssl stays free of the PEFT import."""
    # try/except, not find_spec: transformers' remote-code loader lists every import outside a try block as a
    # requirement, so a checkpoint loaded with trust_remote_code would demand PEFT.
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as lora_targets
    except ImportError:
        return

    for model_type in ("genssl", "genssl_vit"):
        lora_targets.setdefault(model_type, PEFT_TARGET_MODULES)


def _without_contextless_targets(labels: torch.Tensor, group_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Labels of query rows that see no content (group id at or below the smallest real one, e.g. every row when all
    group ids are equal) set to -100. Such a row has nothing to predict from, and the attention's empty-row fallback
    points it at the first real key, which can be its own token: a target must never see itself."""
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(group_ids, dtype=torch.bool)
    ceiling = torch.iinfo(torch.long).max
    floor = torch.where(real, group_ids.long(), ceiling).amin(1, keepdim=True)
    return labels.masked_fill(group_ids.long() <= floor, -100)


def _num_items(num_items_in_batch: int | torch.Tensor | None, targets: torch.Tensor) -> int | torch.Tensor:
    """What the summed token loss is divided by: ``num_items_in_batch`` (``Trainer`` counts the targets of all
    accumulated micro-batches and DDP ranks) or this batch's targets; at least 1, so a batch without targets has loss
    0 (zero gradient) instead of NaN."""
    if num_items_in_batch is None:
        num_items_in_batch = (targets != -100).sum()
    if torch.is_tensor(num_items_in_batch):
        return num_items_in_batch.clamp(min=1)
    return max(int(num_items_in_batch), 1)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None):
    """Cross-entropy of ``logits`` ``(..., vocab)`` against aligned ``targets`` (-100 ignored), summed and divided by
    :func:`_num_items`: transformers' ``ForMaskedLMLoss`` with the count always given (so no NaN without targets)."""
    return ForMaskedLMLoss(
        logits, targets, logits.shape[-1], num_items_in_batch=_num_items(num_items_in_batch, targets)
    )


class _LMHeadMixin:
    """What the three language-model heads share: the backbone ``model``, a vocabulary projection ``lm_head`` tied to
    its input embedding (``_tied_weights_keys`` tells transformers 5), the label check and the output's fields.

    A head says which checkpoints it is meant for (``_expected_checkpoint``: the ``content_attention`` and what to use
    instead, a warning when it does not match) and whether it ever runs the query stream (``_runs_query_stream``;
    without, the backbone has no ``query_stream_start``, see :class:`GenSSLModel`).
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _expected_checkpoint: tuple[str, str] | None = None
    _runs_query_stream = True

    def __init__(self, config: GenSSLConfig):
        super().__init__(config)
        if self._expected_checkpoint is not None:
            self._warn_if_head_mismatches(*self._expected_checkpoint)
        self.model = GenSSLModel(config, add_query_stream=self._runs_query_stream)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @staticmethod
    def _check_labels(labels: torch.Tensor | None, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None):
        """One label per input token (-100 where nothing is predicted)."""
        reference = input_ids if input_ids is not None else inputs_embeds
        if labels is not None and labels.shape != reference.shape[:2]:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)} but input_ids has {tuple(reference.shape[:2])}; "
                "give one label per token, -100 where nothing is predicted."
            )

    @staticmethod
    def _output(output_class: type[ModelOutput], outputs: GenSSLModelOutput, **fields) -> ModelOutput:
        """``output_class`` with the head's own ``fields`` and the backbone's ``hidden_states`` / ``attentions``."""
        return output_class(**fields, hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings


class GenSSLForPreTraining(_LMHeadMixin, GenSSLPreTrainedModel):
    """Pretraining head for every objective; the collator's tensors pick the objective.

    * with ``group_ids`` (AR, semi-AR, MPNet-style masked): ``logits[:, i]`` is the query stream's prediction
      of token i, made from content of earlier groups only;
    * without (masked LM with ``[MASK]`` tokens in ``input_ids``): ``logits[:, i]`` is the content stream's
      prediction at i.

    ``only_target_logits=True`` runs the vocabulary projection only where ``labels != -100`` (ModernBERT's
    ``sparse_prediction``, transformers' ``logits_to_keep`` idea). For masked pretraining that is ~15% of positions,
    and the projection is the largest matmul of a small model, so it is the default in training mode
    (``only_target_logits=None``): the plain ``forward`` a ``Trainer`` calls is as fast as the package's own loop.
    In eval mode the default is the full ``(batch, seq, vocab)`` logits; BERT computes them everywhere.
    """

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        group_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        only_target_logits: bool | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> GenSSLForPreTrainingOutput:
        r"""
        Args:
            only_target_logits: logits only at the targets (see above); default: ``self.training``.
            num_items_in_batch: targets in the whole accumulated batch (``Trainer`` passes it); the loss is the sum
                of token losses divided by it. Default: this batch's targets.
        """
        only_target_logits = self.training if only_target_logits is None else only_target_logits
        self._check_labels(labels, input_ids, inputs_embeds)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            group_ids=group_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_content_stream=False,
            **kwargs,
        )
        if group_ids is not None:
            hidden = outputs.query_hidden_state
            if labels is not None:
                labels = _without_contextless_targets(labels, group_ids, attention_mask)
        else:  # one-stream (masked) step: the query-stream vector is unused; zero times it keeps DDP's reducer happy
            hidden = outputs.last_hidden_state + 0.0 * self.model.query_stream_start.sum()

        loss = None
        # Under torch.compile the target rows' count is data-dependent (a graph break): the vocabulary projection
        # runs at every position there, same loss.
        if labels is not None and only_target_logits and not torch.compiler.is_compiling():
            targets = labels != -100
            logits = self.lm_head(hidden[targets])
            loss = token_loss(logits, labels[targets], num_items_in_batch)
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss = token_loss(logits, labels, num_items_in_batch)

        return self._output(GenSSLForPreTrainingOutput, outputs, loss=loss, logits=logits)


class GenSSLForCausalLM(_LMHeadMixin, GenSSLPreTrainedModel, GenerationMixin):
    """Left-to-right language model with a KV cache; works with ``generate`` and the text-generation pipeline.

    Why the query stream: two-stream pretraining trains only the query stream to predict tokens (the content
    stream serves as keys and values). So the next token after position i is read from a query row placed
    at position ``i + 1`` that sees content ``<= i``, exactly as in pretraining with one token per group.
    The content stream runs causally (``config.content_attention`` must be ``"causal"``) and is cached.

    ``logits[:, i]`` predicts token ``i + 1``; ``labels`` are the input ids (shifted inside), as in GPT-2.
    """

    _expected_checkpoint = ("causal", "Generate from a masked checkpoint with GenSSLForMaskedLM.generate "
                            "(iterative unmasking) or fill-mask.")

    def generate(self, inputs: torch.Tensor | None = None, *args, group_size: int | None = None, **kwargs):
        """``GenerationMixin.generate``, plus group-parallel decoding with ``group_size=g``.

        Without ``group_size`` (or with ``group_size=1``) this is transformers' own ``generate`` with the KV cache:
        greedy, sampling, beam search, assisted decoding, ... With ``group_size=g > 1``, ``g`` tokens are emitted per
        forward pass (see :func:`hf_genssl.decoding.group_parallel_generate`); the same ``GenerationConfig``, logits
        processors, stopping criteria, streamer and ``return_dict_in_generate`` apply, plus ``generator=`` to seed
        the sampling. What cannot apply to tokens emitted together (beam search, contrastive, assisted decoding)
        raises a ``ValueError`` that lists what is supported.
        """
        settings = kwargs.get("generation_config") or (args[0] if args else None) or self.generation_config
        implementation = kwargs.get("cache_implementation", getattr(settings, "cache_implementation", None))
        given = kwargs.get("cache", kwargs.get("past_key_values"))
        static = given is not None and not isinstance(given, DynamicCache)
        if implementation not in (None, "dynamic", "offloaded") or static:
            raise ValueError(
                "GenSSL's two-stream attention masks keys by group id and supports the dynamic KV cache only "
                "(cache_implementation None, 'dynamic' or 'offloaded', or a DynamicCache); "
                f"got {implementation or type(given).__name__!r}."
            )
        if group_size is None or group_size == 1:
            if kwargs.get("generator") is not None:
                raise ValueError("generator= seeds group-parallel decoding (group_size > 1); transformers' generate "
                                 "samples from the global RNG: seed it with transformers.set_seed / torch.manual_seed.")
            return super().generate(inputs, *args, **kwargs)
        if args:  # generate's positional order: inputs, generation_config, logits_processor, stopping_criteria
            names = ("generation_config", "logits_processor", "stopping_criteria")
            if len(args) > len(names):
                raise TypeError("With group_size, pass generate's options after the inputs as keyword arguments.")
            kwargs.update(zip(names, args, strict=False))
        return group_parallel_generate(self, inputs, group_size=group_size, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            labels: ``(batch, seq)``, the input ids (shifted inside, -100 = ignored), as in GPT-2.
            shift_labels: ``(batch, seq)`` targets already aligned with the logits (``shift_labels[:, i]`` is the
                token ``logits[:, i]`` predicts); replaces ``labels`` (what Accelerate passes under context or
                sequence parallelism).
            num_items_in_batch: number of target tokens in the whole accumulated batch (``Trainer`` passes it): the
                loss is the sum of token losses divided by it, so gradient accumulation and DDP average per token.
            logits_to_keep: compute logits only for the last ``logits_to_keep`` positions (an int), or at the given
                positions (a 1-D tensor of indices), as transformers' causal LMs.
        """
        if self.config.content_attention != "causal" and (cache is not None or use_cache):
            raise ValueError(
                "This checkpoint's content stream is bidirectional (masked pretraining); a KV cache would change "
                "its predictions. Generate from it by iterative unmasking instead, or pass use_cache=False."
            )
        self._check_labels(labels, input_ids, inputs_embeds)
        kwargs.pop("cache_position", None)
        decoding = isinstance(logits_to_keep, int) and logits_to_keep > 0 and labels is None and shift_labels is None
        position_ids = self._token_positions(input_ids, inputs_embeds, attention_mask, position_ids, cache,
                                             rows_read=logits_to_keep if decoding else 0)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_content_stream=False,
            # The row predicting the token after position i sits one past it and sees content <= i. If the model has
            # no position left there, no next token can be placed anyway, so the clamped row is never a prediction.
            query_group_ids=position_ids + 1,
            query_position_ids=(position_ids + 1).clamp(max=self.config.max_sequence_length - 1),
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.query_hidden_state[:, keep])
        loss = self._shifted_loss(logits, labels, shift_labels, num_items_in_batch)
        return self._output(CausalLMOutputWithPast, outputs, loss=loss, logits=logits,
                            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})

    def _token_positions(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: Cache | None,
        rows_read: int,
    ) -> torch.Tensor:
        """Positions of the new tokens (counted over real tokens unless given). When decoding reads only the last
        ``rows_read`` rows, the token after each must have a position left: the same error as a too-long input (a
        full forward's clamped last row is never read by a loss or a decoder)."""
        if position_ids is None:
            reference = input_ids if input_ids is not None else inputs_embeds
            past_length = cache.get_seq_length() if cache is not None else 0
            mask = attention_mask
            if mask is None:
                mask = torch.ones(reference.shape[0], past_length + reference.shape[1], device=reference.device)
            position_ids = self.model._positions(mask, past_length)
        if rows_read:
            self.model._check_positions(position_ids[:, -rows_read:] + 1)
        return position_ids

    def _shifted_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        shift_labels: torch.Tensor | None,
        num_items_in_batch: int | torch.Tensor | None,
    ) -> torch.Tensor | None:
        """transformers' causal-LM loss (``labels`` shifted inside, or ``shift_labels`` as they are)."""
        if labels is None and shift_labels is None:
            return None
        targets = shift_labels if shift_labels is not None else labels[:, 1:]
        return self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                  shift_labels=shift_labels, num_items_in_batch=_num_items(num_items_in_batch, targets))


class GenSSLForMaskedLM(_LMHeadMixin, GenSSLPreTrainedModel):
    """Masked-LM head over the content stream: ``logits[:, i]`` predicts the token at i (no shift).

    Meant for checkpoints with ``content_attention="bidirectional"``; it powers the ``fill-mask`` pipeline. It never
    runs the query stream, so its backbone has no ``query_stream_start`` (ignored when loading a checkpoint).
    """

    _keys_to_ignore_on_load_unexpected = [r"query_stream_start"]
    _expected_checkpoint = ("bidirectional", "A causal checkpoint predicts left to right: use GenSSLForCausalLM "
                            "(text-generation) instead.")
    _runs_query_stream = False

    def generate(
        self,
        input_ids: torch.LongTensor,
        generation_config: GenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Generate by iterative unmasking: ``strategy="left_to_right"`` (default) or ``"confidence"`` with
        ``tokens_per_step``; see :func:`hf_genssl.decoding.unmasking_generate`.

        A ``GenerationConfig`` may give ``max_new_tokens`` (default 32), ``do_sample``, ``temperature``, ``top_k`` and
        ``top_p``; keyword arguments override it. Prompts must not be padded (an all-ones ``attention_mask`` is fine).
        """
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise ValueError(
                "Iterative unmasking takes unpadded prompts: generate one prompt (or one length) at a time."
            )
        if generation_config is not None:
            for name in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p"):
                if getattr(generation_config, name, None) is not None:
                    kwargs.setdefault(name, getattr(generation_config, name))
        kwargs.setdefault("max_new_tokens", 32)
        return unmasking_generate(self, input_ids, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        self._check_labels(labels, input_ids, inputs_embeds)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = token_loss(logits, labels, num_items_in_batch) if labels is not None else None
        return self._output(MaskedLMOutput, outputs, loss=loss, logits=logits)


class GenSSLForSequenceClassification(GenSSLPreTrainedModel):
    """Sequence classification / regression (``config.problem_type`` as in transformers).

    Pooling (``config.classifier_pooling``; ``"auto"`` picks ``"query"`` for causal checkpoints, ``"mean"`` for
    bidirectional ones):

    * ``"query"``: one query-stream row placed right after the last real token, which sees the whole input.
      Why: two-stream pretraining trains the query stream to summarise a prefix (it predicts the next token
      from it), while the top content layer is read only through keys and values, which leaves a shared offset
      free to grow (adding one vector to every key or value changes nothing a query sees); its features of
      different inputs end up nearly parallel and fine-tune poorly. This row is GPT's last-token feature.
    * ``"last"``: the content stream at the last real token; ``"mean"``: the mean content over real tokens.

    With ``"last"`` or ``"mean"`` the query stream never runs, so the backbone has no ``query_stream_start``.
    """

    _keys_to_ignore_on_load_unexpected = [r"query_stream_start"]

    def __init__(self, config: GenSSLConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GenSSLModel(config, add_query_stream=self._pooling() == "query")
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _pooling(self) -> str:
        if self.config.classifier_pooling == "auto":
            return "query" if self.config.content_attention == "causal" else "mean"
        return self.config.classifier_pooling

    def _pool(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        pooling = self._pooling()
        if pooling == "query":
            return outputs.query_hidden_state[:, 0]
        hidden = outputs.last_hidden_state
        real = attention_mask.to(hidden.dtype)
        if pooling == "mean":
            return (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.long() * (positions + 1)).argmax(-1)  # last real token, left or right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        reference = input_ids if input_ids is not None else inputs_embeds
        if labels is not None and labels.shape[0] != reference.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} rows but the batch has {reference.shape[0]} sequences.")
        if attention_mask is None:
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        query_rows = {}
        if self._pooling() == "query":
            # One row after the last real token (clamped if the input fills every position: it then sits on the
            # last token's position but still sees all of the input, as its group id says).
            after_last = attention_mask.long().sum(1, keepdim=True)
            query_rows = dict(query_group_ids=after_last, return_content_stream=False,
                              query_position_ids=after_last.clamp(max=self.config.max_sequence_length - 1))
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **query_rows,
            **kwargs,
        )
        logits = self.score(self.dropout(self._pool(outputs, attention_mask)))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# Save the code files with every checkpoint (see `GenSSLConfig.auto_map` for the full map).
GenSSLModel.register_for_auto_class("AutoModel")
GenSSLForPreTraining.register_for_auto_class("AutoModelForPreTraining")
GenSSLForCausalLM.register_for_auto_class("AutoModelForCausalLM")
GenSSLForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
GenSSLForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
