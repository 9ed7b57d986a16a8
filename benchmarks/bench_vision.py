"""Training-step speed of the GenSSL ViT against transformers' SimMIM and MAE, side by side.

Same encoder for all (28x28 grayscale, patch 4 -> 49 patches, 6 layers, hidden 192, 3 heads, MLP 768, batch 64);
each does forward + backward + AdamW step on the batch its objective needs:

* ``genssl two-stream g=2``: semi-autoregressive, raster order, groups of 2 patches, every patch after the first
  group a target (query stream; the last layer runs the query stream only);
* ``genssl masked 75%``: our ViT with a mask token at 75% of the patches (``bool_masked_pos``), one stream, the
  last block only at the masked patches;
* ``genssl masked 75% two-stream``: the same masks as two streams (visible group 0, masked group 1, MPNet style):
  the content stream runs on the visible patches only, the query stream on the masked ones (for information);
* ``simmim (ViTForMaskedImageModeling)``: transformers' SimMIM, one stream over all patches, the same masks;
* ``vitmae (ViTMAEForPreTraining)``: transformers' MAE with its default decoder (8 layers, 512 wide), for
  information: its encoder sees only the 25% visible patches.

Steps are interleaved across models (round-robin) and the median is reported, so machine noise hits all models
alike; only the printed ratios are meaningful. ``--profile`` adds the top operators of one step per model.

    python benchmarks/bench_vision.py [--steps 10] [--threads 2] [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import ViTConfig, ViTForMaskedImageModeling, ViTMAEConfig, ViTMAEForPreTraining

from hf_genssl import (
    DataCollatorForSemiAutoregressiveImages,
    DataCollatorForVariableLengthImageMasking,
    GenSSLViTConfig,
    GenSSLViTForPreTraining,
)

IMAGE, PATCH, CHANNELS, LAYERS, HIDDEN, HEADS, BATCH = 28, 4, 1, 6, 192, 3, 64
ENCODER = dict(
    image_size=IMAGE,
    patch_size=PATCH,
    num_channels=CHANNELS,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=4 * HIDDEN,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

Case = tuple[torch.nn.Module, Callable[[], dict]]


def build_cases(generator: torch.Generator) -> dict[str, Case]:
    images = torch.randn(BATCH, CHANNELS, IMAGE, IMAGE, generator=generator)
    examples = [{"pixel_values": image} for image in images]
    two_stream = DataCollatorForSemiAutoregressiveImages(patch_size=PATCH, order="raster", group_size=2, seed=0)
    masking = DataCollatorForVariableLengthImageMasking(patch_size=PATCH, mask_ratio_range=(0.75, 0.75), seed=0)
    two_stream_batch, masked_batch = two_stream(examples), masking(examples)
    mpnet_batch = {"pixel_values": masked_batch["pixel_values"], "group_ids": masked_batch["bool_masked_pos"].long()}
    ours = {"only_target_logits": True}  # skip everything no target needs (exact, same loss)

    genssl_two_stream = GenSSLViTForPreTraining(GenSSLViTConfig(**ENCODER, content_attention="causal"))
    genssl_masked = GenSSLViTForPreTraining(GenSSLViTConfig(**ENCODER, content_attention="bidirectional"))
    genssl_mpnet = GenSSLViTForPreTraining(GenSSLViTConfig(**ENCODER, content_attention="bidirectional"))
    simmim = ViTForMaskedImageModeling(ViTConfig(**ENCODER, encoder_stride=PATCH))
    mae = ViTMAEForPreTraining(ViTMAEConfig(**ENCODER, mask_ratio=0.75))
    noise = torch.rand(BATCH, (IMAGE // PATCH) ** 2, generator=generator)  # MAE: fixed masks, as the others
    return {
        "genssl two-stream g=2": (genssl_two_stream, lambda: {**two_stream_batch, **ours}),
        "genssl masked 75%": (genssl_masked, lambda: {**masked_batch, **ours}),
        "genssl masked 75% two-stream": (genssl_mpnet, lambda: {**mpnet_batch, **ours}),
        "simmim (ViTForMaskedImageModeling)": (simmim, lambda: masked_batch),
        "vitmae (ViTMAEForPreTraining)": (mae, lambda: {"pixel_values": images, "noise": noise}),
    }


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(cases: dict[str, Case], steps: int, warmup: int = 2) -> dict[str, list[float]]:
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(steps + warmup):
        for name, (model, make_batch) in cases.items():
            model.train()
            batch = make_batch()
            start = time.perf_counter()
            train_step(model, optimizers[name], batch)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def profile(cases: dict[str, Case], top: int = 8) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, (model, make_batch) in cases.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_step(model, optimizer, make_batch())
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(model, optimizer, make_batch())
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        print(f"\n-- {name}: top ops by self CPU time (one step, {total:.0f} ms profiled) --")
        for event in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
            print(f"  {event.key:<44} {event.self_cpu_time_total / 1e3:8.1f} ms  x{event.count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print the top operators of one step per model")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = build_cases(torch.Generator().manual_seed(0))

    times = time_steps(cases, args.steps)
    medians = {name: statistics.median(samples) * 1e3 for name, samples in times.items()}
    reference = medians["simmim (ViTForMaskedImageModeling)"]
    mae = medians["vitmae (ViTMAEForPreTraining)"]
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}; "
        f"batch {BATCH}, {IMAGE}x{IMAGE}x{CHANNELS}, patch {PATCH}, {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads; "
        f"median of {args.steps} interleaved steps"
    )
    print(f"{'model':<36} {'ms/step':>9} {'x SimMIM':>9} {'x MAE':>7} {'params':>9}")
    for name, ms in medians.items():
        params = sum(p.numel() for p in cases[name][0].parameters()) / 1e6
        print(f"{name:<36} {ms:9.1f} {ms / reference:9.2f} {ms / mae:7.2f} {params:8.2f}M")
    targets = {"genssl two-stream g=2": 1.7, "genssl masked 75%": 0.8}
    for name, limit in targets.items():
        ratio = medians[name] / reference
        print(f"target {name}: {ratio:.2f}x SimMIM (target <= {limit}x): {'met' if ratio <= limit else 'NOT met'}")
    if args.profile:
        profile(cases)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ms_per_step": medians, "threads": args.threads, "steps": args.steps}, f, indent=2)


if __name__ == "__main__":
    main()
