"""Collator statistics and contracts: the objectives live here, so they are checked over many batches."""

from __future__ import annotations

import math

import pytest
import torch

from hf_genssl import DataCollatorForSemiAutoregressiveLM, DataCollatorForVariableLengthMasking
from hf_genssl.collators import (
    consecutive_groups,
    group_sizes_tensor,
    random_positions,
    random_ranks,
    right_pad,
    seeded_generator,
)


def sequences(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(10, 500, (k,), generator=g).tolist() for k in lengths]


def group_sizes(gids: torch.Tensor, valid: torch.Tensor) -> list[list[int]]:
    """Sizes of the consecutive groups after BOS, per row, computed with a plain loop."""
    out = []
    for row, ok in zip(gids.tolist(), valid.tolist(), strict=True):
        row = [g for g, v in zip(row, ok, strict=True) if v][1:]
        sizes, previous = [], None
        for g in row:
            if g == previous:
                sizes[-1] += 1
            else:
                assert previous is None or g == previous + 1, "groups must be consecutive and increasing"
                sizes.append(1)
            previous = g
        out.append(sizes)
    return out


class TestSemiAutoregressive:
    def make(self, **kw):
        return DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, seed=0, **kw)

    @pytest.mark.parametrize("g", [1, 2, 3, 5])
    def test_fixed_group_size(self, g):
        batch = self.make(group_size=g)(sequences(32, 1, 41))
        valid = batch["attention_mask"].bool()
        assert torch.all(batch["group_ids"][:, 0] == 0)
        for sizes in group_sizes(batch["group_ids"], valid):
            assert all(s == g for s in sizes[:-1]) and 1 <= sizes[-1] <= g

    def test_sizes_drawn_from_a_set(self):
        batch = self.make(group_size=[1, 4])(sequences(64, 30, 60))
        all_sizes = [s for row in group_sizes(batch["group_ids"], batch["attention_mask"].bool()) for s in row[:-1]]
        assert set(all_sizes) == {1, 4}
        assert 0.4 < sum(s == 1 for s in all_sizes) / len(all_sizes) < 0.6  # each size drawn with prob 1/2

    @pytest.mark.parametrize("group_size", [1, 2, 5, [1, 4], "random"])
    def test_bos_is_alone_in_group_zero(self, group_size):
        """Group 0 is the BOS and nothing else: every later token (padding included) has a group id >= 1."""
        batch = self.make(group_size=group_size)(sequences(32, 1, 41))
        is_zero = batch["group_ids"] == 0
        assert is_zero[:, 0].all()
        assert not is_zero[:, 1:].any(), batch["group_ids"][is_zero[:, 1:].any(1)]

    def test_random_cut_points(self):
        batch = self.make(group_size="random", cut_probability=0.25)(sequences(64, 100, 120))
        sizes = [s for row in group_sizes(batch["group_ids"], batch["attention_mask"].bool()) for s in row[:-1]]
        assert abs(sum(sizes) / len(sizes) - 4.0) < 0.4  # geometric with mean 1/p

    def test_bos_labels_and_padding(self):
        batch = self.make(group_size=2)([[5, 6, 7], [1, 8], [9]])
        assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 0, 0], [1, 9, 0, 0]]  # BOS added once
        assert batch["labels"].tolist() == [[-100, 5, 6, 7], [-100, 8, -100, -100], [-100, 9, -100, -100]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
        # dict input and odd lengths, max_length truncation keeps the BOS
        batch = self.make(group_size=2, max_length=4)([{"input_ids": list(range(10, 17))}])
        assert batch["input_ids"].tolist() == [[1, 10, 11, 12]]

    def test_seeded(self):
        data = sequences(8, 5, 30)
        a = self.make(group_size="random")(data)["group_ids"]
        b = self.make(group_size="random")(data)["group_ids"]
        assert torch.equal(a, b)

    @pytest.mark.parametrize("bad", [0, -1, [2, 0], "sometimes", []])
    def test_bad_group_size(self, bad):
        with pytest.raises(ValueError, match="group_size"):
            self.make(group_size=bad)

    def test_tokenizer_without_bos(self, tokenizer):
        class NoBos:
            bos_token_id = None
            pad_token_id = 0

        with pytest.raises(ValueError, match="BOS"):
            DataCollatorForSemiAutoregressiveLM(tokenizer=NoBos())
        collator = DataCollatorForSemiAutoregressiveLM(tokenizer=tokenizer)  # the built-in tokenizer has everything
        batch = collator([[7, 8, 9], [7]])
        assert batch["input_ids"].tolist() == [[tokenizer.bos_token_id, 7, 8, 9], [tokenizer.bos_token_id, 7] + 2 * [
            tokenizer.pad_token_id]]


class TestVariableLengthMasking:
    def make(self, **kw):
        kw.setdefault("seed", 0)
        return DataCollatorForVariableLengthMasking(
            bos_token_id=1, pad_token_id=0, mask_token_id=4, vocab_size=512, **kw
        )

    @pytest.mark.parametrize("stratified", [True, False])
    @pytest.mark.parametrize("lo,hi", [(0.1, 0.9), (0.15, 0.5)])
    def test_ratio_statistics(self, lo, hi, stratified):
        collator = self.make(mask_ratio_range=(lo, hi), stratified=stratified)
        ratios = []
        for step in range(40):
            batch = collator(sequences(16, 200, 200, seed=step))  # long rows: rounding is negligible
            targets = (batch["labels"] != -100).sum(1).float()
            ratios.append(targets / 200)
        ratios = torch.cat(ratios)
        assert abs(ratios.mean().item() - (lo + hi) / 2) < 0.02
        assert ratios.min().item() < lo + 0.05 and ratios.max().item() > hi - 0.05  # covers the range
        assert ratios.min().item() >= lo - 0.01 and ratios.max().item() <= hi + 0.01

    def test_stratified_batches_cover_the_range(self):
        ratios = self.make(mask_ratio_range=(0.1, 0.9)).draw_ratios(8)
        bins = ((ratios - 0.1) / 0.8 * 8).long().clamp(max=7)
        assert sorted(bins.tolist()) == list(range(8))  # one draw in each eighth of the range

    def test_fixed_ratio_is_bert(self):
        batch = self.make(mask_ratio_range=(0.15, 0.15))(sequences(8, 100, 100))
        assert ((batch["labels"] != -100).sum(1) == 15).all()

    @pytest.mark.parametrize("ratio", [0.15, 0.3, 0.62])
    def test_exactly_round_r_n_targets_per_row(self, ratio):
        """Every row of n maskable tokens gets exactly max(1, round(r * n)) targets, for each n from 1 to 60 (lengths
        whose r * n is within 0.01 of a half are left out: float32 may round those either way)."""
        lengths = [n for n in range(1, 61) if abs(ratio * n % 1 - 0.5) > 0.01]
        batch = self.make(mask_ratio_range=(ratio, ratio))([list(range(10, 10 + n)) for n in lengths])
        targets = (batch["labels"] != -100).sum(1).tolist()
        assert targets == [max(1, math.floor(ratio * n + 0.5)) for n in lengths]

    def test_specials_and_padding_never_masked_and_one_target_minimum(self):
        data = [[1, 2, 7], [8], [9, 10, 11, 12, 13, 14, 15]]  # 2 = eos (special), short rows
        collator = DataCollatorForVariableLengthMasking(
            bos_token_id=1, pad_token_id=0, mask_token_id=4, vocab_size=512, mask_ratio_range=(0.01, 0.02), seed=0
        )
        collator._special_ids = torch.tensor([0, 1, 2, 4])
        for _ in range(20):
            batch = collator(data)
            targets = batch["labels"] != -100
            assert (targets.sum(1) >= 1).all()
            assert not targets[:, 0].any()  # BOS
            assert not targets[batch["attention_mask"] == 0].any()
            assert not targets[0, 1]  # the EOS (row 0 already starts with BOS: [1, 2, 7])

    def test_replacement_proportions(self):
        collator = self.make(mask_ratio_range=(0.5, 0.5))
        data = sequences(64, 100, 100)
        batch = collator(data)
        originals = torch.tensor([[1] + row for row in data])
        targets = batch["labels"] != -100
        assert torch.equal(batch["labels"][targets], originals[targets])
        n = targets.sum().item()
        masked = (batch["input_ids"][targets] == 4).sum().item() / n
        kept = (batch["input_ids"][targets] == originals[targets]).sum().item() / n
        assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # 10% random (a few collide with the original)
        assert torch.equal(batch["input_ids"][~targets], originals[~targets])

    def test_two_stream_variant(self):
        batch = self.make(mask_ratio_range=(0.3, 0.3), return_group_ids=True)(sequences(4, 50, 50))
        targets = batch["labels"] != -100
        assert torch.equal(batch["group_ids"], targets.long())
        assert not (batch["input_ids"] == 4).any()  # originals kept; the query stream hides them

    @pytest.mark.parametrize("bad", [(0.0, 0.5), (0.6, 0.4), (0.5, 1.2), (-0.1, 0.2)])
    def test_bad_ratio_range(self, bad):
        with pytest.raises(ValueError, match="mask_ratio_range"):
            self.make(mask_ratio_range=bad)

    def test_tokenizer_without_mask_token(self):
        class NoMask:
            bos_token_id, pad_token_id, mask_token_id = 1, 0, None

        with pytest.raises(ValueError, match="mask token"):
            DataCollatorForVariableLengthMasking(tokenizer=NoMask())

    def test_real_tokenizer(self, tokenizer, texts):
        collator = DataCollatorForVariableLengthMasking(tokenizer=tokenizer, mask_ratio_range=(0.2, 0.8), seed=0)
        batch = collator([tokenizer(t)["input_ids"] for t in texts[:8]])
        assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()
        assert (batch["input_ids"] == tokenizer.mask_token_id).any()


class TestSharedDraws:
    """The draws the text and image collators (and ``vision_eval.hide_patches``, ``perplexity``) share, each checked
    against a plain-Python computation or exact counting over many rows."""

    def test_random_positions_exact_counts_only_allowed_and_uniform(self):
        batch, length = 4000, 6
        allowed = torch.ones(batch, length, dtype=torch.bool)
        allowed[:, [0, 4]] = False  # e.g. BOS and a special token: never chosen
        counts = torch.tensor([1, 2, 3, 4]).repeat(batch // 4)
        chosen = random_positions(counts, batch, length, torch.Generator().manual_seed(0), allowed=allowed)
        assert chosen.dtype == torch.bool
        assert torch.equal(chosen.sum(1), counts)
        assert not (chosen & ~allowed).any()
        # Uniform among the 4 allowed positions: each is chosen with probability k / 4 in rows of count k.
        for k in (1, 2, 3):
            frequency = chosen[counts == k][:, [1, 2, 3, 5]].float().mean(0)
            assert torch.allclose(frequency, torch.full((4,), k / 4), atol=0.05), (k, frequency)
        # Every subset of a given size turns up (not only one fixed pattern): 6 subsets of 2 out of 4.
        subsets = {tuple(row.nonzero().flatten().tolist()) for row in chosen[counts == 2]}
        assert len(subsets) == math.comb(4, 2)

    def test_random_positions_with_one_count_for_all_rows(self):
        chosen = random_positions(3, 50, 7, torch.Generator().manual_seed(1))
        assert chosen.sum(1).tolist() == [3] * 50

    def test_random_ranks_are_permutations_with_allowed_positions_first(self):
        allowed = torch.tensor([[True, False, True, True, False]] * 200)
        ranks = random_ranks(200, 5, torch.Generator().manual_seed(0), allowed)
        for row in ranks.tolist():
            assert sorted(row) == [0, 1, 2, 3, 4]
            assert sorted(row[i] for i in (0, 2, 3)) == [0, 1, 2]  # the allowed ones take the first places
        assert len({tuple(row) for row in ranks[:, [0, 2, 3]].tolist()}) == 6  # all 3! orders occur

    def test_consecutive_groups_of_one_size(self):
        groups = consecutive_groups(torch.tensor([3]), 2, 8, torch.Generator())
        assert groups.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2]] * 2

    def test_consecutive_groups_with_sizes_drawn_from_a_set(self):
        groups = consecutive_groups(torch.tensor([1, 3]), 500, 40, torch.Generator().manual_seed(0))
        sizes = []
        for row in groups.tolist():  # consecutive ids 0, 1, 2, ... with a size per group, counted by hand
            assert row[0] == 0 and all(b - a in (0, 1) for a, b in zip(row, row[1:], strict=False))
            counted = [row.count(g) for g in range(row[-1] + 1)]
            sizes.extend(counted[:-1])  # the last group may be cut short by the end of the row
        assert set(sizes) == {1, 3}
        assert 0.45 < sizes.count(1) / len(sizes) < 0.55  # each size drawn with probability 1/2

    @pytest.mark.parametrize("bad", [0, -2, [1, 0], [], [1.5]])
    def test_group_sizes_tensor_rejects_bad_sizes(self, bad):
        with pytest.raises(ValueError, match="group_size must be >= 1 segments"):
            group_sizes_tensor(bad, unit=" segments")

    def test_right_pad_by_hand(self):
        rows = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
        ids, mask = right_pad(rows, pad_id=0)
        assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
        assert mask.dtype == torch.long and mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
        ids, mask = right_pad(rows, pad_id=-1, pad_to_multiple_of=4)
        assert ids.tolist() == [[5, 6, 7, -1], [8, -1, -1, -1], [9, 10, -1, -1]]
        assert mask.sum(1).tolist() == [3, 1, 2]

    def test_seeded_generator(self):
        assert torch.equal(torch.rand(5, generator=seeded_generator(3)), torch.rand(5, generator=seeded_generator(3)))
        # Unseeded: two generators draw differently (from OS entropy), and the global RNG is left alone.
        state = torch.random.get_rng_state()
        assert not torch.equal(torch.rand(5, generator=seeded_generator(None)),
                               torch.rand(5, generator=seeded_generator(None)))
        assert torch.equal(torch.random.get_rng_state(), state)

    @pytest.mark.parametrize(("ratio", "n", "expected"), [(0.25, 64, 16), (0.1, 4, 1), (0.9, 4, 3), (0.5, 7, 4)])
    def test_hide_patches_counts_and_seed(self, ratio, n, expected):
        """vision_eval's hidden patches: ``round(r * n)`` clamped to [1, n - 1] per image, fixed by the seed."""
        from hf_genssl.vision_eval import hide_patches

        hidden = hide_patches(200, n, ratio, seed=3)
        assert hidden.sum(1).tolist() == [expected] * 200
        assert torch.equal(hidden, hide_patches(200, n, ratio, seed=3))
        assert len({tuple(row) for row in hidden.tolist()}) > 1  # each image draws its own patches
