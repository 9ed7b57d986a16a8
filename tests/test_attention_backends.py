"""Attention from group ids (no dense mask): every backend against a softmax reference built from the rule by hand."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from hf_genssl import GenSSLForPreTraining, GenSSLModel
from hf_genssl.models import two_stream_attention as tsa
from hf_genssl.models.two_stream_attention import GroupVisibility, two_stream_attention_forward
from tests.conftest import tiny_config

KINDS = ["autoregressive", "semi_autoregressive", "random_cuts", "masked_two_streams", "padded_random_cuts"]


def group_ids(
    kind: str, batch: int, length: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Group ids (batch, T) of each objective, and a key padding mask (or None)."""
    order = torch.arange(length).expand(batch, length)
    padding = None
    if kind == "autoregressive":
        gids = order
    elif kind == "semi_autoregressive":
        gids = order // 2
    elif kind == "masked_two_streams":  # MPNet style: visible 0, masked 1 (the BOS stays visible)
        gids = (torch.rand(batch, length, generator=generator) < 0.3).long()
        gids[:, 0] = 0
    else:  # consecutive groups cut at random points
        gids = (torch.rand(batch, length, generator=generator) < 0.3).long().cumsum(1)
        gids[:, 0] = 0
        if kind == "padded_random_cuts":
            padding = torch.ones(batch, length, dtype=torch.long)
            padding[0, length - length // 3:] = 0
    return gids, padding


def reference_attention(query, key, value, gids, padding, scaling):
    """Softmax attention of rows [content; query] with a mask written from the rule with plain loops."""
    B, T = gids.shape
    valid = torch.ones(B, T, dtype=torch.bool) if padding is None else padding.bool()
    mask = torch.zeros(B, 2 * T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                if valid[b, j]:
                    mask[b, i, j] = bool(gids[b, j] <= gids[b, i])
                    mask[b, T + i, j] = bool(gids[b, j] < gids[b, i])
        first = int(torch.nonzero(valid[b])[0])
        for r in range(2 * T):
            if not mask[b, r].any():  # the BOS query row: sees the first real key, as the models do
                mask[b, r, first] = True
    scores = (query.double() @ key.double().transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return (scores.softmax(-1) @ value.double()).transpose(1, 2).float()


def attention_module(implementation: str) -> torch.nn.Module:
    module = torch.nn.Module()
    module.config = SimpleNamespace(_attn_implementation=implementation)
    return module


@pytest.fixture
def uncompiled_flex(monkeypatch):
    """flex attention without compiling it (the compiled kernel is tested once, below) and for any number of rows."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(tsa, "_compiled_flex_attention", flex_attention)
    monkeypatch.setattr(tsa, "FLEX_MIN_ROWS", 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile", UserWarning)
        yield


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_every_backend_equals_the_rule(kind, implementation, uncompiled_flex):
    generator = torch.Generator().manual_seed(KINDS.index(kind))
    B, H, T, d = 2, 2, 37, 8
    gids, padding = group_ids(kind, B, T, generator)
    query, key, value = (torch.randn(B, H, n, d, generator=generator) for n in (2 * T, T, T))
    expected = reference_attention(query, key, value, gids, padding, d**-0.5)
    rule = GroupVisibility(torch.cat([gids + 1, gids], 1), gids, padding)
    module = attention_module(implementation)
    output, _ = two_stream_attention_forward(module, query, key, value, rule, scaling=d**-0.5)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    # The query rows alone (the last layer of a pretraining forward) see the same.
    query_rows = rule.rows(T)
    output, _ = two_stream_attention_forward(module, query[:, :, T:], key, value, query_rows, scaling=d**-0.5)
    torch.testing.assert_close(output, expected[:, T:], atol=1e-5, rtol=1e-5)
    # No backend but eager needs the (rows x keys) mask for these: sdpa only where the rule is not causal.
    built_dense = "dense" in rule._cache
    assert built_dense == (implementation == "eager" or (implementation == "sdpa" and kind != "autoregressive"))


@pytest.mark.parametrize("kind", KINDS)
def test_block_mask_classifies_every_tile_like_the_dense_mask(kind):
    """Skipped / full / partial tiles of the BlockMask, recomputed from the hand-built dense mask tile by tile."""
    generator = torch.Generator().manual_seed(10 + KINDS.index(kind))
    B, T, block = 2, 300, 32  # T not a multiple of the block: ragged last tiles
    gids, padding = group_ids(kind, B, T, generator)
    if kind == "masked_two_streams":  # a long visible prefix: whole tiles of query rows see only the BOS
        gids[:, : 2 * block] = 0
    rule = GroupVisibility(torch.cat([gids + 1, gids], 1), gids, padding)
    block_mask = rule.block_mask(block_size=block)
    assert "dense" not in rule._cache  # built from group-id ranges, no (rows x keys) tensor
    dense = rule.dense()[:, 0]
    n_rows, n_keys = -(-2 * T // block), -(-T // block)
    partial = torch.zeros(B, n_rows, n_keys, dtype=torch.bool)
    full = torch.zeros_like(partial)
    for b, r, k in torch.cartesian_prod(torch.arange(B), torch.arange(n_rows), torch.arange(n_keys)).tolist():
        tile = dense[b, r * block:(r + 1) * block, k * block:(k + 1) * block]
        whole_keys = tile.shape[1] == block  # a ragged key tile must stay partial (flex masks rows past the end)
        full[b, r, k] = bool(tile.all()) and whole_keys
        partial[b, r, k] = bool(tile.any()) and not full[b, r, k]

    def tiles(num_blocks, indices):
        chosen = torch.zeros(B, n_rows, n_keys, dtype=torch.bool)
        for b in range(B):
            for r in range(n_rows):
                chosen[b, r, indices[b, 0, r, : num_blocks[b, 0, r]].long()] = True
        return chosen

    # A tile may be classified partial where it happens to be all visible (per-block ranges are conservative), but
    # never full where a key is hidden, and never skipped where a key is visible.
    got_full = tiles(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    got_partial = tiles(block_mask.kv_num_blocks, block_mask.kv_indices)
    assert not (got_full & ~full).any()
    assert torch.equal(got_full | got_partial, full | partial)
    if kind in ("autoregressive", "semi_autoregressive"):  # consecutive groups: the ranges are exact
        assert torch.equal(got_full, full)
        assert (~(full | partial)).float().mean() > 0.2  # the causal-like upper triangle is skipped


@pytest.mark.slow
def test_compiled_flex_attention_equals_the_rule(monkeypatch):
    """The compiled flex kernel (the one real runs use; first compile 13-20 s), semi-AR random cuts with padding, on
    inputs laid out as the models' projections give them: views of (batch, rows, heads, dim)."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled, kernel_outputs = torch.compile(flex_attention, dynamic=False), []

    def recorded(*args, **kwargs):
        kernel_outputs.append(compiled(*args, **kwargs))
        return kernel_outputs[-1]

    monkeypatch.setattr(tsa, "_compiled_flex_attention", recorded)
    generator = torch.Generator().manual_seed(0)
    B, H, T, d = 2, 2, 160, 16
    gids, padding = group_ids("padded_random_cuts", B, T, generator)
    query, key, value = (torch.randn(B, n, H, d, generator=generator).transpose(1, 2) for n in (2 * T, T, T))
    rule = GroupVisibility(torch.cat([gids + 1, gids], 1), gids, padding)
    with torch.no_grad():
        output, _ = two_stream_attention_forward(attention_module("flex_attention"), query, key, value, rule,
                                                 scaling=d**-0.5)
    assert "block_mask" in rule._cache and "dense" not in rule._cache  # it did run flex
    # The kernel writes in the query's layout, so the (batch, rows, heads, dim) output is that buffer, not a copy:
    # the attention's peak memory is its output (benchmarks/bench_scale.py, README "Long sequences").
    assert output.data_ptr() == kernel_outputs[0].data_ptr()
    torch.testing.assert_close(output, reference_attention(query, key, value, gids, padding, d**-0.5),
                               atol=1e-5, rtol=1e-5)


def padded_semi_ar_batch(seed: int):
    from hf_genssl import DataCollatorForSemiAutoregressiveLM

    generator = torch.Generator().manual_seed(seed)
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size="random", seed=seed)
    return collator([torch.randint(5, 500, (n,), generator=generator).tolist() for n in (21, 13, 17)])


@pytest.mark.parametrize("positions", ["rope", "absolute"])
def test_models_give_the_same_streams_with_every_backend(positions, uncompiled_flex):
    torch.manual_seed(0)
    models = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        config = tiny_config(num_hidden_layers=3, position_embedding_type=positions)
        models[implementation] = GenSSLModel._from_config(config, attn_implementation=implementation).eval()
        models[implementation].load_state_dict(models["eager"].state_dict())
    assert [m.config._attn_implementation for m in models.values()] == list(models)
    batch = padded_semi_ar_batch(0)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        outs = {name: model(**batch) for name, model in models.items()}
        queries_only = {name: model(**batch, return_content_stream=False) for name, model in models.items()}
    for name in ("sdpa", "flex_attention"):
        torch.testing.assert_close(outs[name].last_hidden_state[real], outs["eager"].last_hidden_state[real],
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(outs[name].query_hidden_state[real], outs["eager"].query_hidden_state[real],
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(queries_only[name].query_hidden_state[real],
                                   outs["eager"].query_hidden_state[real], atol=1e-5, rtol=1e-4)


def test_vit_gives_the_same_prediction_with_every_backend(uncompiled_flex):
    from hf_genssl import GenSSLViTConfig, GenSSLViTForPreTraining

    torch.manual_seed(0)
    models = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        config = GenSSLViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64)  # one each: the backend lives in it
        models[implementation] = GenSSLViTForPreTraining._from_config(config, attn_implementation=implementation)
        models[implementation].eval().load_state_dict(models["eager"].state_dict())
    assert [m.config._attn_implementation for m in models.values()] == list(models)
    pixels = torch.randn(2, 1, 16, 16)
    gids = torch.stack([torch.arange(16) // 4, (torch.rand(16) < 0.5).long()])  # semi-AR rows; masked two streams
    with torch.no_grad():
        for only_target_logits in (False, True):
            outs = {name: m(pixels, group_ids=gids, only_target_logits=only_target_logits)
                    for name, m in models.items()}
            for name in ("sdpa", "flex_attention"):
                torch.testing.assert_close(outs[name].logits, outs["eager"].logits, atol=1e-5, rtol=1e-4)


def test_flex_training_on_cpu_runs_sdpa_with_the_same_gradients(uncompiled_flex):
    """torch has no flex backward on CPU: a training forward falls back to sdpa (same gradients, no error)."""
    torch.manual_seed(0)
    flex = GenSSLForPreTraining._from_config(tiny_config(), attn_implementation="flex_attention")
    sdpa = GenSSLForPreTraining._from_config(tiny_config(), attn_implementation="sdpa")
    sdpa.load_state_dict(flex.state_dict())
    batch = padded_semi_ar_batch(1)
    flex(**batch).loss.backward()
    sdpa(**batch).loss.backward()
    for (name, a), b in zip(flex.named_parameters(), sdpa.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention backward needs CUDA in torch 2.13")
def test_flex_backward_on_cuda_equals_eager():
    torch.manual_seed(0)
    models = {}
    for implementation in ("eager", "flex_attention"):
        config = tiny_config(num_hidden_layers=2, max_position_embeddings=256)
        models[implementation] = GenSSLForPreTraining._from_config(config, attn_implementation=implementation).cuda()
        models[implementation].load_state_dict(models["eager"].state_dict())
    from hf_genssl import DataCollatorForSemiAutoregressiveLM

    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2, seed=0)
    batch = {k: v.cuda() for k, v in collator([list(range(5, 205)), list(range(7, 150))]).items()}
    for model in models.values():
        model(**batch).loss.backward()
    for (name, a), b in zip(models["flex_attention"].named_parameters(), models["eager"].parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def _assert_one_graph_with_the_eager_loss(model, batch: dict) -> None:
    """The training forward traces as one graph (no breaks), and the traced path (checks skipped, every position
    through the head) gives the eager loss."""
    explanation = torch._dynamo.explain(model)(**batch, only_target_logits=True)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    model.eval()
    traced = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(traced(**batch, only_target_logits=True).loss,
                                   model(**batch, only_target_logits=True).loss, atol=1e-6, rtol=1e-6)


def test_pretraining_forward_has_no_graph_breaks():
    """torch.compile sees one graph: no host syncs (value checks, data-dependent shapes) in the training forward."""
    from hf_genssl import DataCollatorForSemiAutoregressiveLM

    torch.manual_seed(0)
    model = GenSSLForPreTraining._from_config(tiny_config(), attn_implementation="sdpa").train()
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2, seed=0)
    batch = collator([list(range(10, 40)), list(range(50, 70))])
    _assert_one_graph_with_the_eager_loss(model, batch)


def test_compiled_training_forward_compiles_once():
    """Later batches of the same shape reuse the compiled graph: nothing in the forward keeps Python state that
    dynamo guards on (the RoPE table used to be cached in module attributes set by the first call: a recompile at
    the second, found with TORCH_LOGS=recompiles)."""
    from hf_genssl import DataCollatorForSemiAutoregressiveLM

    torch.manual_seed(0)
    model = GenSSLForPreTraining._from_config(tiny_config(), attn_implementation="sdpa").train()
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2, seed=0)
    compiled = torch.compile(model, backend="eager")  # dynamo's guards without inductor's compile time
    torch._dynamo.reset()  # graphs of other tests' models (same forward code, other instances) would count
    with torch._dynamo.config.patch(error_on_recompile=True):
        for start in (10, 20, 30):
            batch = collator([list(range(start, start + 30)), list(range(start + 40, start + 60))])
            compiled(**batch, only_target_logits=True).loss.backward()


def _vit_pretraining_batch(objective: str) -> tuple[object, dict]:
    """A tiny ViT pretraining model (sdpa) and a 3-image batch of ``objective``, made by the package's collators."""
    from hf_genssl import (
        DataCollatorForSemiAutoregressiveImages,
        DataCollatorForVariableLengthImageMasking,
        GenSSLViTConfig,
        GenSSLViTForPreTraining,
    )

    torch.manual_seed(0)
    config = GenSSLViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64)
    model = GenSSLViTForPreTraining._from_config(config, attn_implementation="sdpa").train()
    images = [torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    if objective == "semi_autoregressive":
        batch = DataCollatorForSemiAutoregressiveImages(patch_size=4, group_size=2, seed=0)(images)
    else:  # variable ratios, so each image has its own number of targets
        batch = DataCollatorForVariableLengthImageMasking(
            patch_size=4, seed=0, return_group_ids=objective == "masked_two_streams")(images)
        if objective == "masked_two_streams":
            batch.pop("bool_masked_pos")
    return model, batch


VIT_OBJECTIVES = ["semi_autoregressive", "masked", "masked_two_streams"]


@pytest.mark.parametrize("objective", VIT_OBJECTIVES)
def test_vit_pretraining_forward_has_no_graph_breaks(objective):
    """The ViT training forward is one graph too: under torch.compile the targets' count (data-dependent) sizes no
    tensor, so every patch is projected and the loss is a masked mean, equal to the eager loss."""
    model, batch = _vit_pretraining_batch(objective)
    targets = model(**batch).target_mask
    assert len(set(targets.sum(1).tolist())) > 1 or objective == "semi_autoregressive"  # counts differ per image
    _assert_one_graph_with_the_eager_loss(model, batch)


@pytest.mark.parametrize("objective", VIT_OBJECTIVES)
def test_vit_selected_patches_under_compile_equal_eager(objective):
    """``prediction_patches`` under torch.compile (static shapes: every patch index, the selected first) gives the
    same final rows at the selected patches as the eager path, which packs only the largest count."""
    model, batch = _vit_pretraining_batch(objective)
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "pixel_values"}
    selected = model(**batch).target_mask
    traced = torch.compile(model.vit, backend="eager", fullgraph=True)
    with torch.no_grad():
        eager = model.vit(batch["pixel_values"], prediction_patches=selected, **inputs)
        compiled = traced(batch["pixel_values"], prediction_patches=selected, **inputs)
    assert eager.prediction_hidden_state.shape[1] == int(selected.sum(1).max())
    assert compiled.prediction_hidden_state.shape[1] == selected.shape[1]
    torch.testing.assert_close(compiled.prediction_hidden_state[compiled.prediction_mask],
                               eager.prediction_hidden_state[eager.prediction_mask], atol=1e-5, rtol=1e-5)
