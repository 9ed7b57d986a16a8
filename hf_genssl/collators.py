"""Data collators: this is where the objectives live.

A collator decides what is predicted from what by returning tensors; the model applies one visibility
rule to them (see ``models/two_stream_attention.py``). Adding an objective means adding a collator here.

* :class:`DataCollatorForSemiAutoregressiveLM` - ``group_ids`` for (semi-)autoregressive two-stream
  pretraining: consecutive groups, every token of group k predicted in parallel from groups < k.
  ``group_size=1`` is plain autoregressive pretraining on the same model.
* :class:`DataCollatorForVariableLengthMasking` - masked LM whose mask ratio is drawn per sample from a
  range; ``lo == hi`` is the fixed-ratio BERT baseline. ``return_group_ids=True`` gives the same masks as
  two streams (unmasked = group 0, masked = group 1, MPNet style) instead of ``[MASK]`` replacement.

Both are vectorised in torch (no Python loop over tokens), accept any sequence length, and are seeded.

The draws they share with the image collators (``image_collators.py``) and the evaluation code are the
functions at the top: :func:`seeded_generator`, :func:`draw_mask_ratios`, :func:`random_positions` (exactly k
random positions per row), :func:`consecutive_groups` with :func:`group_sizes_tensor`, and :func:`right_pad`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DataCollatorForSemiAutoregressiveLM",
    "DataCollatorForVariableLengthMasking",
    "consecutive_groups",
    "draw_mask_ratios",
    "group_sizes_tensor",
    "random_positions",
    "random_ranks",
    "right_pad",
    "seeded_generator",
]

Example = Sequence[int] | torch.Tensor | Mapping[str, Any]


# ------------------------------------------------------------------------------------------------------------
# Draws shared by the text collators, the image collators (image_collators.py) and the evaluation code that
# masks the same way (vision_eval.hide_patches, perplexity). One place, so that "exactly k random positions"
# or "groups of sizes drawn from a set" mean the same thing for text and images.
# ------------------------------------------------------------------------------------------------------------


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU ``torch.Generator`` of a collator's own, seeded with ``seed`` (from OS entropy when ``None``).

    Why its own: a collator's draws (group sizes, cut points, masks) then neither depend on nor disturb the global
    RNG that dropout and initialisation use, and pretraining can re-seed it per batch (``_BatchSeededCollator``).
    """
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def draw_mask_ratios(
    batch_size: int, ratio_range: tuple[float, float], stratified: bool, generator: torch.Generator
) -> torch.Tensor:
    """One mask ratio per sample, uniform in ``ratio_range``.

    Stratified (as MDLM does): one uniform offset, then evenly spaced points shuffled across the batch, so
    every batch covers the whole range; otherwise i.i.d. uniform draws. Shared by the text and image collators.
    """
    lo, hi = ratio_range
    if stratified:
        offset = torch.rand(1, generator=generator)
        u = ((offset + torch.arange(batch_size)) / batch_size)[torch.randperm(batch_size, generator=generator)]
    else:
        u = torch.rand(batch_size, generator=generator)
    return lo + (hi - lo) * u


def random_ranks(
    batch_size: int, length: int, generator: torch.Generator, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """``(batch, length)`` long: each position's place (0 first) in a uniformly random order of its row.

    Each row is an independent random permutation of ``0 .. length - 1``. With ``allowed`` (bool, same shape), the
    allowed positions take the first places, in random order, and the others come after them.
    """
    scores = torch.rand(batch_size, length, generator=generator)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, 2.0)  # above every uniform draw: placed last
    return scores.argsort(1).argsort(1)


def random_positions(
    counts: torch.Tensor | int,
    batch_size: int,
    length: int,
    generator: torch.Generator,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(batch, length)`` bool with exactly ``counts[b]`` (or ``counts``, the same for every row) ``True`` per row.

    The positions are a uniformly random subset of the row (of its ``allowed`` positions when given; a count must
    not exceed them). Vectorised: rank random scores per row and keep the first ``counts``; no loop over rows.
    """
    counts = torch.as_tensor(counts)
    ranks = random_ranks(batch_size, length, generator, allowed)
    return ranks < (counts[:, None] if counts.ndim else counts)


def group_sizes_tensor(group_size: int | Sequence[int], unit: str = "") -> torch.Tensor:
    """``group_size`` (one int, or ints to draw each group's size from) as a long tensor, checked.

    ``unit`` names what a group counts in error messages (``" segments"`` for images).
    """
    sizes = [group_size] if isinstance(group_size, int) else list(group_size)
    if not sizes or any((not isinstance(s, int)) or s < 1 for s in sizes):
        raise ValueError(
            f"group_size must be >= 1{unit} (1 = autoregressive, 2 = the paper's setting), got {group_size!r}."
        )
    return torch.tensor(sizes, dtype=torch.long)


def consecutive_groups(sizes: torch.Tensor, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, length)`` long: places ``0 .. length - 1`` cut into consecutive groups numbered 0, 1, 2, ...

    With one size every group has it (the last may be shorter); with several, each group's size is drawn uniformly
    from ``sizes``, independently per group and per row. Shared by the text collator (places = tokens after BOS)
    and the image collator (places = segments in their visiting order).
    """
    if len(sizes) == 1:
        return (torch.arange(length) // int(sizes[0])).expand(batch_size, length)
    # group k ends (exclusive) at cumsum(sizes)[k]; one drawn size per place is always enough groups
    draws = torch.randint(len(sizes), (batch_size, length), generator=generator)
    ends = sizes[draws].cumsum(1)
    places = torch.arange(length).expand(batch_size, length).contiguous()
    return torch.searchsorted(ends, places, right=True)


def right_pad(
    sequences: Sequence[torch.Tensor], pad_id: int, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads 1-D long tensors to the longest one: ``(input_ids, attention_mask)``, both ``(batch, length)`` long.

    The length is rounded up to a multiple of ``pad_to_multiple_of`` when given. Shared by the collators and
    prefix perplexity (``perplexity.py``), which batch token rows the same way.
    """
    lengths = torch.tensor([len(s) for s in sequences])
    length = int(lengths.max())
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.arange(length)[None, :] < lengths[:, None]
    input_ids[attention_mask] = torch.cat(list(sequences))
    return input_ids, attention_mask.long()


@dataclass
class _TokenBatcher:
    """Shared batching: ids from lists or dicts, a BOS in front, truncation, right padding."""

    tokenizer: Any = None
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    return_tensors: str = "pt"

    def _resolve_special_tokens(self) -> None:
        if self.bos_token_id is None:
            self.bos_token_id = getattr(self.tokenizer, "bos_token_id", None)
        if self.bos_token_id is None:
            raise ValueError(
                "The tokenizer has no BOS token; the models need one as the always-visible first token. "
                "Set tokenizer.bos_token (hf_genssl.train_tokenizer makes '<s>') or pass bos_token_id=."
            )
        if self.pad_token_id is None:
            self.pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        if self.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token or pass pad_token_id=.")
        if self.return_tensors != "pt":
            raise ValueError(f"Only return_tensors='pt' is supported, got {self.return_tensors!r}.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (BOS plus one token), got {self.max_length}.")
        self._generator = seeded_generator(self.seed)

    def _ids(self, example: Example) -> list[int]:
        if isinstance(example, Mapping):
            if "input_ids" not in example:
                raise ValueError(
                    f"Examples must be token id lists or dicts with 'input_ids'; got keys {list(example)}."
                )
            example = example["input_ids"]
        ids = example.tolist() if isinstance(example, torch.Tensor) else list(example)
        if not ids or ids[0] != self.bos_token_id:
            ids = [self.bos_token_id, *ids]
        if self.max_length is not None:
            ids = ids[: self.max_length]
        return ids

    def _pad(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest sequence (rounded up to ``pad_to_multiple_of``)."""
        if len(examples) == 0:
            raise ValueError("Cannot collate an empty batch.")
        sequences = [torch.tensor(self._ids(e), dtype=torch.long) for e in examples]
        return right_pad(sequences, self.pad_token_id, self.pad_to_multiple_of)


@dataclass
class DataCollatorForSemiAutoregressiveLM(_TokenBatcher):
    """Batches token sequences for (semi-)autoregressive two-stream pretraining.

    Returns ``input_ids``, ``attention_mask``, ``group_ids`` and ``labels`` (all ``batch x seq``). The BOS token
    sits alone in group 0 and is never a target; every other real token is a target of the query stream,
    predicted from the groups before its own. Padding is never a target.

    Args:
        tokenizer: Supplies ``bos_token_id`` and ``pad_token_id`` (or pass them directly).
        group_size: ``int`` g: consecutive groups of g tokens (``1`` = autoregressive, ``2`` = the paper's
            diversity-enhanced setting); a sequence of ints: each group's size drawn uniformly from it;
            ``"random"``: random cut points, a cut after each token with probability ``cut_probability``.
        cut_probability: Probability of a group boundary between two tokens for ``group_size="random"``
            (mean group size ``1 / cut_probability``).
        max_length: Truncate sequences (BOS included) to this many tokens.
        seed: Seeds the collator's own generator (group sizes / cut points).

    Example:
        >>> collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2)
        >>> collator([[5, 6, 7], [8, 9]])["group_ids"].tolist()
        [[0, 1, 1, 2], [0, 1, 1, 4]]
    """

    group_size: int | Sequence[int] | str = 2
    cut_probability: float = 0.5

    def __post_init__(self) -> None:
        self._resolve_special_tokens()
        if isinstance(self.group_size, str):
            if self.group_size != "random":
                raise ValueError(f"group_size must be an int, a list of ints or 'random', got {self.group_size!r}.")
            if not 0.0 < self.cut_probability <= 1.0:
                raise ValueError(f"cut_probability must be in (0, 1], got {self.cut_probability}.")
            self._sizes = None
        else:
            self._sizes = group_sizes_tensor(self.group_size)

    def group_ids_for(self, batch_size: int, length: int) -> torch.Tensor:
        """Group ids ``(batch, length)``: 0 for the BOS at position 0, then consecutive groups 1, 2, ..."""
        n = length - 1  # tokens after BOS
        if n <= 0:
            return torch.zeros(batch_size, length, dtype=torch.long)
        if self._sizes is None:  # random cut points between consecutive tokens
            cuts = torch.rand(batch_size, n - 1, generator=self._generator) < self.cut_probability
            after_bos = 1 + torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), cuts.long().cumsum(1)], dim=1)
        else:
            after_bos = 1 + consecutive_groups(self._sizes, batch_size, n, self._generator)
        return torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), after_bos], dim=1)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self._pad(examples)
        batch_size, length = input_ids.shape
        group_ids = self.group_ids_for(batch_size, length)
        group_ids = group_ids.masked_fill(attention_mask == 0, length)  # padding: after everything, never seen
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, 0] = -100  # BOS is context only
        return {"input_ids": input_ids, "attention_mask": attention_mask, "group_ids": group_ids, "labels": labels}


@dataclass
class DataCollatorForVariableLengthMasking(_TokenBatcher):
    """Masked-LM batches whose mask ratio is drawn per sample from ``mask_ratio_range``.

    Each sample draws a ratio r in ``[lo, hi]`` and exactly ``max(1, round(r * n))`` of its n maskable tokens
    become targets (special tokens and padding never are), so every sample has at least one target.
    ``lo == hi`` is the fixed-ratio baseline (BERT's 0.15, or 0.3). Why a range: a model trained on one ratio
    only ever saw contexts of one relative length, while generation from a prefix of length t needs the
    prediction of token t from t visible tokens and everything after masked (the paper's Eq. 2).

    The default range, (0.15, 0.5), is the better of the two variable ranges that ``genssl reproduce`` compares
    (the paper's own range is not in the text we have), by validation prefix perplexity at its default scale: the
    README's "Default scale" section says how it was chosen, ``results/default/RESULTS.md`` has the numbers, and a
    test keeps this default equal to the best committed cell. It is not better than a fixed ratio there: a fixed
    0.5 (``mask_ratio_range=(0.5, 0.5)``) had the lower test-split perplexity at both scales (not significant after
    the Holm correction; README "Reading the results").

    Args:
        tokenizer: Supplies ``mask_token_id``, ``bos_token_id``, ``pad_token_id``, special ids, vocabulary size.
        mask_ratio_range: ``(lo, hi)`` with ``0 < lo <= hi <= 1``.
        stratified: Spread the batch's ratios evenly over the range (one uniform offset, then a shuffle; as
            MDLM does) so every batch covers the range; otherwise i.i.d. uniform draws.
        mask_replace_prob: Fraction of targets replaced by ``[MASK]`` (BERT: 0.8).
        random_replace_prob: Fraction of targets replaced by a random token (BERT: 0.1); the rest keep their token.
        return_group_ids: Instead of replacing tokens, return ``group_ids`` (unmasked 0, targets 1) for the
            two-stream model: the query stream then predicts each target from the unmasked tokens only.
        seed: Seeds the collator's own generator.
    """

    mask_ratio_range: tuple[float, float] = (0.15, 0.5)
    stratified: bool = True
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    return_group_ids: bool = False
    mask_token_id: int | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        self._resolve_special_tokens()
        lo, hi = self.mask_ratio_range
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(
                f"mask_ratio_range must satisfy 0 < lo <= hi <= 1, got {self.mask_ratio_range}; "
                "use (0.15, 0.15) for BERT's fixed ratio or e.g. (0.15, 0.5) for a variable one."
            )
        if self.mask_token_id is None:
            self.mask_token_id = getattr(self.tokenizer, "mask_token_id", None)
        if self.mask_token_id is None and not self.return_group_ids:
            raise ValueError(
                "The tokenizer has no mask token; set tokenizer.mask_token (hf_genssl.train_tokenizer makes "
                "'<mask>') or pass mask_token_id=."
            )
        if not (0.0 <= self.mask_replace_prob and 0.0 <= self.random_replace_prob):
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0.")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1.")
        if self.vocab_size is None and self.tokenizer is not None:
            self.vocab_size = len(self.tokenizer)
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        special |= {i for i in (self.bos_token_id, self.pad_token_id, self.mask_token_id) if i is not None}
        self._special_ids = torch.tensor(sorted(special), dtype=torch.long)

    def draw_ratios(self, batch_size: int) -> torch.Tensor:
        """One mask ratio per sample in ``[lo, hi]``."""
        return draw_mask_ratios(batch_size, self.mask_ratio_range, self.stratified, self._generator)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self._pad(examples)
        batch_size, length = input_ids.shape
        maskable = attention_mask.bool() & ~torch.isin(input_ids, self._special_ids)
        n_maskable = maskable.sum(1)
        if bool((n_maskable == 0).any()):
            raise ValueError("A sample has no maskable token (only special tokens); drop empty texts before collating.")

        ratios = self.draw_ratios(batch_size)
        n_targets = (ratios * n_maskable).round().long().clamp(min=1)
        n_targets = torch.minimum(n_targets, n_maskable)
        targets = random_positions(n_targets, batch_size, length, self._generator, allowed=maskable)

        labels = input_ids.masked_fill(~targets, -100)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.return_group_ids:
            batch["group_ids"] = targets.long()
            return batch

        u = torch.rand(batch_size, length, generator=self._generator)
        to_mask = targets & (u < self.mask_replace_prob)
        to_random = targets & (u >= self.mask_replace_prob) & (u < self.mask_replace_prob + self.random_replace_prob)
        masked = input_ids.masked_fill(to_mask, self.mask_token_id)
        if bool(to_random.any()):
            if self.vocab_size is None:
                raise ValueError("random_replace_prob > 0 needs vocab_size= (or a tokenizer).")
            random_tokens = torch.randint(self.vocab_size, (batch_size, length), generator=self._generator)
            masked = torch.where(to_random, random_tokens, masked)
        batch["input_ids"] = masked
        return batch
