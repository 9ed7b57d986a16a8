"""The GenSSL ViT, its collators and evaluation, checked against independent computations on generated images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_genssl import (
    DataCollatorForSemiAutoregressiveImages,
    DataCollatorForVariableLengthImageMasking,
    GenSSLViTConfig,
    GenSSLViTForImageClassification,
    GenSSLViTForPreTraining,
    GenSSLViTModel,
)
from hf_genssl.models.modeling_genssl_vit import patchify, unpatchify
from hf_genssl.vision_eval import (
    fine_tune_eval,
    hide_patches,
    linear_probe_eval,
    normalize_pixels,
    pixel_normalization,
    reconstruct,
    reconstruction_eval,
)
from tests.conftest import run_isolated

SIZE, PATCH = 16, 4  # a 4 x 4 patch grid
GRID = SIZE // PATCH


def vit_config(**overrides) -> GenSSLViTConfig:
    values = dict(
        image_size=SIZE,
        patch_size=PATCH,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    values.update(overrides)
    return GenSSLViTConfig(**values)


def make_images(n: int, seed: int = 0, channels: int = 1, size: int = SIZE, classes: int = 4):
    """Stripes whose orientation is the class (0 horizontal, 1 vertical, 2 and 3 the diagonals), random phase,
    frequency and noise; normalised to about [-1, 1]. Returns ``(pixel_values, labels)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])[labels]
    coordinate = directions[:, 0, None, None] * y + directions[:, 1, None, None] * x
    frequency = 0.4 + 0.4 * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    images = torch.sin(frequency * coordinate + phase)[:, None].expand(n, channels, size, size)
    images = 0.8 * images + 0.1 * torch.randn(n, channels, size, size, generator=g)
    return images.contiguous(), labels


def make_planes(n: int, seed: int = 0) -> torch.Tensor:
    """Random brightness planes plus a little noise: every patch is predictable from the others."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    a, b, c = torch.rand(3, n, 1, 1, generator=g) * 2 - 1
    return (a + 0.5 * b * x + 0.5 * c * y)[:, None] + 0.05 * torch.randn(n, 1, SIZE, SIZE, generator=g)


# ------------------------------------------------------------------------------------------------------------
# The visibility rule through the ViT
# ------------------------------------------------------------------------------------------------------------

COLLATOR_SETUPS = {
    "AR raster": dict(order="raster", segment_size=1, group_size=1),
    "semi-AR raster g=2": dict(order="raster", segment_size=1, group_size=2),
    "RandSAC segments 2x2": dict(order="random", segment_size=2, group_size=1),
    "random order, sizes {1,3}": dict(order="random", segment_size=1, group_size=[1, 3]),
}


@pytest.mark.parametrize("setup", list(COLLATOR_SETUPS))
def test_query_and_content_streams_do_not_leak(setup):
    """Changing patch j's pixels changes no query prediction of a patch i with gid[i] <= gid[j] (and some later
    one), and no content row of a patch i with gid[i] < gid[j]."""
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(vit_config()).eval()
    collator = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, seed=1, **COLLATOR_SETUPS[setup])
    images, _ = make_images(1)
    batch = collator([{"pixel_values": images[0]}])
    gid = batch["group_ids"][0]
    with torch.no_grad():
        base = model.vit(batch["pixel_values"], group_ids=batch["group_ids"])
        for j in range(GRID * GRID):
            patches = patchify(batch["pixel_values"], PATCH)
            patches[0, j] += torch.randn(PATCH * PATCH)
            new = model.vit(unpatchify(patches, PATCH, 1, GRID), group_ids=batch["group_ids"])
            query_changed = (new.query_hidden_state - base.query_hidden_state)[0].abs().amax(-1) > 1e-6
            content_changed = (new.last_hidden_state - base.last_hidden_state)[0, 1:].abs().amax(-1) > 1e-6
            assert not query_changed[gid <= gid[j]].any(), f"patch {j} leaked into its own or an earlier group"
            assert not content_changed[gid < gid[j]].any(), f"patch {j} leaked into an earlier group's content"
            assert content_changed[j], "a patch's content row must see its own pixels"
            if (gid > gid[j]).any():
                assert query_changed[gid > gid[j]].any(), f"patch {j} influences no later group"


def test_masked_predictions_ignore_masked_pixels():
    """SimMIM path: the mask token replaces masked patches, so their pixels reach no output; visible ones do."""
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(vit_config(content_attention="bidirectional")).eval()
    images, _ = make_images(2)
    mask = DataCollatorForVariableLengthImageMasking(patch_size=PATCH, mask_ratio_range=(0.5, 0.5), seed=0).mask_for(
        2, GRID * GRID
    )
    patches = patchify(images, PATCH)
    noisy = patches + torch.randn_like(patches) * mask[..., None]
    with torch.no_grad():
        a = model(images, bool_masked_pos=mask).logits
        b = model(unpatchify(noisy, PATCH, 1, GRID), bool_masked_pos=mask).logits
        visible_changed = patches + torch.randn_like(patches) * (~mask)[..., None]
        c = model(unpatchify(visible_changed, PATCH, 1, GRID), bool_masked_pos=mask).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a[mask], c[mask])


def reference_streams(vit: GenSSLViTModel, pixel_values: torch.Tensor, group_ids: torch.Tensor):
    """The two streams as two separate attention computations per layer (XLNet's way), from the rule in words:
    CLS is visible to everyone; content patch i sees j iff gid[j] <= gid[i]; query i sees content j iff
    gid[j] < gid[i]."""
    emb = vit.embeddings
    n = GRID * GRID
    gid = group_ids[0]
    full = torch.cat([gid.new_tensor([-(10**6)]), gid])  # CLS below every patch
    content_mask = full[None, :] <= full[:, None]
    query_mask = full[None, :] < gid[:, None]
    x = emb.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)
    h = torch.cat([emb.cls_token[None, None], x], dim=1) + emb.position_embeddings
    g = (emb.query_stream_start + emb.position_embeddings[1:])[None]

    def attend(layer, x_q, x_kv, mask):
        a = layer.attn
        heads, d = a.num_heads, a.head_dim
        q = a.q_proj(x_q).view(1, -1, heads, d).transpose(1, 2)
        k = a.k_proj(x_kv).view(1, -1, heads, d).transpose(1, 2)
        v = a.v_proj(x_kv).view(1, -1, heads, d).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / d**0.5
        out = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        return a.o_proj(out.transpose(1, 2).reshape(1, -1, heads * d))

    for layer in vit.layers:
        hn, gn = layer.ln_1(h), layer.ln_1(g)
        h, g = h + attend(layer, hn, hn, content_mask), g + attend(layer, gn, hn, query_mask)
        h, g = h + layer.mlp(layer.ln_2(h)), g + layer.mlp(layer.ln_2(g))
    assert g.shape[1] == n
    return vit.layernorm(h), vit.layernorm(g)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_attention_call_equals_two_separate_streams(attn):
    torch.manual_seed(0)
    vit = GenSSLViTModel(vit_config(num_hidden_layers=3)).eval()
    vit.config._attn_implementation = attn
    collator = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, order="random", segment_size=2, seed=3)
    batch = collator([{"pixel_values": make_images(1, seed=5)[0][0]}])
    with torch.no_grad():
        out = vit(batch["pixel_values"], group_ids=batch["group_ids"])
        ref_h, ref_g = reference_streams(vit, batch["pixel_values"], batch["group_ids"])
    torch.testing.assert_close(out.last_hidden_state, ref_h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.query_hidden_state, ref_g, atol=1e-5, rtol=1e-4)


def test_causal_content_attention_is_raster_order_with_cls_first():
    torch.manual_seed(0)
    vit = GenSSLViTModel(vit_config(num_hidden_layers=1)).eval()
    vit.config._attn_implementation = "eager"
    with torch.no_grad():
        probs = vit(make_images(1)[0], output_attentions=True).attentions[0][0, 0]
    assert torch.equal(probs > 0, torch.ones(17, 17).tril().bool())


@pytest.mark.parametrize("mode", ["two_streams", "causal", "bidirectional", "masked"])
def test_sdpa_and_eager_agree(mode):
    torch.manual_seed(0)
    config = vit_config(content_attention="causal" if mode == "causal" else "bidirectional")
    sdpa, eager = GenSSLViTForPreTraining(config).eval(), GenSSLViTForPreTraining(config).eval()
    eager.load_state_dict(sdpa.state_dict())
    sdpa.config._attn_implementation = "sdpa"
    eager.config._attn_implementation = "eager"
    images, _ = make_images(3)
    kwargs = {}
    if mode == "two_streams":
        kwargs["group_ids"] = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, order="random", seed=0)(
            list(images)
        )["group_ids"]
    if mode == "masked":
        kwargs["bool_masked_pos"] = DataCollatorForVariableLengthImageMasking(patch_size=PATCH, seed=0).mask_for(
            3, GRID * GRID
        )
    with torch.no_grad():
        a, b = sdpa(images, **kwargs), eager(images, **kwargs)
        fa, fb = sdpa.vit.forward_features(images), eager.vit.forward_features(images)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-4)
    if a.loss is not None:
        torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-4)


def test_pretraining_skips_last_content_layer_without_changing_logits():
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(vit_config()).eval()
    images, _ = make_images(2)
    batch = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, group_size=2, seed=0)(list(images))
    with torch.no_grad():
        logits = model(**batch).logits
        full = model.vit(batch["pixel_values"], group_ids=batch["group_ids"])
    assert full.last_hidden_state is not None
    torch.testing.assert_close(logits, model.decoder(full.query_hidden_state), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_is_mse_over_target_patches(norm_pix_loss):
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(vit_config(norm_pix_loss=norm_pix_loss)).eval()
    images, _ = make_images(2)
    gids = torch.tensor([[0, 0, 1, 1] * 4, [3] * 8 + [5] * 8])  # any integers; the smallest group is context
    with torch.no_grad():
        out = model(images, group_ids=gids)
    expected_targets = torch.tensor([[False, False, True, True] * 4, [False] * 8 + [True] * 8])
    assert torch.equal(out.target_mask, expected_targets)
    se, count = 0.0, 0
    for b in range(2):
        for p in range(GRID * GRID):
            if not expected_targets[b, p]:
                continue
            r, c = divmod(p, GRID)
            target = images[b, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH].permute(1, 2, 0).flatten()
            if norm_pix_loss:
                target = (target - target.mean()) / (target.var() + 1e-6) ** 0.5
            se += float(((out.logits[b, p] - target) ** 2).sum())
            count += target.numel()
    assert out.loss.item() == pytest.approx(se / count, rel=1e-5)
    # labels override the targets
    only = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    only[0, 5] = True
    with torch.no_grad():
        single = model(images, group_ids=gids, labels=only)
    target = model.target_pixels(images)[0, 5]
    assert single.loss.item() == pytest.approx(float(((single.logits[0, 5] - target) ** 2).mean()), rel=1e-5)


@pytest.mark.parametrize(
    "objective", ["semi-AR sizes {1,2,3}", "MPNet-style two streams", "mask token", "mask token causal"]
)
def test_only_target_logits_is_exact_and_prunes(objective):
    """Skipping what no target needs changes neither the target predictions, nor the loss, nor the gradients."""
    torch.manual_seed(0)
    config = vit_config(
        num_hidden_layers=3,
        content_attention="causal" if objective in ("semi-AR sizes {1,2,3}", "mask token causal") else "bidirectional",
    )
    model = GenSSLViTForPreTraining(config)
    images, _ = make_images(4)
    masks = DataCollatorForVariableLengthImageMasking(
        patch_size=PATCH, mask_ratio_range=(0.1, 0.9), seed=0, return_group_ids=True
    )(list(images))
    assert len(set(masks["bool_masked_pos"].sum(1).tolist())) > 1  # padding is exercised
    if objective.startswith("semi-AR"):
        kwargs = {
            "group_ids": DataCollatorForSemiAutoregressiveImages(
                patch_size=PATCH, order="random", group_size=[1, 2, 3], seed=0
            )(list(images))["group_ids"]
        }
    elif objective.startswith("MPNet"):
        kwargs = {"group_ids": masks["group_ids"]}
    else:
        kwargs = {"bool_masked_pos": masks["bool_masked_pos"]}
    full = model(images, **kwargs, output_hidden_states=True)
    full.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    packed = model(images, **kwargs, only_target_logits=True, output_hidden_states=True)
    packed.loss.backward()
    torch.testing.assert_close(packed.logits, full.logits[full.target_mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.loss, full.loss, atol=1e-6, rtol=1e-5)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-4)
    if objective.startswith("MPNet"):  # content rows: CLS + the visible patches of the most visible image
        assert packed.hidden_states[0].shape[1] == 1 + int((~masks["bool_masked_pos"]).sum(1).max())
        assert full.hidden_states[0].shape[1] == 1 + GRID * GRID


# ------------------------------------------------------------------------------------------------------------
# Collators
# ------------------------------------------------------------------------------------------------------------


def segments_by_hand(grid: int, s: int) -> list[list[int]]:
    """Patches (raster index) of each s x s segment, segments in raster order, with plain loops."""
    segments = []
    for sr in range(grid // s):
        for sc in range(grid // s):
            segments.append([(sr * s + r) * grid + sc * s + c for r in range(s) for c in range(s)])
    return segments


@pytest.mark.parametrize("group_size", [1, 2, [1, 2, 3]])
def test_random_segment_order_is_a_permutation_of_whole_segments(group_size):
    grid, s = 8, 2
    collator = DataCollatorForSemiAutoregressiveImages(
        patch_size=2, segment_size=s, order="random", group_size=group_size, seed=0
    )
    batch = collator([torch.zeros(1, 16, 16) for _ in range(64)])
    assert batch["pixel_values"].shape == (64, 1, 16, 16)
    gids = batch["group_ids"]
    assert gids.shape == (64, grid * grid)
    segments = segments_by_hand(grid, s)
    sizes = [group_size] if isinstance(group_size, int) else group_size
    first_segments = []
    for row in gids:
        segment_gid = []
        for patches in segments:
            values = row[patches].unique()
            assert len(values) == 1, "a segment was split across groups"
            segment_gid.append(int(values))
        # Groups are consecutive in the order: ids 0..G-1, all used, each holding an allowed number of segments.
        counts = np.bincount(segment_gid)
        assert (counts > 0).all()
        assert all(c in sizes for c in counts[:-1]) and 1 <= counts[-1] <= max(sizes)
        first_segments.extend(i for i, g in enumerate(segment_gid) if g == 0)
    # Every segment leads some order (random per image), none dominates.
    frequency = np.bincount(first_segments, minlength=len(segments)) / len(first_segments)
    assert (frequency > 0).all() and frequency.max() < 0.2
    assert len({tuple(r.tolist()) for r in gids}) > 60


def test_raster_orders_by_hand():
    ar = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, group_size=1)
    assert torch.equal(ar.group_ids_for(2, GRID, GRID), torch.arange(16).expand(2, 16))
    g2 = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, group_size=2)
    assert g2.group_ids_for(1, GRID, GRID)[0].tolist() == [i // 2 for i in range(16)]
    seg = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, segment_size=2, group_size=1)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).flatten()
    assert torch.equal(seg.group_ids_for(1, GRID, GRID)[0], expected)


def test_collators_accept_pil_images_with_an_image_processor():
    from PIL import Image
    from transformers import ViTImageProcessorPil

    processor = ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=[0.5], image_std=[0.5])
    pil = [Image.fromarray((np.random.default_rng(i).random((20, 20)) * 255).astype("uint8")) for i in range(3)]
    for collator in (
        DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, image_processor=processor),
        DataCollatorForVariableLengthImageMasking(patch_size=PATCH, image_processor=processor),
    ):
        batch = collator([{"image": image, "label": 1} for image in pil])
        assert batch["pixel_values"].shape == (3, 1, SIZE, SIZE)
        assert "labels" not in batch


@pytest.mark.parametrize("stratified", [True, False])
def test_mask_ratio_statistics(stratified):
    lo, hi, n = 0.2, 0.8, 64
    collator = DataCollatorForVariableLengthImageMasking(
        patch_size=2, mask_ratio_range=(lo, hi), stratified=stratified, seed=0
    )
    ratios = torch.cat([collator.mask_for(16, n).float().mean(1) for _ in range(300)])
    assert abs(float(ratios.mean()) - (lo + hi) / 2) < 0.02
    assert float(ratios.min()) <= lo + 0.02 and float(ratios.max()) >= hi - 0.02  # covers the range
    assert float(ratios.min()) >= lo - 1 / n and float(ratios.max()) <= hi + 1 / n
    histogram = torch.histc(ratios, bins=6, min=lo, max=hi)
    assert histogram.min() > 0.5 * histogram.mean()  # roughly uniform
    if stratified:  # each batch spreads over the range
        batch = collator.mask_for(16, n).float().mean(1)
        assert float(batch.min()) < lo + 0.1 and float(batch.max()) > hi - 0.1
    batch = collator([torch.zeros(1, 16, 16)] * 4)
    assert batch["bool_masked_pos"].shape == (4, n) and batch["bool_masked_pos"].dtype == torch.bool


@pytest.mark.parametrize("ratio_range", [(0.01, 0.02), (0.97, 0.99), (0.75, 0.75)])
def test_mask_never_empty_nor_full_and_exact_count(ratio_range):
    n = 16
    collator = DataCollatorForVariableLengthImageMasking(
        patch_size=PATCH, mask_ratio_range=ratio_range, seed=0, return_group_ids=True
    )
    counts = torch.cat([collator.mask_for(32, n).sum(1) for _ in range(50)])
    assert int(counts.min()) >= 1 and int(counts.max()) <= n - 1
    if ratio_range == (0.75, 0.75):
        assert (counts == 12).all()  # MAE's fixed ratio: exactly round(0.75 * 16) per image
    batch = collator([torch.zeros(1, SIZE, SIZE)] * 2)
    assert torch.equal(batch["group_ids"], batch["bool_masked_pos"].long())


# ------------------------------------------------------------------------------------------------------------
# Training, ecosystem
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["semi-AR", "masked"])
def test_tiny_model_trains_and_loss_falls(objective):
    torch.manual_seed(0)
    config = vit_config(content_attention="causal" if objective == "semi-AR" else "bidirectional")
    model = GenSSLViTForPreTraining(config).train()
    if objective == "semi-AR":
        collator = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, order="random", group_size=2, seed=0)
    else:
        collator = DataCollatorForVariableLengthImageMasking(patch_size=PATCH, mask_ratio_range=(0.3, 0.7), seed=0)
    examples = [{"pixel_values": image} for image in make_planes(32, seed=1)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**collator(examples)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


@pytest.mark.slow
def test_trust_remote_code_in_a_process_without_hf_genssl(tmp_path):
    from transformers import ViTImageProcessorPil

    torch.manual_seed(0)
    checkpoint = tmp_path / "ckpt"
    model = GenSSLViTForPreTraining(vit_config(id2label={0: "h", 1: "v", 2: "d", 3: "a"})).eval()
    model.save_pretrained(checkpoint)
    ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=[0.5], image_std=[0.5]).save_pretrained(
        checkpoint
    )
    for name in ("configuration_genssl_vit.py", "modeling_genssl_vit.py", "two_stream_attention.py"):
        assert (checkpoint / name).exists(), f"{name} missing from the checkpoint"
    images, _ = make_images(2)
    gids = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, order="random", seed=0)(list(images))["group_ids"]
    mask = DataCollatorForVariableLengthImageMasking(patch_size=PATCH, seed=0).mask_for(2, GRID * GRID)
    torch.save({"images": images, "gids": gids, "mask": mask}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = {
            "two_stream": model(images, group_ids=gids).logits,
            "masked": model(images, bool_masked_pos=mask).logits,
            "features": model.vit.forward_features(images),
        }
    script = f"""
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining, pipeline
    path = {str(checkpoint)!r}
    inputs = torch.load({str(tmp_path / "inputs.pt")!r})
    out = {{}}
    with torch.no_grad():
        model = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True).eval()
        assert "hf_genssl" not in type(model).__module__
        out["two_stream"] = model(inputs["images"], group_ids=inputs["gids"]).logits
        out["masked"] = model(inputs["images"], bool_masked_pos=inputs["mask"]).logits
        out["features"] = AutoModel.from_pretrained(path, trust_remote_code=True).eval().forward_features(
            inputs["images"])
    classify = pipeline("image-classification", model=path, trust_remote_code=True)
    out["labels"] = [p["label"] for p in classify(np.zeros((16, 16, 1), dtype=np.uint8), top_k=4)]
    torch.save(out, {str(tmp_path / "out.pt")!r})
    """
    result = run_isolated(script, cwd=tmp_path, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert sorted(got["labels"]) == ["a", "d", "h", "v"]


def test_image_classification_pipeline_returns_labels(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessorPil, pipeline

    labels = {0: "horizontal", 1: "vertical", 2: "diagonal", 3: "anti-diagonal"}
    for channels in (3, 1):
        torch.manual_seed(0)
        model = GenSSLViTForImageClassification(vit_config(num_channels=channels, id2label=labels)).eval()
        path = tmp_path / f"c{channels}"
        model.save_pretrained(path)
        ViTImageProcessorPil(
            size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * channels, image_std=[0.5] * channels
        ).save_pretrained(path)
        classify = pipeline("image-classification", model=str(path))
        image = (np.random.default_rng(0).random((24, 24, 1)) * 255).astype("uint8")
        # The pipeline converts PIL images to RGB; a grayscale model takes (H, W, 1) arrays instead.
        inputs = Image.fromarray(image[..., 0]).convert("RGB") if channels == 3 else image
        predictions = classify(inputs, top_k=2)
        assert len(predictions) == 2 and all(p["label"] in labels.values() for p in predictions)
        assert predictions[0]["score"] >= predictions[1]["score"]


def test_pretrained_backbone_loads_into_the_classifier_and_auto_classes(tmp_path):
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

    torch.manual_seed(0)
    pretrained = GenSSLViTForPreTraining(vit_config())
    pretrained.save_pretrained(tmp_path)
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is GenSSLViTForPreTraining
    assert type(AutoModel.from_pretrained(tmp_path)) is GenSSLViTModel
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=4)
    assert type(classifier) is GenSSLViTForImageClassification
    pretrained_state, classifier_state = pretrained.vit.state_dict(), classifier.vit.state_dict()
    # The classifier never uses the mask token or the query stream, so it has neither (DDP needs every parameter used).
    assert set(pretrained_state) - set(classifier_state) == {"embeddings.mask_token", "embeddings.query_stream_start"}
    for name, value in classifier_state.items():
        assert torch.equal(pretrained_state[name], value), name


def test_trainer_runs_semi_autoregressive_pretraining(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = GenSSLViTForPreTraining(vit_config())
    data = Dataset.from_dict({"pixel_values": make_planes(16).numpy()}).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
    )
    collator = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, order="random", group_size=2, seed=0)
    result = Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(vit_config()).train()
    images = make_planes(4)
    gids = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, group_size=2)(list(images))["group_ids"]
    model(images, group_ids=gids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(images, group_ids=gids).loss.backward()
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5)


def test_freeze_backbone_trains_only_the_head():
    torch.manual_seed(0)
    model = GenSSLViTForImageClassification(vit_config(num_labels=4, hidden_dropout_prob=0.1)).freeze_backbone()
    model.train()
    assert not model.vit.training and model.classifier.training
    images, labels = make_images(8)
    model(images, labels=labels).loss.backward()
    assert all(p.grad is None for p in model.vit.parameters())
    assert model.classifier.weight.grad is not None
    model.freeze_backbone(False)
    assert model.vit.training and all(p.requires_grad for p in model.vit.parameters())


def test_pooling_choices():
    torch.manual_seed(0)
    images, _ = make_images(2)
    for pooling in ("mean", "cls"):
        model = GenSSLViTForImageClassification(
            vit_config(num_labels=4, classifier_pooling=pooling, content_attention="bidirectional")
        ).eval()
        with torch.no_grad():
            features = model.vit.forward_features(images)
            expected = features[:, 0] if pooling == "cls" else features[:, 1:].mean(1)
            torch.testing.assert_close(model(images).logits, model.classifier(expected))


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["two_stream", "masked"])
def test_sequential_reconstruction_matches_a_loop_by_hand(mode, tmp_path):
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(
        vit_config(content_attention="causal" if mode == "two_stream" else "bidirectional")
    ).eval()
    images, _ = make_images(3)
    hidden = hide_patches(3, GRID * GRID, 0.25, seed=0)
    assert (hidden.sum(1) == 4).all()
    recon = reconstruct(model, images, hidden, mode=mode)
    # Independent loop: one image, one hidden patch at a time, the patches not yet predicted filled with noise.
    # Two streams: visible = group 0, the i-th predicted patch group 1 + i, the one to predict next, then one group
    # for all the rest; masked: the patches not yet predicted are masked.
    for b in range(3):
        todo = torch.nonzero(hidden[b]).flatten().tolist()
        current = patchify(images[b : b + 1], PATCH).clone()
        current[0, todo] = torch.randn(len(todo), PATCH * PATCH)
        for k, target in enumerate(todo):
            with torch.no_grad():
                if mode == "two_stream":
                    gids = torch.zeros(1, GRID * GRID, dtype=torch.long)
                    gids[0, todo[k:]] = 100
                    gids[0, todo[: k + 1]] = torch.arange(1, k + 2)
                    logits = model(unpatchify(current, PATCH, 1, GRID), group_ids=gids).logits
                else:
                    still_hidden = torch.zeros(1, GRID * GRID, dtype=torch.bool)
                    still_hidden[0, todo[k:]] = True
                    logits = model(unpatchify(current, PATCH, 1, GRID), bool_masked_pos=still_hidden).logits
            current[0, target] = logits[0, target]
        torch.testing.assert_close(recon[b : b + 1], unpatchify(current, PATCH, 1, GRID), atol=1e-5, rtol=1e-4)
    visible = ~unpatchify(hidden[..., None].float().expand(-1, -1, PATCH * PATCH), PATCH, 1, GRID).bool()
    assert torch.equal(recon[visible], images[visible])

    metrics = reconstruction_eval(model, images, mode=mode, grid_path=tmp_path / "grid.png")
    l2 = float(((recon - images) ** 2)[~visible].mean())
    assert metrics["l2"] == pytest.approx(l2, rel=1e-4)
    # the constant-guess baseline, patch by patch: each hidden pixel = the mean of the image's visible pixels
    patches = patchify(images, PATCH)
    by_hand = [((patches[b][hidden[b]] - patches[b][~hidden[b]].mean()) ** 2).mean() for b in range(3)]
    assert metrics["baseline_l2"] == pytest.approx(float(torch.stack(by_hand).mean()), rel=1e-5)
    assert math.isfinite(metrics["psnr"]) and metrics["hidden_patches"] == 4
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > grid.height / 3  # three columns


def test_linear_probe_and_fine_tune_beat_chance():
    torch.manual_seed(0)
    model = GenSSLViTForPreTraining(vit_config(content_attention="bidirectional"))
    train, train_labels = make_images(96, seed=1)
    test, test_labels = make_images(48, seed=2)
    probe = linear_probe_eval(model, train, train_labels, test, test_labels)
    tuned = fine_tune_eval(model, train, train_labels, test, test_labels, epochs=4, lr=3e-3, batch_size=32)
    assert probe > 0.4 and tuned > 0.4  # 4 classes: chance is 0.25


def test_pixel_normalization_follows_the_image_processor():
    from transformers import ViTImageProcessorPil

    # what GenSSL ViT pretraining saves: rescale to [0, 1], no normalisation
    assert pixel_normalization(ViTImageProcessorPil(do_normalize=False)) == ([0.0], [1.0])
    rgb = ViTImageProcessorPil(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.5])
    assert pixel_normalization(rgb) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    with pytest.raises(ValueError, match="rescales 0-255 pixels to"):
        pixel_normalization(ViTImageProcessorPil(rescale_factor=1 / 127.5))
    pixels = torch.rand(2, 3, 4, 4)
    by_hand = torch.stack([(pixels[:, 0] - 0.5) / 0.2, (pixels[:, 1] - 0.4) / 0.25, (pixels[:, 2] - 0.3) / 0.5], 1)
    torch.testing.assert_close(normalize_pixels(pixels, *pixel_normalization(rgb)), by_hand)
    torch.testing.assert_close(normalize_pixels(pixels, [0.0], [1.0]), pixels)


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"image_size \(30\) must be divisible by patch_size \(4\)"):
        GenSSLViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="segment_size=3 does not divide the 4x4 patch grid; use one of"):
        DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, segment_size=3)([torch.zeros(1, SIZE, SIZE)])
    with pytest.raises(ValueError, match="do not split into 5x5 patches"):
        DataCollatorForSemiAutoregressiveImages(patch_size=5)([torch.zeros(1, SIZE, SIZE)])
    model = GenSSLViTForPreTraining(vit_config())
    with pytest.raises(ValueError, match=r"3 channels\).*config.num_channels=1.*convert\('L'\)"):
        model(torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="resize the images"):
        model(torch.zeros(1, 1, SIZE + 4, SIZE + 4))
    with pytest.raises(ValueError, match="group_ids has shape"):
        model(torch.zeros(1, 1, SIZE, SIZE), group_ids=torch.zeros(1, 17, dtype=torch.long))
    for bad in [(0.5, 0.2), (0.0, 0.5), (0.5, 1.0), (-0.1, 0.3)]:
        with pytest.raises(ValueError, match=r"mask_ratio_range must satisfy 0 < lo <= hi < 1.*\(0.75, 0.75\)"):
            DataCollatorForVariableLengthImageMasking(patch_size=PATCH, mask_ratio_range=bad)
