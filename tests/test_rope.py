"""RoPE from ``config.rope_parameters`` (transformers' ``ROPE_INIT_FUNCTIONS``), ``head_dim``, and configs written
before either existed (``rope_theta`` at the top level)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoConfig, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hf_genssl import GenSSLConfig, GenSSLForCausalLM, GenSSLForPreTraining, GenSSLModel
from tests.conftest import tiny_config

SCALINGS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0},  # original_max_position_embeddings: max_position_embeddings
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
}


@pytest.mark.parametrize("scaling", list(SCALINGS))
def test_rotary_angles_equal_transformers_llama_rotary(scaling):
    """The model's angles equal those of transformers' LlamaRotaryEmbedding for the same rope_parameters: short
    inputs, and (dynamic NTK) inputs past max_position_embeddings that change the frequencies."""
    rope = {"rope_theta": 500.0, **SCALINGS[scaling]}
    model = GenSSLModel(tiny_config(max_position_embeddings=64, hidden_size=64, rope_parameters=dict(rope)))
    llama = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                                             rope_parameters=dict(rope)))
    x = torch.zeros(1)
    for length in (20, 64, 150):  # 150 > 64: dynamic NTK grows the base
        positions = torch.arange(length)[None]
        cos, signed_sin = model.rotary_emb(x, positions)
        llama_cos, llama_sin = llama(x, positions)
        half = llama_sin.shape[-1] // 2
        torch.testing.assert_close(cos, llama_cos, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(signed_sin, torch.cat([-llama_sin[..., :half], llama_sin[..., half:]], -1),
                                   atol=1e-6, rtol=1e-6)


def test_linear_scaling_divides_the_positions_by_its_factor():
    """Independent of transformers: with linear scaling by 2, positions 2p give the outputs the unscaled model gives at
    positions p (both streams, every layer)."""
    torch.manual_seed(0)
    plain = GenSSLModel(tiny_config()).eval()
    scaled = GenSSLModel(tiny_config(rope_parameters={"rope_type": "linear", "factor": 2.0})).eval()
    scaled.load_state_dict(plain.state_dict())
    ids, gids = torch.randint(5, 500, (2, 12)), torch.arange(12).repeat(2, 1) // 2
    positions = torch.arange(12).repeat(2, 1)
    with torch.no_grad():
        expected = plain(ids, group_ids=gids, position_ids=positions)
        found = scaled(ids, group_ids=gids, position_ids=2 * positions)
        unscaled_at_2p = plain(ids, group_ids=gids, position_ids=2 * positions)
    torch.testing.assert_close(found.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(found.query_hidden_state, expected.query_hidden_state, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unscaled_at_2p.query_hidden_state, expected.query_hidden_state, atol=1e-3)


@pytest.mark.parametrize("scaling", ["linear", "dynamic", "yarn"])
def test_scaled_rope_takes_longer_inputs_and_generates_past_the_trained_length(scaling):
    """A scaling extends the accepted length to factor x the trained one (max_sequence_length); a KV-cached decode
    past max_position_embeddings gives the logits of the full forward (dynamic: up to the frequencies, which
    transformers' dynamic NTK recomputes as the input grows, so the cached keys of the first steps differ)."""
    torch.manual_seed(0)
    config = tiny_config(max_position_embeddings=16, rope_parameters=dict(SCALINGS[scaling]))
    assert config.max_sequence_length == 64
    model = GenSSLForCausalLM(config).eval()
    prompt = torch.randint(5, 500, (1, 10))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=20, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert out.sequences.shape[1] == 30
        if scaling != "dynamic":
            full = model(out.sequences[:, :-1]).logits[0, 9:]
            torch.testing.assert_close(torch.cat(out.logits), full, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="max_sequence_length=64"):
            model(torch.randint(5, 500, (1, 65)))


def test_unscaled_rope_keeps_max_position_embeddings_as_the_limit():
    config = tiny_config(max_position_embeddings=16)
    assert config.max_sequence_length == 16
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        GenSSLModel(config)(torch.randint(5, 500, (1, 17)))


def write_old_checkpoint(folder, rope: dict) -> GenSSLForPreTraining:
    """A checkpoint whose config.json is written as before rope_parameters and head_dim existed: the RoPE keys at the
    top level (``rope_theta``, optionally ``rope_scaling``), no ``head_dim``."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config(num_hidden_layers=2)).eval()
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters")
    config.pop("head_dim")
    config.update(rope)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return model


def old_rope_reference(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The angles the package computed before rope_parameters (the formula of its old ``rotary_cos_sin``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions[..., None].float() * inv_freq
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)


def test_config_json_with_rope_theta_loads_with_the_same_angles_and_outputs(tmp_path):
    model = write_old_checkpoint(tmp_path, {"rope_theta": 500.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unknown key" warning for the old keys
        config = AutoConfig.from_pretrained(tmp_path)
        loaded = GenSSLForPreTraining.from_pretrained(tmp_path).eval()
    assert config.rope_parameters == {"rope_theta": 500.0, "rope_type": "default"}
    assert loaded.config.head_dim == 8
    positions = torch.arange(64)[None]
    cos, sin = loaded.model.rotary_emb(torch.zeros(1), positions)
    expected_cos, expected_sin = old_rope_reference(positions, 8, 500.0)
    assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)  # bit for bit: same outputs as before

    ids = torch.randint(5, 500, (2, 20))
    gids = torch.arange(20).repeat(2, 1) // 2
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 500.0}  # the weights' own theta
    in_memory = GenSSLForPreTraining(model.config).eval()
    in_memory.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(ids, group_ids=gids).logits, in_memory(ids, group_ids=gids).logits)
        assert not torch.allclose(loaded(ids, group_ids=gids).logits, model(ids, group_ids=gids).logits, atol=1e-4)
    loaded.save_pretrained(tmp_path / "resaved")  # written the new way
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert "rope_theta" not in resaved and resaved["rope_parameters"]["rope_theta"] == 500.0


def test_config_json_with_rope_scaling_loads_as_rope_parameters(tmp_path):
    write_old_checkpoint(tmp_path, {"rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}})
    loaded = GenSSLForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.rope_parameters["rope_type"] == "linear"
    assert loaded.config.rope_parameters["factor"] == 2.0 and loaded.config.rope_parameters["rope_theta"] == 500.0
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, 1.0 / 500.0 ** (torch.arange(0, 8, 2) / 8) / 2)


def test_bf16_model_keeps_float32_frequencies():
    """model.to(bfloat16) casts weights, not the RoPE frequencies (bf16 ones are off by up to 0.4%)."""
    model = GenSSLModel(tiny_config())
    expected = model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.rotary_emb.inv_freq.dtype == torch.float32 and torch.equal(model.rotary_emb.inv_freq, expected)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    cos, _ = model.rotary_emb(torch.zeros(1, dtype=torch.bfloat16), torch.arange(60)[None])
    assert cos.dtype == torch.bfloat16
    torch.testing.assert_close(cos, old_rope_reference(torch.arange(60)[None], 8, 10000.0)[0].bfloat16())


def test_head_dim_in_the_config():
    config = tiny_config(hidden_size=32, num_attention_heads=4, head_dim=12)
    model = GenSSLForCausalLM(config)
    attention = model.model.layers[0].attn
    assert attention.q_proj.weight.shape == (48, 32) and attention.o_proj.weight.shape == (32, 48)
    assert model.model.rotary_emb.inv_freq.shape == (6,)
    assert tiny_config().head_dim == 8  # hidden_size // num_attention_heads by default
    with pytest.raises(ValueError, match="even"):
        tiny_config(head_dim=7)
    GenSSLConfig(hidden_size=30, num_attention_heads=4, head_dim=8)  # no divisibility needed with head_dim


def test_bad_rope_parameters_are_errors():
    with pytest.raises(KeyError, match="factor"):  # transformers' own validation
        tiny_config(rope_parameters={"rope_type": "linear"})
    with pytest.raises(ValueError, match="absolute"):
        tiny_config(position_embedding_type="absolute", rope_parameters={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        tiny_config(rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5})
