"""Decoding that `GenerationMixin` does not do: group-parallel decoding and iterative unmasking.

* :func:`group_parallel_generate` - for (semi-)autoregressive two-stream checkpoints: emits ``group_size``
  tokens per forward pass. Each pass carries the content rows of the group just emitted (written to the
  KV cache) *and* the query rows of the next group, which see the cache plus that group, exactly as
  pretraining with groups of that size showed them. It runs through ``GenerationMixin.generate`` with its
  own loop as ``custom_generate``, so ``GenerationConfig``, logits processors and warpers, stopping criteria,
  streamers and ``return_dict_in_generate`` are transformers' own.
* :func:`unmasking_generate` - for masked (bidirectional) checkpoints: appends ``[MASK]`` tokens and fills
  them left to right one at a time, or most-confident first, several per pass.

Written by hand because no maintained library decodes two-stream or masked models; token selection uses
transformers' own logits warpers.
"""

from __future__ import annotations

import copy
import functools
from typing import Literal

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import DynamicCache
from transformers.generation import (
    GenerateDecoderOnlyOutput,
    GenerationMode,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer

from .two_stream_attention import skinny_linear

__all__ = ["group_parallel_generate", "group_parallel_decode", "unmasking_generate", "select_tokens"]

# The output field of the KV cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before.
CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


def select_tokens(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy or sampled token ids for ``logits`` of shape ``(..., vocab)``."""
    if not do_sample:
        return logits.argmax(-1)
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    flat = logits.reshape(-1, logits.shape[-1]).float()
    flat = warpers(None, flat)
    tokens = torch.multinomial(flat.softmax(-1), 1, generator=generator)
    return tokens.view(logits.shape[:-1])


def _backbone_and_head(model):
    if not hasattr(model, "model") or not hasattr(model, "lm_head"):
        raise TypeError(
            "Pass a GenSSL model with a language-model head (GenSSLForCausalLM, ...ForPreTraining, ...ForMaskedLM)."
        )
    return model.model, model.lm_head


# What ``generate(group_size=g)`` can do, said in every error about what it cannot.
GROUP_DECODING_SUPPORTS = (
    "greedy decoding and sampling (do_sample, temperature, top_k, top_p, min_p, typical_p, ...), every logits "
    "processor (repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, logits_processor=...), "
    "stopping criteria (max_length / max_new_tokens, eos_token_id, stop_strings with tokenizer=, "
    "stopping_criteria=...), "
    "streamer, num_return_sequences, generator, and return_dict_in_generate with output_scores / output_logits"
)


def _unsupported(what: str, group_size: int) -> ValueError:
    return ValueError(
        f"generate(group_size={group_size}) cannot do {what}: the tokens of a group are predicted together from "
        f"earlier groups only. It supports {GROUP_DECODING_SUPPORTS}. For {what}, call generate without group_size "
        "(transformers' own decoding, one token per forward pass)."
    )


def group_parallel_generate(
    model,
    inputs: torch.LongTensor | None = None,
    group_size: int = 2,
    generation_config: GenerationConfig | None = None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    streamer: BaseStreamer | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> GenerateDecoderOnlyOutput | torch.LongTensor:
    """Generate ``group_size`` tokens per forward pass from a two-stream (semi-)AR checkpoint.

    Takes what ``GenerationMixin.generate`` takes (a ``GenerationConfig`` or its fields as keyword arguments,
    ``logits_processor``, ``stopping_criteria``, ``streamer``, ``attention_mask`` with left padding, ...) and runs
    through ``generate`` itself: transformers prepares the generation config, the special tokens, the logits
    processors and warpers and the stopping criteria, and :func:`group_parallel_decode` replaces only the decoding
    loop (``custom_generate``). ``generator`` seeds the sampling. Returns what ``generate`` returns: the sequences,
    or a ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate=True``.

    Beam search, contrastive search, DoLa and assisted decoding rank or verify one token per pass and cannot apply
    to tokens emitted together: they raise a ``ValueError`` (use ``generate`` without ``group_size``).
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}.")
    if model.config.content_attention != "causal":
        raise ValueError(
            "Group-parallel decoding needs a causal (AR / semi-AR) checkpoint; generate from a masked checkpoint "
            "with GenSSLForMaskedLM.generate (iterative unmasking)."
        )
    for name in ("assistant_model", "prompt_lookup_num_tokens", "custom_generate", "assistant_early_exit"):
        if kwargs.get(name) is not None:
            raise _unsupported(f"{name} (assisted or custom decoding)", group_size)
    for name in ("output_attentions", "output_hidden_states"):
        if kwargs.get(name) or (generation_config is not None and getattr(generation_config, name, False)):
            raise _unsupported(f"{name} (a pass returns the rows of a whole group, not one token's)", group_size)
    # generate() hands a custom_generate callable only the arguments its signature adds, so the tokenizer that
    # stop strings need would be lost: build their stopping criterion here.
    tokenizer = kwargs.pop("tokenizer", None)
    stop_strings = kwargs.pop("stop_strings", None)
    if stop_strings is None and generation_config is not None and generation_config.stop_strings:
        generation_config = copy.deepcopy(generation_config)
        stop_strings, generation_config.stop_strings = generation_config.stop_strings, None
    if stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings need the model's tokenizer: pass tokenizer= to generate.")
        stop = StopStringCriteria(tokenizer, stop_strings)
        stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), stop])
    decode = functools.partial(group_parallel_decode, group_size=group_size, streamer=streamer, generator=generator)
    return GenerationMixin.generate(
        model,
        inputs,
        generation_config=generation_config,
        logits_processor=logits_processor,
        stopping_criteria=stopping_criteria,
        streamer=streamer,  # generate streams the prompt; the partial hands the streamer to the loop
        custom_generate=decode,
        **kwargs,
    )


@torch.no_grad()
def group_parallel_decode(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    group_size: int = 2,
    streamer: BaseStreamer | None = None,
    generator: torch.Generator | None = None,
    **model_kwargs,
) -> GenerateDecoderOnlyOutput | torch.LongTensor:
    """The decoding loop of :func:`group_parallel_generate` (a ``custom_generate`` callable for ``generate``).

    The prompt (left padding allowed) is encoded causally. Then every pass feeds the last emitted group as content
    (all of it in ONE group, at the positions it was predicted at, so its tokens see each other as in pretraining)
    together with query rows at the next ``group_size`` positions, which see everything before them. The logits of a
    pass are computed together; the tokens are then chosen left to right, each with the logits processors and
    stopping criteria seeing the sequence so far (incl. the group's earlier tokens), exactly as in ``_sample``: so
    ``scores`` has one entry per new token, a repetition penalty sees the group's earlier tokens, and generation
    stops at the token where a stopping criterion fires, even inside a group. Quality drops as ``group_size`` grows
    past the group size the model was pretrained with.
    """
    mode = generation_config.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        raise _unsupported(mode.value.replace("_", " "), group_size)
    backbone, head = _backbone_and_head(model)
    cache, mask = _decoding_cache_and_mask(backbone.config, input_ids, generation_config, group_size, model_kwargs)
    batch_size, device = input_ids.shape[0], input_ids.device
    tokens = _TokenChooser(input_ids, logits_processor, stopping_criteria, generation_config, streamer, generator)

    content_ids = input_ids
    content_positions = backbone._positions(mask, 0)
    content_gids = content_positions  # the prompt is encoded causally, one token per group
    next_position = content_positions[:, -1:] + 1
    done = False
    while not done:
        n = min(group_size, generation_config.max_length - input_ids.shape[1])
        if n < 1:  # the prompt already fills max_length (generate has warned)
            break
        query_positions = next_position + torch.arange(n, device=device)
        outputs = backbone(
            content_ids,
            attention_mask=mask,
            group_ids=content_gids,
            position_ids=content_positions,
            cache=cache,
            use_cache=True,
            return_content_stream=False,
            query_group_ids=next_position.expand(batch_size, n),
            query_position_ids=query_positions,
        )
        group_logits = skinny_linear(head, outputs.query_hidden_state).float()
        for j in range(n):
            if tokens.append(group_logits[:, j]):  # every sequence has finished: stop at this token
                done = True
                break
        input_ids = tokens.input_ids
        # The group just emitted becomes content: one group (it sees itself), at the positions it was predicted at.
        content_ids, content_positions = input_ids[:, -n:], query_positions
        content_gids = next_position.expand(batch_size, n)
        mask = torch.cat([mask, torch.ones(batch_size, n, dtype=mask.dtype, device=device)], dim=1)
        next_position = next_position + n

    return tokens.finish(cache if generation_config.use_cache else None)


def _decoding_cache_and_mask(
    config, input_ids: torch.LongTensor, generation_config: GenerationConfig, group_size: int, model_kwargs: dict
) -> tuple[DynamicCache, torch.Tensor]:
    """The empty KV cache and the prompt's padding mask from what ``generate`` prepared, refusing inputs the group
    loop cannot honour (a pre-filled cache, other model inputs, more positions than the model has)."""
    cache = model_kwargs.pop("cache", None)
    if cache is None:
        cache = DynamicCache(config=config)
    elif not isinstance(cache, DynamicCache) or cache.get_seq_length() > 0:
        raise _unsupported("decoding into a given or pre-filled cache (pass no cache)", group_size)
    mask = model_kwargs.pop("attention_mask", None)
    for name in ("position_ids", "logits_to_keep", "use_cache"):  # prepared by generate for the one-token path
        model_kwargs.pop(name, None)
    unknown = [name for name, value in model_kwargs.items() if value is not None]
    if unknown:
        raise _unsupported(f"the model inputs {unknown}", group_size)
    mask = torch.ones_like(input_ids) if mask is None else mask.long()
    longest = int(mask.sum(1).max()) + generation_config.max_length - input_ids.shape[1]
    if longest > config.max_sequence_length:
        raise ValueError(
            f"prompt + new tokens ({longest}) exceeds max_sequence_length={config.max_sequence_length} "
            f"(max_position_embeddings={config.max_position_embeddings}, extended only by a RoPE scaling); "
            "lower max_new_tokens / max_length or shorten the prompt."
        )
    return cache, mask


class _TokenChooser:
    """Chooses and appends one token per sequence at a time, as transformers' ``_sample`` does: the logits processors
    and stopping criteria see the sequence so far, finished sequences get padding, the streamer and the
    ``scores`` / ``logits`` of ``return_dict_in_generate`` get every token."""

    def __init__(
        self,
        input_ids: torch.LongTensor,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        generation_config: GenerationConfig,
        streamer: BaseStreamer | None,
        generator: torch.Generator | None,
    ):
        self.input_ids = input_ids
        self.return_dict_in_generate = generation_config.return_dict_in_generate
        self.logits_processor, self.stopping_criteria = logits_processor, stopping_criteria
        self.do_sample, self.streamer, self.generator = generation_config.do_sample, streamer, generator
        self.pad_token_id = generation_config._pad_token_tensor
        self.has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        keep = generation_config.return_dict_in_generate
        self.scores = () if keep and generation_config.output_scores else None
        self.raw_logits = () if keep and generation_config.output_logits else None
        self.unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)

    def append(self, next_logits: torch.Tensor) -> bool:
        """Append the token chosen from ``next_logits`` ``(batch, vocab)``; True when every sequence has finished."""
        next_scores = self.logits_processor(self.input_ids, next_logits)
        if self.scores is not None:
            self.scores += (next_scores,)
        if self.raw_logits is not None:
            self.raw_logits += (next_logits,)
        if self.do_sample:
            next_tokens = torch.multinomial(next_scores.softmax(-1), 1, generator=self.generator).squeeze(1)
        else:
            next_tokens = next_scores.argmax(-1)
        if self.has_eos_stopping_criteria:  # finished sequences get padding
            next_tokens = next_tokens * self.unfinished + self.pad_token_id * (1 - self.unfinished)
        self.input_ids = torch.cat([self.input_ids, next_tokens[:, None]], dim=-1)
        if self.streamer is not None:
            self.streamer.put(next_tokens.cpu())
        self.unfinished = self.unfinished & ~self.stopping_criteria(self.input_ids, self.scores)
        return int(self.unfinished.max()) == 0

    def finish(self, cache: DynamicCache | None) -> GenerateDecoderOnlyOutput | torch.LongTensor:
        """End the stream; the sequences, or ``generate``'s output object with ``return_dict_in_generate``."""
        if self.streamer is not None:
            self.streamer.end()
        if not self.return_dict_in_generate:
            return self.input_ids
        return GenerateDecoderOnlyOutput(
            sequences=self.input_ids, scores=self.scores, logits=self.raw_logits, **{CACHE_FIELD: cache}
        )


@torch.no_grad()
def unmasking_generate(
    model,
    input_ids: torch.LongTensor,
    max_new_tokens: int = 32,
    strategy: Literal["left_to_right", "confidence"] = "left_to_right",
    tokens_per_step: int = 1,
    mask_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Generate from a masked (bidirectional) checkpoint by filling appended ``[MASK]`` tokens.

    ``strategy="left_to_right"`` fills the leftmost ``tokens_per_step`` masks per pass (with 1, each token is
    predicted from the prefix followed by masks, the paper's Eq. 2 setting); ``"confidence"`` fills the
    masks whose top probability is highest first (MaskGIT-style parallel decoding). Prompts must not be padded.
    """
    backbone, head = _backbone_and_head(model)
    config = backbone.config
    mask_token_id = config.mask_token_id if mask_token_id is None else mask_token_id
    if mask_token_id is None:
        raise ValueError("The config has no mask_token_id; pass mask_token_id=.")
    if strategy not in ("left_to_right", "confidence"):
        raise ValueError(f"strategy must be 'left_to_right' or 'confidence', got {strategy!r}.")
    if tokens_per_step < 1 or max_new_tokens < 1:
        raise ValueError("tokens_per_step and max_new_tokens must be >= 1.")
    batch_size, prompt_length = input_ids.shape
    masks = torch.full((batch_size, max_new_tokens), mask_token_id, dtype=input_ids.dtype, device=input_ids.device)
    sequences = torch.cat([input_ids, masks], dim=1)
    unfilled = torch.ones(batch_size, max_new_tokens, dtype=torch.bool, device=input_ids.device)
    rows = torch.arange(batch_size, device=input_ids.device)[:, None]
    for _ in range(-(-max_new_tokens // tokens_per_step)):
        hidden = backbone(sequences, use_cache=False).last_hidden_state[:, prompt_length:]
        logits = head(hidden).float()
        logits[..., mask_token_id] = float("-inf")  # a filled position must not be [MASK] again
        if strategy == "left_to_right":
            score = -torch.arange(max_new_tokens, device=sequences.device, dtype=torch.float).expand(batch_size, -1)
        else:
            score = logits.softmax(-1).amax(-1)
        k = min(tokens_per_step, int(unfilled.sum(1).max()))
        chosen = score.masked_fill(~unfilled, float("-inf")).topk(k, dim=1).indices
        tokens = select_tokens(logits[rows, chosen], do_sample, temperature, top_k, top_p, generator)
        sequences[rows, prompt_length + chosen] = tokens
        unfilled[rows, chosen] = False
    return sequences
