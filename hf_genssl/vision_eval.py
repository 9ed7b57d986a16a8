"""Evaluation of the GenSSL ViT: reconstruction (the paper's generation test), linear probing, fine-tuning.

* :func:`reconstruction_eval` - hide 25% of each image's patches and predict them one after another, each
  prediction conditioned on the visible patches and the ones already predicted; pixel L2 (mean squared error per
  pixel over the hidden patches) and PSNR, plus an optional PNG grid (originals | masked inputs | reconstructions).
  Two-stream models predict with the query stream (visible patches group 0, hidden patch k group k, raster order,
  each prediction written into the content before the next); masked models fill one mask token at a time, left
  to right. Both see exactly the same context for each prediction.
* :func:`linear_probe_eval` - frozen pooled features + multinomial logistic regression (torch L-BFGS).
* :func:`fine_tune_eval` - the backbone plus a linear head trained end to end with AdamW.

Inputs are tensors (``pixel_values`` on the scale the checkpoint was pretrained on, integer ``labels``);
:func:`images_to_tensors` turns a ``datasets`` split with PIL ``image`` / ``label`` columns into them, and
:func:`load_image_tensors` does so for the project's offline datasets (``hf_genssl.data.images``). Their default,
pixels in [0, 1], is what GenSSL ViT checkpoints are pretrained on (the image processor saved with them rescales by
1/255 and does not normalise); for another checkpoint pass ``pixel_normalization(its image processor)``. Pixels on
another scale than pretraining's make every number here meaningless (reconstructions land on the wrong scale and
the features come from inputs the model never saw), without any error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .collators import random_positions, seeded_generator
from .models.modeling_genssl_vit import GenSSLViTForImageClassification, GenSSLViTForPreTraining, patchify, unpatchify

__all__ = [
    "extract_features",
    "fine_tune_eval",
    "hide_patches",
    "images_to_tensors",
    "linear_probe_eval",
    "load_image_tensors",
    "normalize_pixels",
    "pixel_normalization",
    "probe_accuracy",
    "reconstruct",
    "reconstruction_eval",
    "save_reconstruction_grid",
]


# ------------------------------------------------------------------------------------------------------------
# Reconstruction
# ------------------------------------------------------------------------------------------------------------


def hide_patches(batch_size: int, num_patches: int, ratio: float = 0.25, seed: int = 0) -> torch.Tensor:
    """``(batch, num_patches)`` bool: exactly ``round(ratio * n)`` random hidden patches per image, clamped to
    ``[1, n - 1]`` (seeded, the same for a given ``seed``)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}.")
    n_hidden = min(max(1, round(ratio * num_patches)), num_patches - 1)
    return random_positions(n_hidden, batch_size, num_patches, seeded_generator(seed))


def _resolve_mode(model: GenSSLViTForPreTraining, mode: str) -> str:
    if mode == "auto":
        return "masked" if model.config.content_attention == "bidirectional" else "two_stream"
    if mode not in ("two_stream", "masked"):
        raise ValueError(f"mode must be 'auto', 'two_stream' or 'masked', got {mode!r}.")
    return mode


@torch.no_grad()
def reconstruct(
    model: GenSSLViTForPreTraining,
    pixel_values: torch.Tensor,
    hidden: torch.Tensor,
    mode: Literal["auto", "two_stream", "masked"] = "auto",
) -> torch.Tensor:
    """Predict the ``hidden`` patches one after another, in raster order; returns the completed ``pixel_values``.

    Every image must hide the same number of patches (as :func:`hide_patches` does). ``mode="auto"``: masked for
    ``content_attention="bidirectional"`` checkpoints, two-stream otherwise.
    """
    if model.config.norm_pix_loss:
        raise ValueError(
            "This model predicts per-patch normalised pixels (norm_pix_loss=True), not pixels; reconstruction needs a "
            "model pretrained with norm_pix_loss=False."
        )
    counts = hidden.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError("Every image must hide the same number of patches (use hide_patches).")
    mode = _resolve_mode(model, mode)
    model.eval()
    config = model.config
    device = next(model.parameters()).device
    hidden = hidden.to(device).bool()
    patches = patchify(pixel_values.to(device), config.patch_size).clone()
    patches[hidden] = 0.0  # placeholder; never visible to a prediction (later group / mask token)
    step = hidden.long().cumsum(1) * hidden  # hidden patch k (raster order) -> k, visible -> 0
    rows = torch.arange(len(patches), device=device)
    for k in range(1, int(counts[0]) + 1):
        current = unpatchify(patches, config.patch_size, config.num_channels, config.grid_size)
        target = step == k  # the k-th hidden patch of each image; only its prediction is computed
        inputs = {"group_ids": step} if mode == "two_stream" else {"bool_masked_pos": step >= k}
        logits = model(current, **inputs, labels=target, only_target_logits=True, return_dict=True).logits
        patches[rows, target.float().argmax(1)] = logits.to(patches.dtype)
    return unpatchify(patches, config.patch_size, config.num_channels, config.grid_size)


def _to_uint8(images: torch.Tensor, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """``(B, C, H, W)`` normalised -> ``(B, H, W, C)`` uint8 (the inverse of :func:`normalize_pixels`, then x 255)."""
    images = images.cpu()
    pixels = (images * _per_channel(std, images) + _per_channel(mean, images)).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_reconstruction_grid(
    path: str | Path,
    originals: torch.Tensor,
    masked_inputs: torch.Tensor,
    reconstructions: torch.Tensor,
    mean: float | list[float] = 0.0,
    std: float | list[float] = 1.0,
    scale: int = 4,
) -> Path:
    """One row per image: original | masked input | reconstruction. ``mean``/``std`` undo the normalisation."""
    from PIL import Image

    columns = [_to_uint8(x, mean, std) for x in (originals, masked_inputs, reconstructions)]
    b, h, w, c = columns[0].shape
    pad = 2
    grid = torch.full((b * (h + pad) + pad, 3 * (w + pad) + pad, c), 255, dtype=torch.uint8)
    for i in range(b):
        for j, column in enumerate(columns):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = column[i]
    array = grid.numpy() if c == 3 else grid[..., 0].numpy()
    image = Image.fromarray(array, mode="RGB" if c == 3 else "L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@torch.no_grad()
def reconstruction_eval(
    model: GenSSLViTForPreTraining,
    pixel_values: torch.Tensor,
    hidden_ratio: float = 0.25,
    mode: Literal["auto", "two_stream", "masked"] = "auto",
    seed: int = 0,
    batch_size: int = 256,
    data_range: float | None = None,
    grid_path: str | Path | None = None,
    grid_images: int = 8,
    mean: float | list[float] = 0.0,
    std: float | list[float] = 1.0,
) -> dict[str, float]:
    """The paper's generation test: hide ``hidden_ratio`` of the patches and predict them one after another.

    Returns ``{"l2": mean squared error per hidden pixel, "psnr": mean over images of
    10 log10(data_range^2 / per-image hidden-pixel MSE), "baseline_l2", "num_images", "hidden_patches"}``.
    ``baseline_l2`` is the L2 of a constant guess (every hidden pixel = the mean of its image's visible pixels, per
    channel) on the same images and hidden patches: a model that does not beat it reconstructs nothing (and a
    pixel-scale mismatch between pretraining and evaluation shows up as exactly that). ``pixel_values`` must be
    on the model's pretraining scale (see the module docstring); ``mean`` / ``std`` say how they were normalised from
    [0, 1], for the PNG only. ``data_range`` defaults to max - min of ``pixel_values`` (1.0 for [0, 1] pixels).
    ``grid_path`` saves a PNG of the first ``grid_images`` images (masked inputs show hidden patches black).
    """
    config = model.config
    hidden = hide_patches(len(pixel_values), config.num_patches, hidden_ratio, seed)
    data_range = float(pixel_values.max() - pixel_values.min()) if data_range is None else data_range
    recons = torch.cat(
        [
            reconstruct(model, pixel_values[i : i + batch_size], hidden[i : i + batch_size], mode).cpu()
            for i in range(0, len(pixel_values), batch_size)
        ]
    )
    pixels = pixel_values.cpu()
    error = (patchify(recons, config.patch_size) - patchify(pixels, config.patch_size)) ** 2
    values_per_patch = config.patch_size**2 * config.num_channels
    per_image = (error.sum(-1) * hidden).sum(1) / (hidden.sum(1) * values_per_patch)
    l2 = float(per_image.mean())
    psnr = float((10 * torch.log10(data_range**2 / per_image.clamp(min=1e-12))).mean())
    hidden_pixels = unpatchify(
        hidden[:, :, None].float().expand(-1, -1, values_per_patch),
        config.patch_size,
        config.num_channels,
        config.grid_size,
    ).bool()
    visible = ~hidden_pixels
    guess = (pixels * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True)
    baseline = (((pixels - guess) ** 2) * hidden_pixels).sum((1, 2, 3)) / hidden_pixels.sum((1, 2, 3))
    if grid_path is not None:
        n = min(grid_images, len(pixel_values))
        originals = pixels[:n]
        black = normalize_pixels(torch.zeros_like(originals), mean, std)
        masked = torch.where(hidden_pixels[:n], black, originals)  # hidden patches shown black
        save_reconstruction_grid(grid_path, originals, masked, recons[:n], mean=mean, std=std)
    return {"l2": l2, "psnr": psnr, "baseline_l2": float(baseline.mean()), "num_images": len(pixel_values),
            "hidden_patches": int(hidden[0].sum())}


# ------------------------------------------------------------------------------------------------------------
# Linear probe and fine-tuning
# ------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled content-stream features ``(n, hidden)`` of any GenSSL ViT (bare model or with a head)."""
    backbone = model.base_model
    backbone.eval()
    device = next(backbone.parameters()).device
    chunks = [
        backbone.pool(backbone.forward_features(pixel_values[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, len(pixel_values), batch_size)
    ]
    return torch.cat(chunks)


def linear_probe_eval(
    model: nn.Module,
    train_pixels: torch.Tensor,
    train_labels: torch.Tensor,
    test_pixels: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    batch_size: int = 256,
) -> float:
    """Test accuracy of a logistic regression on frozen, standardised features (full-batch L-BFGS, seedless)."""
    train = extract_features(model, train_pixels, batch_size)
    test = extract_features(model, test_pixels, batch_size)
    return probe_accuracy(train, train_labels, test, test_labels, weight_decay=weight_decay, max_iter=max_iter)


def probe_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """The linear probe's protocol on given features ``(n, dim)``: standardised with the training statistics, a
    logistic regression fitted by full-batch L-BFGS (seedless). Also the raw-pixel control, on flattened pixels."""
    train, test = train.float().flatten(1), test.float().flatten(1)
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(train.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    labels = train_labels.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(train @ weight + bias, labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (test @ weight + bias).argmax(-1)
    return float((predictions == test_labels.long()).float().mean())


def fine_tune_eval(
    model: nn.Module,
    train_pixels: torch.Tensor,
    train_labels: torch.Tensor,
    test_pixels: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    content_attention: Literal["causal", "bidirectional"] | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy after fine-tuning the backbone (copied; ``model`` is untouched) with a fresh linear head.

    AdamW with linear warm-up (first 10% of steps) and cosine decay. ``content_attention`` overrides the
    checkpoint's attention for fine-tuning (e.g. ``"bidirectional"`` for an autoregressively pretrained model).
    """
    torch.manual_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    # the pretraining config's label maps (2 default labels) would clash with num_labels, which sets new ones
    values = {k: v for k, v in model.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = model.config.__class__.from_dict({**values, "num_labels": num_classes})
    if content_attention is not None:
        config.content_attention = content_attention
    classifier = GenSSLViTForImageClassification(config)
    wanted = classifier.vit.state_dict().keys()  # the classifier has no mask token or query-stream vector (unused)
    classifier.vit.load_state_dict({k: v for k, v in model.base_model.state_dict().items() if k in wanted})
    device = next(model.parameters()).device
    classifier.to(device).train()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_pixels) / batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(train_pixels), generator=generator)
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            loss = classifier(train_pixels[index].to(device), labels=train_labels[index].long().to(device)).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    classifier.eval()
    with torch.no_grad():
        predictions = torch.cat(
            [
                classifier(test_pixels[i : i + 256].to(device)).logits.argmax(-1).cpu()
                for i in range(0, len(test_pixels), 256)
            ]
        )
    return float((predictions == test_labels.long()).float().mean())


# ------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------


def pixel_normalization(image_processor) -> tuple[list[float], list[float]]:
    """``(mean, std)`` per channel that ``image_processor`` normalises [0, 1] pixels with: ``([0.0], [1.0])`` when it
    does not normalise (the processor saved with GenSSL ViT checkpoints)."""
    if getattr(image_processor, "do_rescale", True) and not math.isclose(
        getattr(image_processor, "rescale_factor", 1 / 255), 1 / 255
    ):
        raise ValueError("pixel_normalization expects an image processor that rescales 0-255 pixels to [0, 1].")
    if not getattr(image_processor, "do_normalize", False):
        return [0.0], [1.0]

    def per_channel(value) -> list[float]:
        return [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]

    return per_channel(image_processor.image_mean), per_channel(image_processor.image_std)


def _per_channel(value: float | list[float], like: torch.Tensor) -> torch.Tensor:
    """``value`` (one number, or one per channel) as a ``(C or 1, 1, 1)`` tensor broadcasting over ``(B, C, H, W)``."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def normalize_pixels(pixels: torch.Tensor, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """``(pixels - mean) / std`` per channel, for ``(B, C, H, W)`` pixels in [0, 1]."""
    return (pixels - _per_channel(mean, pixels)) / _per_channel(std, pixels)


def images_to_tensors(
    split, mean: float | list[float] = 0.0, std: float | list[float] = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``datasets`` split (or list of dicts) with PIL ``image`` and int ``label`` -> ``(pixel_values, labels)``.

    Pixels are scaled to [0, 1], then ``(x - mean) / std`` per channel; grayscale images give one channel, RGB three.
    The default keeps [0, 1], the scale GenSSL ViT checkpoints are pretrained on.
    """
    import numpy as np

    rows = split if isinstance(split, list) else list(split)  # iterating decodes the images; to_list() would not
    pixels = torch.from_numpy(np.stack([np.asarray(row["image"], dtype=np.float32) / 255.0 for row in rows]))
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    labels = torch.tensor([row["label"] for row in rows])
    return normalize_pixels(pixels, mean, std), labels


def load_image_tensors(
    name: str,
    cache_dir: str | None = None,
    limit: int | None = None,
    mean: float | list[float] = 0.0,
    std: float | list[float] = 1.0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (pixel_values, labels), "test": ...}`` for ``fashion_mnist`` / ``mnist_5k`` (offline data),
    normalised as :func:`images_to_tensors` does."""
    from .data.images import load_image_dataset

    dataset = load_image_dataset(name, cache_dir=cache_dir, limit=limit)
    return {split: images_to_tensors(dataset[split], mean, std) for split in dataset}
