"""Group-parallel decoding and iterative unmasking."""

from __future__ import annotations

import pytest
import torch

from hf_genssl import GenSSLForCausalLM, GenSSLForMaskedLM
from hf_genssl.decoding import group_parallel_generate
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def causal():
    torch.manual_seed(0)
    return GenSSLForCausalLM(tiny_config()).eval()


def test_group_size_one_equals_ordinary_greedy(causal):
    prompt = torch.tensor([[1, 17, 42, 99, 7], [1, 3, 250, 8, 9]])
    ordinary = causal.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    grouped = causal.generate(prompt, max_new_tokens=20, group_size=1, eos_token_id=None)
    assert torch.equal(ordinary, grouped)


def test_group_size_one_with_left_padding(causal):
    ids = torch.tensor([[1, 17, 42, 99, 7], [0, 0, 1, 23, 8]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    ordinary = causal.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False, pad_token_id=0,
                               eos_token_id=None)
    grouped = causal.generate(ids, attention_mask=mask, max_new_tokens=9, group_size=1, eos_token_id=None)
    assert torch.equal(ordinary, grouped)


def test_group_of_two_predicts_only_from_earlier_groups(causal):
    """Every emitted token was predicted from earlier groups only: re-scoring the output with one two-stream pass
    whose groups are [prompt tokens one by one, then pairs] gives exactly the emitted tokens, and replacing a
    token's group-mate does not change that token's prediction (perturbation)."""
    prompt = torch.tensor([[1, 17, 42, 99, 7]])
    out = group_parallel_generate(causal, prompt, max_new_tokens=8, group_size=2, eos_token_id=None)
    P = prompt.shape[1]
    gids = torch.cat([torch.arange(P), P + torch.arange(8) // 2])[None]
    with torch.no_grad():
        hidden = causal.model(out, group_ids=gids, return_content_stream=False).query_hidden_state
        predicted = causal.lm_head(hidden).argmax(-1)
    assert torch.equal(predicted[0, P:], out[0, P:])
    for j in range(P, P + 8):
        mate = j + 1 if (j - P) % 2 == 0 else j - 1
        perturbed = out.clone()
        perturbed[0, mate] = (perturbed[0, mate] + 1) % 512
        with torch.no_grad():
            hidden = causal.model(perturbed, group_ids=gids, return_content_stream=False).query_hidden_state
        assert causal.lm_head(hidden)[0, j].argmax() == out[0, j]


def test_group_parallel_uses_fewer_forward_passes(causal):
    calls = []
    handle = causal.model.register_forward_hook(lambda *a: calls.append(1))
    causal.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=12, group_size=4, eos_token_id=None)
    handle.remove()
    assert len(calls) == 3


def test_eos_stops_and_pads():
    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config()).eval()
    prompt = torch.tensor([[1, 5, 6]])
    free = group_parallel_generate(model, prompt, max_new_tokens=6, group_size=2, eos_token_id=None)
    eos = int(free[0, 3])  # the first generated token: pretend it is EOS
    out = group_parallel_generate(model, prompt, max_new_tokens=6, group_size=2, eos_token_id=eos, pad_token_id=0)
    assert out.shape[1] == 5  # one group of two, then stop
    assert out[0, 3] == eos and out[0, 4] == 0  # what the group predicted after EOS becomes padding


def test_unmasking_generation():
    torch.manual_seed(0)
    model = GenSSLForMaskedLM(tiny_config(content_attention="bidirectional")).eval()
    prompt = torch.tensor([[1, 17, 42]])
    for strategy, per_step in [("left_to_right", 1), ("confidence", 3)]:
        out = model.generate(prompt, max_new_tokens=7, strategy=strategy, tokens_per_step=per_step)
        assert out.shape == (1, 10) and not (out == 4).any()
    # left to right, one at a time: token t is the argmax (never [MASK]) given prefix + masks, computed naively
    out = model.generate(prompt, max_new_tokens=4)
    seq = torch.cat([prompt, torch.full((1, 4), 4)], dim=1)
    for t in range(3, 7):
        with torch.no_grad():
            logits = model(seq).logits[0, t]
        logits[4] = float("-inf")
        seq[0, t] = logits.argmax()
    assert torch.equal(out, seq)


def test_bad_decoding_inputs(causal):
    with pytest.raises(ValueError, match="group_size"):
        causal.generate(torch.tensor([[1, 5]]), group_size=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        causal.generate(torch.tensor([[1, 5]]), group_size=2, max_new_tokens=100)
