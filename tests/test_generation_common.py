"""transformers' generation tests (``GenerationTesterMixin``) for ``GenSSLForCausalLM``, written for this project.

Where this comes from: transformers' ``tests/generation/test_utils.py`` is not in the sdist, and the copy readable
here is of an older release (4.4x: ``greedy_search`` / ``sample`` methods that transformers 5 removed), not of the
installed 5.24.0, so it cannot run as is. These tests make the same checks against the installed ``generate``, one
test per mixin test, under the mixin's names: output lengths, ``return_dict_in_generate`` outputs (scores, logits,
attentions, hidden states, beam indices) with and without the KV cache, cache == no cache, sampling, beam search,
beam sampling, assisted and prompt-lookup decoding == greedy, ``inputs_embeds``, generation without a prompt,
continuing from a returned cache, left padding, ``logits_to_keep``, the cache format. A tiny config keeps the file
at a few seconds.

Not run, each with its reason:
- contrastive search: transformers 5 moved it to a Hub ``custom_generate`` repo (``trust_remote_code``); the tests
  are offline. Checked instead: it fails with transformers' own error, not inside our model.
- static cache (and so ``torch.compile``d decoding): the mask is built from group ids for the keys the step holds,
  a static cache hands back all its slots; the model does not declare ``_can_compile_fullgraph``, and ``generate``
  says so with a clear error (``test_static_cache_is_a_clear_error``) instead of a shape error deep inside.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.generation import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

from hf_genssl import GenSSLForCausalLM
from tests.conftest import tiny_config

NEW = 3  # max_new_tokens, as in the mixin
LAYERS, HEADS = 2, 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # eos None: no early stop (length checks); eager attention: attention maps are returned
    config = tiny_config(num_hidden_layers=LAYERS, num_attention_heads=HEADS, eos_token_id=None,
                         initializer_range=0.5, attn_implementation="eager")
    return GenSSLForCausalLM(config).eval()


@pytest.fixture(scope="module")
def inputs():
    ids = torch.randint(5, 512, (2, 7), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


PROCESSORS = dict(bad_words_ids=[[1, 0]], repetition_penalty=1.2, remove_invalid_values=True)  # the mixin's
WARPERS = dict(top_k=10, top_p=0.7, temperature=0.7)


def check_outputs(out, inputs, num_sequences, use_cache):
    """What the mixin's ``_check_outputs`` checks, for a decoder-only model without beams."""
    prompt = inputs["input_ids"].shape[1]
    batch = inputs["input_ids"].shape[0] * num_sequences
    assert out.sequences.shape == (batch, prompt + NEW)
    for name in ("scores", "logits"):
        steps = getattr(out, name)
        assert len(steps) == NEW and all(s.shape == (batch, 512) for s in steps)
    assert len(out.attentions) == NEW and len(out.hidden_states) == NEW
    for step, (attentions, hidden_states) in enumerate(zip(out.attentions, out.hidden_states, strict=True)):
        rows = 1 if use_cache and step else prompt + step  # rows the forward pass of this step computed
        keys = prompt + step
        assert len(attentions) == LAYERS
        for layer, attention in enumerate(attentions):
            # two-stream maps: [content; query] rows (2 x rows), the last layer computes the query stream only
            stacked = rows if layer == LAYERS - 1 else 2 * rows
            assert attention.shape == (batch, HEADS, stacked, keys)
            torch.testing.assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)))  # probabilities
        assert len(hidden_states) == LAYERS + 1  # embeddings, then each layer (the last: what the head reads)
        assert all(h.shape == (batch, rows, 32) for h in hidden_states)
    if use_cache:
        assert isinstance(out.cache, DynamicCache) and out.cache.get_seq_length() == prompt + NEW - 1


def test_greedy_generate(model, inputs):
    out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=NEW, **PROCESSORS)
    assert out.shape == (2, 7 + NEW)


@pytest.mark.parametrize("use_cache", [False, True])
def test_greedy_generate_dict_outputs(model, inputs, use_cache):
    out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW, output_scores=True, output_logits=True,
                         output_attentions=True, output_hidden_states=True, return_dict_in_generate=True,
                         use_cache=use_cache, **PROCESSORS)
    assert isinstance(out, GenerateDecoderOnlyOutput)
    check_outputs(out, inputs, 1, use_cache)


def test_greedy_cache_equals_no_cache(model, inputs):
    """The KV cache changes nothing: same tokens, same scores (the mixin's ``_check_similar_generate_outputs``)."""
    options = dict(do_sample=False, max_new_tokens=NEW + 5, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(**inputs, use_cache=True, **options)
    uncached = model.generate(**inputs, use_cache=False, **options)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-4, rtol=1e-4)


def test_sample_generate(model, inputs):
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, max_new_tokens=NEW, num_return_sequences=2, **WARPERS, **PROCESSORS)
    assert out.shape == (4, 7 + NEW)


def test_sample_generate_dict_output(model, inputs):
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, max_new_tokens=NEW, num_return_sequences=2, output_scores=True,
                         output_logits=True, output_attentions=True, output_hidden_states=True,
                         return_dict_in_generate=True, use_cache=False, **WARPERS, **PROCESSORS)
    check_outputs(out, inputs, 2, use_cache=False)


@pytest.mark.parametrize("do_sample", [False, True], ids=["beam_search", "beam_sample"])
def test_beam_search_generate_dict_output(model, inputs, do_sample):
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=do_sample, num_beams=2, num_return_sequences=2, early_stopping=False,
                         length_penalty=2.0, max_new_tokens=NEW, output_scores=True, output_logits=True,
                         return_dict_in_generate=True, **PROCESSORS)
    assert isinstance(out, GenerateBeamDecoderOnlyOutput)
    assert out.sequences.shape == (4, 7 + NEW) and out.sequences_scores.shape == (4,)
    assert out.beam_indices.shape == (4, NEW) and len(out.scores) == NEW
    assert all(s.shape == (4, 512) for s in out.scores)  # batch x beams rows


def test_beam_search_cache_equals_no_cache(model, inputs):
    options = dict(num_beams=2, max_new_tokens=NEW + 3, do_sample=False)
    assert torch.equal(model.generate(**inputs, use_cache=True, **options),
                       model.generate(**inputs, use_cache=False, **options))


@pytest.mark.parametrize("assistant", ["itself", "smaller", "prompt_lookup"])
def test_assisted_decoding_matches_greedy_search(model, inputs, assistant):
    """Assisted decoding (candidates verified with the KV cache, rolled back on rejection) gives the greedy tokens.
    transformers' assisted generation takes one sequence at a time."""
    one = {k: v[:1] for k, v in inputs.items()}
    greedy = model.generate(**one, do_sample=False, max_new_tokens=6)
    if assistant == "prompt_lookup":
        options = dict(prompt_lookup_num_tokens=2)
    else:
        torch.manual_seed(1)
        small = GenSSLForCausalLM(tiny_config(num_hidden_layers=1, eos_token_id=None, initializer_range=0.5)).eval()
        options = dict(assistant_model=model if assistant == "itself" else small)
    assisted = model.generate(**one, do_sample=False, max_new_tokens=6, **options)
    assert torch.equal(assisted, greedy)


def test_assisted_decoding_sample(model, inputs):
    one = {k: v[:1] for k, v in inputs.items()}
    torch.manual_seed(0)
    out = model.generate(**one, do_sample=True, assistant_model=model, max_new_tokens=NEW, output_scores=True,
                         return_dict_in_generate=True, **WARPERS)
    assert out.sequences.shape == (1, 7 + NEW) and len(out.scores) == NEW


def test_contrastive_search_is_transformers_hub_recipe(model, inputs):
    """Override (contrastive search lives in a Hub custom_generate repo in transformers 5; tests are offline):
    transformers' own error, raised before our model runs."""
    with pytest.raises(ValueError, match="trust_remote_code"):
        model.generate(**inputs, penalty_alpha=0.6, top_k=5, max_new_tokens=NEW)


def test_generate_without_input_ids(model):
    out = model.generate(do_sample=False, max_new_tokens=NEW)
    assert out.shape == (1, 1 + NEW) and out[0, 0] == model.config.bos_token_id


def test_generate_from_inputs_embeds(model, inputs):
    """inputs_embeds of the input ids give the same new tokens as the ids (generate returns only the new ones)."""
    from_ids = model.generate(**inputs, do_sample=False, max_new_tokens=NEW)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], do_sample=False,
                                 max_new_tokens=NEW)
    assert torch.equal(from_embeds, from_ids[:, 7:])


def test_generate_continue_from_cache(model, inputs):
    """Generating 3 tokens, then 3 more from the returned cache, equals generating 6 at once."""
    first = model.generate(**inputs, do_sample=False, max_new_tokens=NEW, return_dict_in_generate=True)
    mask = torch.ones_like(first.sequences)
    continued = model.generate(first.sequences, attention_mask=mask, cache=first.cache, do_sample=False,
                               max_new_tokens=NEW)
    assert torch.equal(continued, model.generate(**inputs, do_sample=False, max_new_tokens=2 * NEW))


def test_left_padding_compatibility(model, inputs):
    """Left padding changes neither the next-token logits nor the generated tokens."""
    pad = torch.zeros(2, 3, dtype=torch.long)
    padded = {"input_ids": torch.cat([pad, inputs["input_ids"]], 1),
              "attention_mask": torch.cat([pad, inputs["attention_mask"]], 1)}
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).logits[:, -1], model(**inputs).logits[:, -1])
    assert torch.equal(model.generate(**padded, do_sample=False, max_new_tokens=NEW)[:, 3:],
                       model.generate(**inputs, do_sample=False, max_new_tokens=NEW))


def test_generate_methods_with_logits_to_keep(model, inputs):
    with torch.no_grad():
        full = model(**inputs).logits
        torch.testing.assert_close(model(**inputs, logits_to_keep=1).logits, full[:, -1:])
    assert torch.equal(model.generate(**inputs, do_sample=False, max_new_tokens=NEW, logits_to_keep=0),
                       model.generate(**inputs, do_sample=False, max_new_tokens=NEW))


def test_cache_format(model, inputs):
    """The cache holds the content stream's keys and values: (batch, heads, tokens, head_dim) per layer."""
    out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW, return_dict_in_generate=True)
    assert len(out.cache.layers) == LAYERS
    for layer in out.cache.layers:
        assert layer.keys.shape == layer.values.shape == (2, HEADS, 7 + NEW - 1, 32 // HEADS)


@pytest.mark.parametrize("options", [dict(cache_implementation="static"),
                                     dict(cache=StaticCache(config=tiny_config(), max_cache_len=16))],
                         ids=["cache_implementation", "cache object"])
def test_static_cache_is_a_clear_error(model, inputs, options):
    """Override (static caches are not supported, see the module docstring): a clear error, not a shape error."""
    with pytest.raises(ValueError, match="dynamic KV cache only"):
        model.generate(**inputs, do_sample=False, max_new_tokens=NEW, **options)
