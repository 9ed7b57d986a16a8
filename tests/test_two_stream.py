"""The one visibility rule and the two-stream model, checked against independent computations."""

from __future__ import annotations

import pytest
import torch

from hf_genssl import (
    DataCollatorForSemiAutoregressiveLM,
    DataCollatorForVariableLengthMasking,
    GenSSLForPreTraining,
    GenSSLModel,
)
from hf_genssl.models.two_stream_attention import visibility_mask
from tests.conftest import tiny_config


def reference_mask(gids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 2T, T) built with plain loops straight from the rule in REFERENCE.md section 2."""
    B, T = gids.shape
    mask = torch.zeros(B, 2 * T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                if not valid[b, j]:
                    continue
                mask[b, i, j] = bool(gids[b, j] <= gids[b, i])  # content stream
                mask[b, T + i, j] = bool(gids[b, j] < gids[b, i])  # query stream
    return mask


def random_batch(seed: int, B: int = 3, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size="random", seed=seed)
    lengths = torch.randint(3, T + 1, (B,), generator=g).tolist()
    examples = [torch.randint(5, 500, (n,), generator=g).tolist() for n in lengths]
    return collator(examples)


@pytest.mark.parametrize("seed", range(5))
def test_visibility_mask_equals_rule_built_by_hand(seed):
    batch = random_batch(seed)
    gids, valid = batch["group_ids"], batch["attention_mask"].bool()
    limits = torch.cat([gids + 1, gids], dim=1)
    mask = visibility_mask(limits, gids, valid)[:, 0]
    expected = reference_mask(gids, valid)
    # Rows with nothing visible are pointed at the first real key (the BOS); everywhere else: the rule exactly.
    empty = ~expected.any(-1)
    assert torch.equal(mask[~empty], expected[~empty])
    guard = torch.zeros_like(expected)
    guard[..., 0] = True
    assert torch.equal(mask[empty], guard[empty])
    # The only empty rows are query rows of group 0 (the BOS, never a target).
    B, T = gids.shape
    rows = torch.nonzero(empty)
    assert all(r >= T and gids[b, r - T] == 0 for b, r in rows.tolist())


def test_model_attends_exactly_where_the_rule_allows():
    """Eager attention probabilities are non-zero exactly where the hand-built mask says so."""
    torch.manual_seed(0)
    model = GenSSLModel(tiny_config(num_hidden_layers=1)).eval()
    model.config._attn_implementation = "eager"
    batch = random_batch(1)
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"], group_ids=batch["group_ids"],
                output_attentions=True)
    probs = out.attentions[0][:, 0]  # (B, 2T, T) head 0
    expected = reference_mask(batch["group_ids"], batch["attention_mask"].bool())
    rows = expected.any(-1)
    assert torch.equal((probs > 0)[rows], expected[rows])


def two_stream_reference(model: GenSSLModel, input_ids, group_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The two streams as two separate attention computations per layer (XLNet's way), no padding."""
    T = input_ids.shape[1]
    gid = group_ids[0]
    content_mask = gid[None, :] <= gid[:, None]
    query_mask = gid[None, :] < gid[:, None]
    query_mask[~query_mask.any(-1), 0] = True  # the BOS query row, as the model does
    H, d = model.config.num_attention_heads, model.config.head_dim
    if model.config.position_embedding_type == "rope":  # rotate q and k by their positions (Llama convention)
        angles = torch.arange(T)[:, None] / (model.config.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2) / d))
        angles = torch.cat([angles, angles], dim=-1)

        def rope(x):
            return x * angles.cos() + torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1) * angles.sin()

        h = model.embed_tokens(input_ids)
        g = model.query_stream_start.expand(1, T, -1)
    else:
        def rope(x):
            return x

        pos = model.embed_positions(torch.arange(T))
        h = model.embed_tokens(input_ids) + pos
        g = model.query_stream_start + pos[None]

    def attend(layer, x_q, x_kv, mask):
        a = layer.attn
        q = rope(a.q_proj(x_q).view(1, T, H, d).transpose(1, 2))
        k = rope(a.k_proj(x_kv).view(1, T, H, d).transpose(1, 2))
        v = a.v_proj(x_kv).view(1, T, H, d).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / d**0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        return a.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, T, H * d))

    for layer in model.layers:
        hn, gn = layer.ln_1(h), layer.ln_1(g)
        h, g = h + attend(layer, hn, hn, content_mask), g + attend(layer, gn, hn, query_mask)
        h, g = h + layer.mlp(layer.ln_2(h)), g + layer.mlp(layer.ln_2(g))
    return model.norm(h), model.norm(g)


@pytest.mark.parametrize("positions,head_dim", [("rope", None), ("absolute", None), ("rope", 12)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_call_equals_two_separate_streams(attn, positions, head_dim):
    """head_dim 12: heads narrower than hidden_size / heads (32 / 4), projections 32 -> 48 -> 32."""
    torch.manual_seed(0)
    model = GenSSLModel(tiny_config(num_hidden_layers=3, position_embedding_type=positions, head_dim=head_dim)).eval()
    model.config._attn_implementation = attn
    batch = random_batch(3, B=1, T=11)
    with torch.no_grad():
        out = model(batch["input_ids"], group_ids=batch["group_ids"])
        ref_h, ref_g = two_stream_reference(model, batch["input_ids"], batch["group_ids"])
    torch.testing.assert_close(out.last_hidden_state, ref_h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.query_hidden_state, ref_g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("group_size", [1, 2, [1, 3], "random"])
def test_query_stream_does_not_leak(group_size):
    """Changing token j changes no query prediction at i with gid[i] <= gid[j], and does change a later one."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config()).eval()
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=group_size, seed=0)
    batch = collator([list(range(10, 30))])
    gid = batch["group_ids"][0]
    with torch.no_grad():
        base = model(**batch).logits[0]
        for j in range(1, gid.shape[0]):
            ids = batch["input_ids"].clone()
            ids[0, j] = 500 - ids[0, j]
            new = model(input_ids=ids, group_ids=batch["group_ids"]).logits[0]
            changed = (new - base).abs().amax(-1) > 1e-6
            assert not changed[gid <= gid[j]].any(), f"token {j} leaked into its own or an earlier group"
            if (gid > gid[j]).any():
                assert changed[gid > gid[j]].any(), f"token {j} influences no later group"


def test_mpnet_style_masked_two_streams_do_not_leak():
    """Masked objective as two streams (targets = group 1): a target's own token never reaches any target's
    prediction."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config()).eval()
    collator = DataCollatorForVariableLengthMasking(
        bos_token_id=1, pad_token_id=0, mask_token_id=4, mask_ratio_range=(0.4, 0.4), return_group_ids=True, seed=0
    )
    batch = collator([list(range(10, 30))])
    targets = batch["labels"][0] != -100
    with torch.no_grad():
        base = model(**batch).logits[0]
        for j in torch.nonzero(targets).flatten().tolist():
            ids = batch["input_ids"].clone()
            ids[0, j] = 7
            new = model(input_ids=ids, group_ids=batch["group_ids"]).logits[0]
            assert torch.allclose(new[targets], base[targets], atol=1e-6)
        context = torch.nonzero(~targets).flatten()[1].item()  # a visible, non-BOS token
        ids = batch["input_ids"].clone()
        ids[0, context] = 7
        assert not torch.allclose(model(input_ids=ids, group_ids=batch["group_ids"]).logits[0][targets], base[targets])


def test_masked_content_stream_prediction_ignores_original_token():
    """With every target replaced by [MASK], the prediction at a target is the same whatever its original token."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config(content_attention="bidirectional")).eval()
    collator = DataCollatorForVariableLengthMasking(
        bos_token_id=1, pad_token_id=0, mask_token_id=4, mask_ratio_range=(0.3, 0.3),
        mask_replace_prob=1.0, random_replace_prob=0.0, seed=0,
    )
    original = list(range(10, 30))
    batch = collator([original])
    targets = batch["labels"][0] != -100
    perturbed = [t + 100 if targets[i + 1] else t for i, t in enumerate(original)]  # +1: BOS in front
    batch2 = DataCollatorForVariableLengthMasking(
        bos_token_id=1, pad_token_id=0, mask_token_id=4, mask_ratio_range=(0.3, 0.3),
        mask_replace_prob=1.0, random_replace_prob=0.0, seed=0,
    )([perturbed])
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert not torch.equal(batch["labels"], batch2["labels"])
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"]).logits
        b = model(input_ids=batch2["input_ids"]).logits
    assert torch.equal(a, b)
    # ... while a visible token does matter to the masked predictions (bidirectional context).
    ids = batch["input_ids"].clone()
    visible = torch.nonzero(~targets).flatten()[1].item()
    ids[0, visible] = 7
    with torch.no_grad():
        c = model(input_ids=ids).logits
    assert not torch.allclose(c[0, targets], a[0, targets])


@pytest.mark.parametrize("content_attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("two_streams", [True, False])
def test_sdpa_and_eager_agree(content_attention, two_streams):
    torch.manual_seed(0)
    config = tiny_config(content_attention=content_attention)
    sdpa = GenSSLModel(config).eval()
    eager = GenSSLModel(config).eval()
    eager.load_state_dict(sdpa.state_dict())
    sdpa.config._attn_implementation = "sdpa"
    eager.config._attn_implementation = "eager"
    batch = random_batch(7)
    kwargs = dict(attention_mask=batch["attention_mask"], group_ids=batch["group_ids"] if two_streams else None)
    with torch.no_grad():
        a, b = sdpa(batch["input_ids"], **kwargs), eager(batch["input_ids"], **kwargs)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=1e-5, rtol=1e-4)
    if two_streams:
        torch.testing.assert_close(a.query_hidden_state[real], b.query_hidden_state[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("content_attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("two_streams", [True, False])
def test_padding_does_not_change_real_tokens(content_attention, two_streams):
    torch.manual_seed(0)
    model = GenSSLModel(tiny_config(content_attention=content_attention)).eval()
    batch = random_batch(11, B=4)
    with torch.no_grad():
        padded = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       group_ids=batch["group_ids"] if two_streams else None)
        for b in range(4):
            n = int(batch["attention_mask"][b].sum())
            alone = model(batch["input_ids"][b : b + 1, :n],
                          group_ids=batch["group_ids"][b : b + 1, :n] if two_streams else None)
            torch.testing.assert_close(padded.last_hidden_state[b, :n], alone.last_hidden_state[0],
                                       atol=1e-5, rtol=1e-4)
            if two_streams:
                torch.testing.assert_close(padded.query_hidden_state[b, :n], alone.query_hidden_state[0],
                                           atol=1e-5, rtol=1e-4)


def test_left_padding_matches_unpadded():
    torch.manual_seed(0)
    model = GenSSLModel(tiny_config()).eval()
    ids = torch.tensor([[1, 20, 21, 22]])
    left = torch.tensor([[0, 0, 1, 20, 21, 22]])
    with torch.no_grad():
        a = model(ids).last_hidden_state
        b = model(left, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]])).last_hidden_state
    torch.testing.assert_close(a[0], b[0, 2:], atol=1e-5, rtol=1e-4)


def test_pretraining_skips_last_content_layer_without_changing_logits():
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config()).eval()
    batch = random_batch(2)
    with torch.no_grad():
        logits = model(**batch).logits
        full = model.model(batch["input_ids"], attention_mask=batch["attention_mask"], group_ids=batch["group_ids"])
    torch.testing.assert_close(logits, model.lm_head(full.query_hidden_state), atol=1e-5, rtol=1e-4)


def test_only_target_logits_gives_the_same_loss():
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config(content_attention="bidirectional")).eval()
    collator = DataCollatorForVariableLengthMasking(bos_token_id=1, pad_token_id=0, mask_token_id=4, vocab_size=512,
                                                    mask_ratio_range=(0.15, 0.15), seed=0)
    batch = collator([list(range(10, 40)), list(range(50, 61))])
    with torch.no_grad():
        full = model(**batch)
        packed = model(**batch, only_target_logits=True)
    targets = batch["labels"] != -100
    torch.testing.assert_close(packed.logits, full.logits[targets], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.loss, full.loss, atol=1e-5, rtol=1e-4)
    # The loss is the mean cross-entropy over targets, computed independently:
    logp = full.logits.log_softmax(-1)[targets].gather(-1, batch["labels"][targets][:, None])
    torch.testing.assert_close(full.loss, -logp.mean(), atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config())
    batch = random_batch(5)
    model.train()
    model(**batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**batch).loss.backward()
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = GenSSLForPreTraining(tiny_config(max_position_embeddings=16)).eval()
    ids = torch.randint(5, 500, (2, 10))
    with pytest.raises(ValueError, match="group_ids has shape"):
        model(input_ids=ids, group_ids=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="labels has shape"):
        model(input_ids=ids, labels=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(input_ids=torch.randint(5, 500, (1, 17)))
    from hf_genssl import GenSSLConfig

    with pytest.raises(ValueError, match="divisible"):
        GenSSLConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="content_attention"):
        GenSSLConfig(content_attention="sideways")


def test_rope_matches_rotate_half_reference_and_is_relative():
    """apply_rotary (signed-sin, half swap) equals the textbook rotate-half RoPE, and q.k depends only on the offset."""
    from hf_genssl.models.two_stream_attention import apply_rotary, rotary_cos_sin

    head_dim, generator = 8, torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, head_dim, generator=generator)
    positions = torch.tensor([[0, 1, 2, 7, 30], [4, 4, 5, 9, 11]])
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
    cos, sin = rotary_cos_sin(positions, inv_freq)
    # Reference written out independently: angle_k = pos / 10000^(2k/d), pairs (k, k + d/2) rotated by angle_k.
    reference_freq = torch.tensor([10000.0 ** (-2 * k / head_dim) for k in range(head_dim // 2)])
    angle = positions[..., None].double() * reference_freq.double()
    x1, x2 = x[..., : head_dim // 2].double(), x[..., head_dim // 2 :].double()
    c, s = angle.cos()[:, None], angle.sin()[:, None]
    reference = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    torch.testing.assert_close(apply_rotary(x, cos[:, None], sin[:, None]).double(), reference, atol=1e-5, rtol=1e-5)

    q, k = torch.randn(head_dim, generator=generator), torch.randn(head_dim, generator=generator)

    def score(pos_q: int, pos_k: int) -> float:
        cq, sq = rotary_cos_sin(torch.tensor([[pos_q]]), inv_freq)
        ck, sk = rotary_cos_sin(torch.tensor([[pos_k]]), inv_freq)
        return float(apply_rotary(q.view(1, 1, 1, -1), cq[:, None], sq[:, None]).flatten()
                     @ apply_rotary(k.view(1, 1, 1, -1), ck[:, None], sk[:, None]).flatten())

    assert abs(score(10, 7) - score(23, 20)) < 1e-4  # same offset, same score
    assert abs(score(10, 7) - score(10, 2)) > 1e-3  # different offset, different score


def test_rope_attention_scores_depend_on_each_rows_own_position():
    """First-layer attention of both streams, recomputed with RoPE as complex rotations (pair (m, m + d/2) of a head is
    the complex number q_m + i q_{m+d/2}, turned by position * theta^(-2m/d)): content rows and keys sit at the token
    positions, each query row at the position of the token it predicts. Uneven positions, so any swap shows."""
    torch.manual_seed(0)
    model = GenSSLModel(tiny_config(num_hidden_layers=1, initializer_range=0.2)).eval()
    model.config._attn_implementation = "eager"
    ids = torch.tensor([[1, 17, 42, 99, 7, 230, 64]])
    gids = torch.tensor([[0, 1, 1, 2, 3, 3, 4]])
    positions = torch.tensor([[0, 1, 2, 4, 7, 8, 12]])
    with torch.no_grad():
        probs = model(ids, group_ids=gids, position_ids=positions, output_attentions=True).attentions[0][0]
        layer, T = model.layers[0], ids.shape[1]
        H, d = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
        content = layer.ln_1(model.embed_tokens(ids[0]))
        query_rows = layer.ln_1(model.query_stream_start.expand(T, -1))

        def turned(x, pos):  # (T, hidden) -> (H, T, d/2) complex, rotated by the positions
            x = x.view(T, H, d).transpose(0, 1).double()
            theta = model.config.rope_parameters["rope_theta"] ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
            return torch.complex(x[..., : d // 2], x[..., d // 2 :]) * torch.polar(
                torch.ones(T, d // 2, dtype=torch.float64), pos[0, :, None].double() * theta)

        keys = turned(layer.attn.k_proj(content), positions)
        expected = []
        for rows, see in ((content, gids[0, None, :] <= gids[0, :, None]),
                          (query_rows, gids[0, None, :] < gids[0, :, None])):
            scores = (turned(layer.attn.q_proj(rows), positions) @ keys.conj().transpose(-1, -2)).real / d**0.5
            expected.append(scores.masked_fill(~see, float("-inf")).softmax(-1))
        expected = torch.cat(expected, dim=1)  # (H, 2T, T)
    seen = torch.isfinite(expected).all(-1)  # the BOS query row sees nothing (the model points it at the BOS)
    assert seen.sum() == H * (2 * T - 1)
    torch.testing.assert_close(probs.double()[seen], expected[seen], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 16, 17])
@pytest.mark.parametrize("bias", [True, False])
def test_skinny_linear_equals_the_module(rows, bias):
    """The W @ x.T path for decoding steps computes exactly what nn.Linear computes, for any number of rows."""
    from hf_genssl.models.two_stream_attention import skinny_linear

    layer = torch.nn.Linear(32, 48, bias=bias)
    x = torch.randn(1, rows, 32, generator=torch.Generator().manual_seed(rows))
    out = skinny_linear(layer, x)
    assert out.shape == (1, rows, 48) and out.is_contiguous()
    torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)


def test_feed_forward_renamed_with_its_checkpoint_keys_unchanged():
    """``TwoStreamMLP`` is ``GenSSLMLP`` now; the old name still resolves (FutureWarning) and a block's state-dict keys,
    which checkpoints store, are the ones they always were (module attribute names, not class names, make them)."""
    from hf_genssl.models import two_stream_attention

    with pytest.warns(FutureWarning, match="GenSSLMLP"):
        assert two_stream_attention.TwoStreamMLP is two_stream_attention.GenSSLMLP
    block = two_stream_attention.TwoStreamBlock(tiny_config(), 0)
    assert sorted(block.state_dict()) == sorted(
        f"{module}.{kind}"
        for module in ("ln_1", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ln_2", "mlp.fc_in",
                       "mlp.fc_out")
        for kind in ("weight", "bias")
    )
