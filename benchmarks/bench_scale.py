"""Scaling benchmark: two-stream attention backends at long T, bf16 vs fp32, compiled vs eager, GPU MFU.

Sections (each prints ratios measured side by side in the same process; only ratios are meaningful on a shared
machine, the milliseconds move with its load):

1. ``attention``: one attention call of B=1, 4 heads x 64, single thread on CPU, for each T:
   causal SDPA over T rows (the floor: a same-size GPT), the dense (B, 1, 2T, T) bool-mask SDPA the models used
   before, the group-id paths (``GroupVisibility``): ``sdpa`` for AR (two ``is_causal`` calls) and
   ``flex_attention`` (compiled, BlockMask) for semi-AR g = 2. Forward and forward+backward (flex has no CPU
   backward in torch 2.13: forward only there) and the peak memory the call allocates, with its largest tensor,
   inputs and outputs in the models' layout (see ``attention_calls``). The two-stream calls return 2T rows against
   causal's T, so their peak is also given per output row.
2. ``precision``: a training step (forward, backward, AdamW) of the ``small`` config (training/configs/small.yaml:
   4 layers, hidden 256, seq 128, batch 32, semi-AR g = 2), fp32 vs ``torch.autocast`` bf16.
3. ``compile``: the same step eager vs ``torch.compile``d, and the graph breaks ``torch._dynamo.explain`` finds.
4. ``mfu``: the ``paper`` config (16 layers, hidden 768) on a CUDA GPU in bf16, flex attention; skipped without one.

    nice python benchmarks/bench_scale.py [--lengths 512,1024,2048,4096] [--sections attention,precision,compile,mfu]
        [--repeats 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from hf_genssl import DataCollatorForSemiAutoregressiveLM, GenSSLConfig, GenSSLForPreTraining
from hf_genssl.models.two_stream_attention import GroupVisibility, two_stream_attention_forward

HEADS, HEAD_DIM = 4, 64
SMALL = dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
             max_position_embeddings=128)  # training/configs/small.yaml
SMALL_BATCH, SMALL_SEQ = 32, 128
PAPER = dict(vocab_size=32768, hidden_size=768, num_hidden_layers=16, num_attention_heads=12, intermediate_size=3072,
             max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # paper.yaml
PAPER_BATCH, PAPER_SEQ = 128, 128


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object]) -> tuple[float, float]:
    """(peak MB allocated above the start, largest single allocation MB) while ``fn`` runs on CPU.

    From the profiler's allocator events, so it also sees what compiled (inductor) kernels allocate.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = largest = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # what the op itself allocated (+) or freed (-)
        peak = max(peak, live)
        largest = max(largest, event.self_cpu_memory_usage)
    return peak / 2**20, largest / 2**20


def attention_calls(T: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The attention calls compared at length T (tensors made once; every call builds its own mask / rule).

    Inputs and outputs are laid out as in the models: the projections give ``(B, rows, heads x dim)``, viewed as
    ``(B, heads, rows, dim)`` for the kernel, and the output goes back to ``(B, rows, heads, dim)`` for ``o_proj``.
    SDPA and compiled flex write their output in the query's layout, so that way back is free; with contiguous
    ``(B, heads, rows, dim)`` queries (how this benchmark fed them before) it is a copy as large as the output.
    """
    generator = torch.Generator().manual_seed(T)

    def heads(rows: int) -> torch.Tensor:
        x = torch.randn(1, rows, HEADS, HEAD_DIM, generator=generator, requires_grad=True)
        return x.transpose(1, 2)

    q, k, v = heads(2 * T), heads(T), heads(T)
    semi_ar, ar = (torch.arange(T) // 2)[None], torch.arange(T)[None]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def rule(gids: torch.Tensor) -> GroupVisibility:
        return GroupVisibility(torch.cat([gids + 1, gids], 1), gids)

    def group_ids(implementation: str, gids: torch.Tensor) -> Callable[[], torch.Tensor]:
        module = torch.nn.Module()
        module.config = SimpleNamespace(_attn_implementation=implementation)
        return lambda: two_stream_attention_forward(module, q, k, v, rule(gids), scaling=HEAD_DIM**-0.5)[0]

    def rows_layout(out: torch.Tensor) -> torch.Tensor:
        return out.transpose(1, 2).contiguous()

    return {
        # the floor: a same-size GPT's attention (T rows)
        "causal": lambda: rows_layout(sdpa(q[:, :, :T], k, v, is_causal=True)),
        "dense": lambda: rows_layout(sdpa(q, k, v, attn_mask=rule(semi_ar).dense())),  # what the models sent before
        "ar_sdpa": group_ids("sdpa", ar),
        "flex": group_ids("flex_attention", semi_ar),
    }


def forward_only(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            fn()
    return call


def forward_backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    return lambda: fn().sum().backward()


def attention_section(lengths: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    print(f"\n## attention: B=1, {HEADS} heads x {HEAD_DIM}, 1 thread, ms (median of {repeats}) and peak MB")
    print("| T | causal SDPA fwd / fwd+bwd | dense-mask SDPA g=2 fwd / fwd+bwd | group-id sdpa AR fwd / fwd+bwd "
          "| flex g=2 fwd (compiled) | flex / dense fwd | flex / causal fwd | AR sdpa / dense fwd+bwd "
          "| peak MB fwd: causal / dense / flex (largest tensor) | flex / causal peak | the same per output row |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for T in lengths:
        row = {}
        for name, fn in attention_calls(T).items():
            row[name, "fwd"] = timed(forward_only(fn), repeats)
            if name != "flex":  # no flex backward on CPU in torch 2.13
                row[name, "bwd"] = timed(forward_backward(fn), repeats)
            row[name, "mem"] = peak_memory(forward_only(fn))
        mem = " / ".join(f"{row[n, 'mem'][0]:.1f} ({row[n, 'mem'][1]:.1f})" for n in ("causal", "dense", "flex"))
        peak_ratio = row["flex", "mem"][0] / row["causal", "mem"][0]
        print(f"| {T} | {row['causal', 'fwd']:.1f} / {row['causal', 'bwd']:.1f} "
              f"| {row['dense', 'fwd']:.1f} / {row['dense', 'bwd']:.1f} "
              f"| {row['ar_sdpa', 'fwd']:.1f} / {row['ar_sdpa', 'bwd']:.1f} | {row['flex', 'fwd']:.1f} "
              f"| {row['flex', 'fwd'] / row['dense', 'fwd']:.2f}x | {row['flex', 'fwd'] / row['causal', 'fwd']:.2f}x "
              f"| {row['ar_sdpa', 'bwd'] / row['dense', 'bwd']:.2f}x | {mem} | {peak_ratio:.2f}x "
              f"| {peak_ratio / 2:.2f}x |", flush=True)
    print("(outputs: causal T rows, the two-stream calls 2T rows: B x rows x heads x dim fp32 is 2 MB per 2048 rows; "
          "a B x 2T x T bool mask is 2T^2 bytes: 8 MB at T=2048; its fp32 additive copy 4x that)")


def small_step(dtype: str, compiled: bool = False, steps: int = 5) -> tuple[float, float]:
    """(median ms per training step, loss after the steps) of the small config, semi-AR g = 2."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining._from_config(GenSSLConfig(**SMALL), attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2, seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = collator([torch.randint(5, SMALL["vocab_size"], (SMALL_SEQ - 1,), generator=generator).tolist()
                      for _ in range(SMALL_BATCH)])
    forward = torch.compile(model) if compiled else model
    losses = []

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
            loss = forward(**batch, only_target_logits=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    # Compiled: the first call compiles; later calls reuse the graph (tests/test_attention_backends.py checks that
    # no recompile follows).
    return timed(step, steps), losses[-1]


def precision_section(steps: int) -> None:
    threads = torch.get_num_threads()
    print(f"\n## precision: small config training step, batch {SMALL_BATCH} x {SMALL_SEQ}, {threads} threads")
    fp32, loss32 = small_step("fp32", steps=steps)
    bf16, loss16 = small_step("bf16", steps=steps)
    print("| fp32 ms | bf16 (autocast) ms | fp32 / bf16 | loss fp32 / bf16 after the steps |")
    print("|---|---|---|---|")
    print(f"| {fp32:.0f} | {bf16:.0f} | {fp32 / bf16:.2f}x | {loss32:.4f} / {loss16:.4f} |", flush=True)


def compile_section(steps: int) -> None:
    torch.manual_seed(0)
    model = GenSSLForPreTraining._from_config(GenSSLConfig(**SMALL), attn_implementation="sdpa").train()
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2, seed=0)
    batch = collator([list(range(5, 5 + SMALL_SEQ - 1))] * 2)
    explanation = torch._dynamo.explain(model)(**batch, only_target_logits=True)
    threads = torch.get_num_threads()
    print(f"\n## compile: small config training step, {threads} threads; "
          f"graph breaks in the training forward: {explanation.graph_break_count}")
    eager, _ = small_step("fp32", steps=steps)
    start = time.perf_counter()
    compiled, _ = small_step("fp32", compiled=True, steps=steps)
    total = time.perf_counter() - start
    print("| eager ms | compiled ms | eager / compiled | compile + steps s |")
    print("|---|---|---|---|")
    print(f"| {eager:.0f} | {compiled:.0f} | {eager / compiled:.2f}x | {total:.0f} |", flush=True)


def mfu_section(steps: int) -> None:
    print("\n## mfu: paper config (16 layers, hidden 768, seq 128, batch 128), bf16, flex attention")
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    torch.manual_seed(0)
    config = GenSSLConfig(**PAPER)
    model = GenSSLForPreTraining._from_config(config, attn_implementation="flex_attention").cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    collator = DataCollatorForSemiAutoregressiveLM(bos_token_id=1, pad_token_id=0, group_size=2, seed=0)
    batch = collator([list(range(5, 5 + PAPER_SEQ - 1))] * PAPER_BATCH)
    batch = {key: value.cuda() for key, value in batch.items()}

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = model(**batch, only_target_logits=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    ms = timed(step, steps)
    # 6 x parameters x tokens (matmuls, forward + backward) for both streams (2T rows), plus attention scores.
    params = sum(p.numel() for p in model.parameters())
    rows = 2 * PAPER_SEQ * PAPER_BATCH
    attention = 6 * 2 * config.num_hidden_layers * PAPER_BATCH * (2 * PAPER_SEQ) * PAPER_SEQ * config.hidden_size
    flops = 6 * params * rows + attention
    peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
    name = torch.cuda.get_device_name()
    peak_flops = next((value for key, value in peak.items() if key in name), None)
    achieved = flops / (ms / 1e3)
    mfu = f"{achieved / peak_flops:.1%}" if peak_flops else "unknown peak"
    print(f"{name}: {ms:.1f} ms/step, {achieved / 1e12:.1f} TFLOP/s, MFU {mfu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,2048,4096", help="comma-separated T for the attention section")
    parser.add_argument("--sections", default="attention,precision,compile,mfu")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per attention measurement")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads available, CUDA: {torch.cuda.is_available()}")
    sections, threads = args.sections.split(","), torch.get_num_threads()
    if "attention" in sections:
        attention_section([int(t) for t in args.lengths.split(",")], args.repeats)
    torch.set_num_threads(threads)
    if "precision" in sections:
        precision_section(args.steps)
    if "compile" in sections:
        compile_section(args.steps)
    if "mfu" in sections:
        mfu_section(args.steps)


if __name__ == "__main__":
    main()
