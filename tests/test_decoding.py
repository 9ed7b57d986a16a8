"""Group-parallel decoding and iterative unmasking, checked against independent computations.

The models here are randomly initialised with a large ``initializer_range`` (0.5): their logits vary from position to
position and token to token (softmax peaks ~0.25, not ~1/vocab), so comparing logits or orders can actually fail.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from hf_genssl import GenSSLForCausalLM, GenSSLForMaskedLM
from hf_genssl.models.decoding import group_parallel_generate, select_tokens
from tests.conftest import tiny_config

MASK = 4


@pytest.fixture(scope="module")
def causal():
    torch.manual_seed(0)
    return GenSSLForCausalLM(tiny_config(initializer_range=0.5)).eval()


@pytest.fixture(scope="module")
def masked():
    torch.manual_seed(0)
    return GenSSLForMaskedLM(tiny_config(content_attention="bidirectional", initializer_range=0.5)).eval()


# A batch with left padding: row 1 has two pads before its prompt.
PROMPT = torch.tensor([[1, 17, 42, 99, 7], [0, 0, 1, 23, 8]])
PROMPT_MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])


def reference_logits(model, sequences, attention_mask, prompt_length, group_size):
    """Logits of ONE two-stream pass over the finished sequences with the groups decoding used: prompt tokens one
    per group (causal), then the new tokens in groups of ``group_size``. Query row t predicts token t from content
    in earlier groups; content rows of a group see each other (the pretraining rule)."""
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    new = sequences.shape[1] - prompt_length
    start = positions[:, prompt_length - 1:prompt_length] + 1
    group_ids = torch.cat([positions[:, :prompt_length], start + torch.arange(new) // group_size * group_size], 1)
    with torch.no_grad():
        hidden = model.model(sequences, attention_mask=attention_mask, group_ids=group_ids, position_ids=positions,
                             use_cache=False, return_content_stream=False).query_hidden_state
        return model.lm_head(hidden[:, prompt_length:]).float()


# ---- group-parallel decoding == one reference pass, on logits ------------------------------------------------------


@pytest.mark.parametrize("group_size", [2, 3])
def test_group_decoding_logits_equal_one_reference_pass(causal, group_size):
    """Every step's raw logits equal the reference two-stream pass over the output (7 new tokens: the last group of 3
    is partial). Fails if the emitted group is fed back as separate content groups (causal within the group): the
    cached keys of the next passes change although the argmax tokens often do not."""
    out = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=group_size, max_new_tokens=7,
                          eos_token_id=None, return_dict_in_generate=True, output_logits=True, output_scores=True)
    assert out.sequences.shape == (2, PROMPT.shape[1] + 7) and len(out.logits) == 7
    full_mask = torch.cat([PROMPT_MASK, torch.ones(2, 7, dtype=torch.long)], 1)
    expected = reference_logits(causal, out.sequences, full_mask, PROMPT.shape[1], group_size)
    steps = torch.stack(out.logits, 1)
    assert expected.std() > 1.0  # not near-constant: the comparison below can fail
    torch.testing.assert_close(steps, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.sequences[:, PROMPT.shape[1]:], expected.argmax(-1))  # greedy picks the argmax
    assert all(torch.equal(s, raw) for s, raw in zip(out.scores, out.logits, strict=True))  # no processor active


def test_group_size_one_equals_ordinary_greedy(causal):
    """The group loop with groups of one token is transformers' greedy decoding with the KV cache (left padding)."""
    ordinary = causal.generate(PROMPT, attention_mask=PROMPT_MASK, max_new_tokens=12, do_sample=False,
                               eos_token_id=None)
    grouped = group_parallel_generate(causal, PROMPT, attention_mask=PROMPT_MASK, group_size=1, max_new_tokens=12,
                                      eos_token_id=None)
    assert torch.equal(ordinary, grouped)


def test_group_size_one_or_none_is_transformers_generate(causal, monkeypatch):
    calls = []
    monkeypatch.setattr("hf_genssl.models.modeling_genssl.group_parallel_generate", lambda *a, **k: calls.append(1))
    for group_size in (None, 1):
        causal.generate(PROMPT[:1], group_size=group_size, num_beams=2, max_new_tokens=3)  # beam search: generate's
    assert calls == []


def test_group_tokens_do_not_see_each_other(causal):
    """Replacing a token's group-mate does not change that token's prediction (perturbation)."""
    out = causal.generate(PROMPT[:1], group_size=2, max_new_tokens=8, eos_token_id=None)
    P = PROMPT.shape[1]
    gids = torch.cat([torch.arange(P), P + torch.arange(8) // 2])[None]
    with torch.no_grad():
        base = causal.model(out, group_ids=gids, return_content_stream=False).query_hidden_state
        for j in range(P, P + 8):
            mate = j + 1 if (j - P) % 2 == 0 else j - 1
            perturbed = out.clone()
            perturbed[0, mate] = (perturbed[0, mate] + 1) % 512
            hidden = causal.model(perturbed, group_ids=gids, return_content_stream=False).query_hidden_state
            torch.testing.assert_close(hidden[0, j], base[0, j])


def test_group_parallel_uses_fewer_forward_passes(causal):
    calls = []
    handle = causal.model.register_forward_hook(lambda *a: calls.append(1))
    causal.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=12, group_size=4, eos_token_id=None)
    handle.remove()
    assert len(calls) == 3


# ---- sampling == transformers' warpers, applied by hand ------------------------------------------------------------


def warp_by_hand(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the smallest most-probable set with mass >= top_p), written out."""
    scores = logits / temperature
    kth = scores.topk(top_k, dim=-1).values[..., -1:]
    scores = scores.masked_fill(scores < kth, float("-inf"))
    order = scores.argsort(dim=-1, descending=True)
    probs = scores.softmax(-1).gather(-1, order)
    mass_before = probs.cumsum(-1) - probs
    drop = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
    return scores.masked_fill(drop, float("-inf"))


def test_group_sampling_equals_warpers_by_hand(causal):
    """Sampled group decoding with a seeded generator: each step's scores are the reference logits warped by hand
    (temperature 0.7, top-k 5, top-p 0.8), and the tokens are what a generator with the same seed draws from them.
    Fails if temperature or top-k is ignored."""
    options = dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.8, max_new_tokens=6, eos_token_id=None)
    out = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, generator=torch.Generator().manual_seed(3),
                          return_dict_in_generate=True, output_scores=True, **options)
    full_mask = torch.cat([PROMPT_MASK, torch.ones(2, 6, dtype=torch.long)], 1)
    logits = reference_logits(causal, out.sequences, full_mask, PROMPT.shape[1], 2)
    generator = torch.Generator().manual_seed(3)
    for step, scores in enumerate(out.scores):
        by_hand = warp_by_hand(logits[:, step], 0.7, 5, 0.8)
        assert torch.equal(scores.isinf(), by_hand.isinf())
        kept = ~by_hand.isinf()
        torch.testing.assert_close(scores[kept], by_hand[kept], atol=1e-4, rtol=1e-4)
        drawn = torch.multinomial(by_hand.softmax(-1), 1, generator=generator)[:, 0]
        assert torch.equal(out.sequences[:, PROMPT.shape[1] + step], drawn)
    # same seed, same tokens; another seed, other tokens
    again = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2,
                            generator=torch.Generator().manual_seed(3), **options)
    assert torch.equal(again, out.sequences)


def test_select_tokens_equals_warpers_by_hand():
    """Unmasking's token choice: sampling from the hand-warped distribution with the same generator."""
    torch.manual_seed(0)
    logits = torch.randn(64, 32, 50)  # 2048 draws: a distribution that differs anywhere shows in some draw
    chosen = select_tokens(logits, True, 0.5, 5, 0.8, generator=torch.Generator().manual_seed(1))
    by_hand = warp_by_hand(logits.reshape(-1, 50), 0.5, 5, 0.8)
    drawn = torch.multinomial(by_hand.softmax(-1), 1, generator=torch.Generator().manual_seed(1)).view(64, 32)
    assert torch.equal(chosen, drawn)
    assert torch.equal(select_tokens(logits), logits.argmax(-1))


# ---- the standard generation machinery with groups -----------------------------------------------------------------


def test_generation_config_equals_keyword_arguments(causal):
    config = GenerationConfig(max_new_tokens=5, do_sample=False, repetition_penalty=1.5, eos_token_id=None,
                              pad_token_id=0)
    from_config = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, generation_config=config)
    from_kwargs = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, max_new_tokens=5,
                                  repetition_penalty=1.5, eos_token_id=None)
    plain = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, max_new_tokens=5, eos_token_id=None)
    assert torch.equal(from_config, from_kwargs) and not torch.equal(from_config, plain)
    assert causal.generate(PROMPT, group_size=3, max_length=PROMPT.shape[1] + 4, eos_token_id=None).shape[1] == 9


def test_repetition_penalty_sees_the_group_so_far(causal):
    """Logits processors see every token chosen before, including the earlier tokens of the same group."""
    out = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=3, max_new_tokens=6, repetition_penalty=2.0,
                          eos_token_id=None, return_dict_in_generate=True, output_scores=True, output_logits=True)
    for step, (scores, logits) in enumerate(zip(out.scores, out.logits, strict=True)):
        seen = out.sequences[:, :PROMPT.shape[1] + step]
        by_hand = logits.clone()
        for row in range(2):
            ids = seen[row, PROMPT_MASK[row].argmax():].unique()  # left padding is not a repetition
            by_hand[row, ids] = torch.where(logits[row, ids] > 0, logits[row, ids] / 2.0, logits[row, ids] * 2.0)
        torch.testing.assert_close(scores, by_hand)


def test_logits_processor_stopping_criteria_and_streamer(causal):
    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, float("-inf"))
            forced[:, 7 + input_ids.shape[1] % 2] = 0.0  # 7, 8, 7, ... depending on the length so far
            return forced

    class StopAtLength(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 8, dtype=torch.bool)

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value)

        def end(self):
            self.ended = True

    streamer = Collect()
    prompt = PROMPT[:1]
    out = causal.generate(prompt, group_size=2, max_new_tokens=10, eos_token_id=None, logits_processor=[Force()],
                          stopping_criteria=[StopAtLength()], streamer=streamer)
    assert out.tolist() == [prompt[0].tolist() + [8, 7, 8]]  # stopped inside the second group
    assert torch.equal(streamer.chunks[0], prompt) and streamer.ended
    assert [c.tolist() for c in streamer.chunks[1:]] == [[8], [7], [8]]


def test_eos_stops_and_pads(causal):
    """Row 1's third new token (the first of its second group) is made EOS: row 1 is padded after it, row 0 runs on;
    alone, row 1 stops right there, inside the group."""
    free = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, max_new_tokens=6, eos_token_id=None)
    eos = int(free[1, 7])
    assert not (free[0, 5:] == eos).any() and not (free[1, 5:7] == eos).any()
    out = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, max_new_tokens=6, eos_token_id=eos,
                          pad_token_id=0)
    assert torch.equal(out[0], free[0])
    assert out[1].tolist() == free[1, :8].tolist() + [0, 0, 0]
    alone = causal.generate(PROMPT[1:, 2:], group_size=2, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    assert alone[0].tolist() == free[1, 2:8].tolist()


def test_num_return_sequences(causal):
    out = causal.generate(PROMPT, attention_mask=PROMPT_MASK, group_size=2, do_sample=True, num_return_sequences=3,
                          max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, PROMPT.shape[1] + 4)
    assert torch.equal(out[:3, :5], PROMPT[:1].expand(3, -1))


@pytest.mark.parametrize(
    "options",
    [dict(num_beams=2), dict(penalty_alpha=0.6, top_k=4), dict(prompt_lookup_num_tokens=2),
     dict(output_attentions=True, return_dict_in_generate=True)],
    ids=["beam", "contrastive", "prompt-lookup", "attentions"],
)
def test_what_cannot_apply_with_groups_is_a_clear_error(causal, options):
    with pytest.raises(ValueError, match="supports greedy decoding and sampling"):
        causal.generate(PROMPT[:1], group_size=2, max_new_tokens=4, **options)


def test_assistant_with_groups_is_a_clear_error(causal):
    with pytest.raises(ValueError, match="assistant_model"):
        causal.generate(PROMPT[:1], group_size=2, max_new_tokens=4, assistant_model=causal)


def test_bad_decoding_inputs(causal):
    with pytest.raises(ValueError, match="group_size"):
        causal.generate(torch.tensor([[1, 5]]), group_size=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        causal.generate(torch.tensor([[1, 5]]), group_size=2, max_new_tokens=100)
    with pytest.raises(ValueError, match="set_seed"):  # transformers' generate has no generator to seed
        causal.generate(torch.tensor([[1, 5]]), max_new_tokens=2, do_sample=True, generator=torch.Generator())
    with pytest.warns(UserWarning, match="content_attention"):  # the wrong-head warning (issue 14, bug 6)
        masked_config = GenSSLForCausalLM(tiny_config(content_attention="bidirectional"))
    with pytest.raises(ValueError, match="causal"):
        masked_config.generate(torch.tensor([[1, 5]]), group_size=2)


@pytest.mark.parametrize(
    "options",
    [dict(group_size=2, return_dict_in_generate=True), dict(do_sample=False), dict(num_beams=2),
     dict(do_sample=False, prompt_lookup_num_tokens=2, return_dict_in_generate=True)],
    ids=["groups", "greedy", "beam", "assisted"],
)
def test_generate_logs_no_deprecation(causal, options):
    """generate (group-parallel and transformers' own paths) logs no transformers deprecation message, such as
    the old cache argument name (issue 14, bug 4), and warns no DeprecationWarning."""
    import warnings

    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger().warning_once.cache_clear()  # messages logged once per process must show again here
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
            causal.generate(PROMPT[:1], max_new_tokens=4, eos_token_id=None, **options)
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert not [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]


# ---- iterative unmasking -------------------------------------------------------------------------------------------


def naive_unmasking(model, prompt, new, per_step, most_confident_first):
    """Fill the masks by an explicit loop: per pass, the `per_step` unfilled masks whose top probability is highest
    (or lowest) get their argmax token ([MASK] itself excluded)."""
    seq = torch.cat([prompt, torch.full((1, new), MASK)], 1)
    unfilled = list(range(prompt.shape[1], seq.shape[1]))
    order = []
    while unfilled:
        with torch.no_grad():
            logits = model(seq).logits[0].float()
        logits[:, MASK] = float("-inf")
        confidence = {t: logits[t].softmax(-1).max().item() for t in unfilled}
        ranked = sorted(unfilled, key=confidence.get, reverse=most_confident_first)[:per_step]
        for t in ranked:
            seq[0, t] = logits[t].argmax()
            unfilled.remove(t)
        order.append(sorted(ranked))
    return seq, order


@pytest.mark.parametrize("per_step", [1, 2])
def test_confidence_unmasking_fills_most_confident_first(masked, per_step):
    """Fails if the confidence order is reversed: the least-confident-first loop gives other tokens."""
    prompt = torch.tensor([[1, 17, 42]])
    out = masked.generate(prompt, max_new_tokens=6, strategy="confidence", tokens_per_step=per_step)
    expected, order = naive_unmasking(masked, prompt, 6, per_step, most_confident_first=True)
    reversed_, _ = naive_unmasking(masked, prompt, 6, per_step, most_confident_first=False)
    assert per_step == 2 or order != sorted(order)  # one at a time, the confident order is not left to right
    assert not torch.equal(expected, reversed_)  # the test can tell the two orders apart
    assert torch.equal(out, expected)


def test_left_to_right_unmasking():
    torch.manual_seed(0)
    model = GenSSLForMaskedLM(tiny_config(content_attention="bidirectional", initializer_range=0.5)).eval()
    prompt = torch.tensor([[1, 17, 42]])
    out = model.generate(prompt, max_new_tokens=4)
    seq = torch.cat([prompt, torch.full((1, 4), MASK)], dim=1)
    for t in range(3, 7):  # token t is the argmax (never [MASK]) given prefix + masks, computed naively
        with torch.no_grad():
            logits = model(seq).logits[0, t]
        logits[MASK] = float("-inf")
        seq[0, t] = logits.argmax()
    assert torch.equal(out, seq)
    assert not (model.generate(prompt, max_new_tokens=7, strategy="confidence", tokens_per_step=3) == MASK).any()


def test_masked_generate_takes_a_generation_config(masked):
    prompt = torch.tensor([[1, 17, 42]])
    config = GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.7, top_k=3)
    from_config = masked.generate(prompt, generation_config=config, generator=torch.Generator().manual_seed(0))
    from_kwargs = masked.generate(prompt, max_new_tokens=5, do_sample=True, temperature=0.7, top_k=3,
                                  generator=torch.Generator().manual_seed(0))
    greedy = masked.generate(prompt, max_new_tokens=5)
    assert from_config.shape == (1, 8) and torch.equal(from_config, from_kwargs)
    assert not torch.equal(from_config, greedy)
    with pytest.raises(ValueError, match="unpadded"):
        masked.generate(torch.tensor([[0, 1, 17]]), attention_mask=torch.tensor([[0, 1, 1]]))


def test_text_generation_pipeline_with_groups(tokenizer):
    """The text-generation pipeline hands group_size to generate: same text as generate called directly."""
    from transformers import pipeline

    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config(vocab_size=len(tokenizer), initializer_range=0.5)).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("the man said", max_new_tokens=6, group_size=2, do_sample=False,
                     return_full_text=False)[0]["generated_text"]
    ids = tokenizer("the man said", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, group_size=2)
    assert text == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_stop_strings_with_groups(tokenizer):
    """stop_strings (which need the tokenizer) stop group decoding where they stop transformers' generate."""
    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config(vocab_size=len(tokenizer), initializer_range=0.5)).eval()
    ids = tokenizer("the man said", return_tensors="pt")
    P = ids["input_ids"].shape[1]
    free = model.generate(**ids, max_new_tokens=8, group_size=2)
    stop = tokenizer.decode(free[0, P + 2])  # the first token of the second group
    out = model.generate(**ids, max_new_tokens=8, group_size=2, stop_strings=[stop], tokenizer=tokenizer)
    assert torch.equal(out, free[:, :P + 3])
    config = GenerationConfig(max_new_tokens=8, stop_strings=[stop])
    assert torch.equal(model.generate(**ids, generation_config=config, group_size=2, tokenizer=tokenizer), out)
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(**ids, max_new_tokens=8, group_size=2, stop_strings=[stop])
