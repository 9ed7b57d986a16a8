"""``genssl reproduce``: the paper's language comparisons at a scale that fits the machine, with seeds.

Two experiments, each cell run for several seeds, every run written to ``results/<experiment>/<cell>-seed<k>.json``
(config, seed, data, hardware, wall time) and summarised into ``results/RESULTS.md``:

1. *classification* (the paper's Table 2): the same language model pretrained as AR (g = 1) and as
   diversity-enhanced semi-AR (g = 2, and random group sizes) on the same tokens in the same order (same data
   seed), then fine-tuned on every offline GLUE-style task; per-task metric and the average.
2. *generation* (the paper's Table 8 / Figure 3): masked models with ratio 0.15, 0.3 and variable ranges, and the
   AR / semi-AR models for reference, scored by exact prefix perplexity on the held-out corpus split, with the
   per-prefix-length curves in one plot.

A claim is "held" when the difference of means exceeds the seeds' spread (the sum of both standard deviations),
"not held" when it goes the other way by that much, "inconclusive" otherwise. ``--quick`` is a smoke test of the
same code path (few steps): its numbers are not evidence.

Not here yet (see the project's issue): the ViT comparisons, the connectivity (top pairwise similarity) metric,
the out-of-domain perplexity text, and real GLUE runs.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCALES", "run_reproduce", "summarise"]

TASKS = ("rt-polarity", "rt-regression", "bbc-news", "sms-spam")
CLASSIFICATION_CELLS = {"ar": {"objective": "ar"}, "semi_ar_g2": {"objective": "semi_ar", "group_size": 2},
                        "semi_ar_random": {"objective": "semi_ar", "group_size": "random", "cut_probability": 0.5}}
GENERATION_CELLS = {
    "masked_0.15": {"objective": "masked", "mask_ratio_range": [0.15, 0.15]},
    "masked_0.30": {"objective": "masked", "mask_ratio_range": [0.3, 0.3]},
    "variable_0.1-0.9": {"objective": "variable_masked", "mask_ratio_range": [0.1, 0.9]},
    "variable_0.15-0.5": {"objective": "variable_masked", "mask_ratio_range": [0.15, 0.5]},
}


@dataclass(frozen=True)
class Scale:
    pretrain: dict
    finetune_epochs: float
    finetune_samples: int | None
    ppl_texts: int
    seeds: int


SCALES = {
    "quick": Scale({"max_steps": 40, "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 2048, "max_docs": 40,
                    "batch_size": 16, "eval_every": 40, "save_every": 1000}, 1, 1000, 3, 3),
    "default": Scale({"max_steps": 1500, "hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 8192,
                      "batch_size": 32, "eval_every": 500, "save_every": 500}, 3, None, 40, 3),
    "gpu": Scale({"max_steps": 20000, "hidden_size": 768, "num_hidden_layers": 16, "num_attention_heads": 12,
                  "vocab_size": 32768, "batch_size": 128, "mixed_precision": "bf16", "eval_every": 2000,
                  "save_every": 5000}, 5, None, 200, 3),
}


def _hardware() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    return f"{platform.machine()}, {device}, torch {torch.__version__}"


def _pretrain(out: Path, cell: str, settings: dict, scale: Scale, seed: int, cache_dir) -> str:
    from .pretraining import run_pretraining

    run_dir = out / "runs" / f"{cell}-seed{seed}"
    final = run_dir / "final"
    if (final / "model.safetensors").exists():
        return str(final)
    config = {"corpus": ["sotu", "news", "shakespeare"], "seq_len": 128, "num_attention_heads": 4,
              "learning_rate": 1e-3, "warmup_steps": 30, "progress": False, "cache_dir": cache_dir,
              **scale.pretrain, **settings, "seed": seed, "output_dir": str(run_dir)}
    return run_pretraining(config, resume=(run_dir / "latest").exists())["final_dir"]


def _record(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, "hardware": _hardware()}, indent=2, default=str))


def run_classification(out: Path, scale: Scale, cache_dir) -> None:
    from .finetuning import run_finetuning

    for seed in range(scale.seeds):
        for cell, settings in CLASSIFICATION_CELLS.items():
            result_path = out / "classification" / f"{cell}-seed{seed}.json"
            if result_path.exists():
                continue
            start = time.perf_counter()
            checkpoint = _pretrain(out, cell, settings, scale, seed, cache_dir)
            scores = {}
            for task in TASKS:
                tuned = run_finetuning({"model": checkpoint, "task": task, "epochs": scale.finetune_epochs,
                                        "max_train_samples": scale.finetune_samples, "seed": seed,
                                        "learning_rate": 1e-3, "cache_dir": cache_dir,
                                        "output_dir": str(out / "runs" / f"{cell}-seed{seed}-{task}")})
                final = tuned["final"]
                scores[task] = final.get("eval_accuracy", final.get("eval_pearson"))
            _record(result_path, {"experiment": "classification", "cell": cell, "seed": seed, "settings": settings,
                                  "scale": scale.pretrain, "data": "sotu+news+shakespeare; offline tasks",
                                  "scores": scores, "average": statistics.mean(scores.values()),
                                  "seconds": time.perf_counter() - start})


def run_generation(out: Path, scale: Scale, cache_dir) -> None:
    from .data import load_pretraining_corpus
    from .perplexity import prefix_perplexity

    texts = list(load_pretraining_corpus(cache_dir=cache_dir)["validation"]["text"])[: scale.ppl_texts]
    cells = {**GENERATION_CELLS, "ar": CLASSIFICATION_CELLS["ar"], "semi_ar_g2": CLASSIFICATION_CELLS["semi_ar_g2"]}
    for seed in range(scale.seeds):
        for cell, settings in cells.items():
            result_path = out / "generation" / f"{cell}-seed{seed}.json"
            if result_path.exists():
                continue
            start = time.perf_counter()
            checkpoint = _pretrain(out, cell, settings, scale, seed, cache_dir)
            result = prefix_perplexity(checkpoint, texts, batch_size=64)  # window: the model's positions - 1
            _record(result_path, {"experiment": "generation", "cell": cell, "seed": seed, "settings": settings,
                                  "scale": scale.pretrain, "data": f"corpus validation split, {len(texts)} texts",
                                  **result.to_dict(), "seconds": time.perf_counter() - start})


def _verdict(better: list[float], worse: list[float], higher_is_better: bool) -> str:
    gap = statistics.mean(better) - statistics.mean(worse)
    gap = gap if higher_is_better else -gap
    spread = (statistics.pstdev(better) if len(better) > 1 else 0) + (statistics.pstdev(worse) if len(worse) > 1 else 0)
    if gap > spread:
        return "held"
    if gap < -spread:
        return "not held"
    return "inconclusive"


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "-"


def summarise(out: Path, quick: bool) -> str:
    """Write ``RESULTS.md`` and ``prefix_perplexity.png`` from the JSON files alone; return the markdown."""
    lines = ["# Results", "", "Generated by `genssl reproduce` from the JSON files next to this file.", ""]
    if quick:
        lines += ["**Quick mode: a smoke test with a few steps. These numbers are not evidence.**", ""]
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))]
    if runs:
        lines += [f"Hardware: {runs[0]['hardware']}.", ""]
    classification = [r for r in runs if r["experiment"] == "classification"]
    if classification:
        lines += ["## Classification after fine-tuning (the paper's Table 2)", "",
                  "| pretraining | " + " | ".join(TASKS) + " | average |", "|---" * (len(TASKS) + 2) + "|"]
        by_cell: dict[str, list[dict]] = {}
        for r in classification:
            by_cell.setdefault(r["cell"], []).append(r)
        for cell, rs in by_cell.items():
            cells = [_mean_std([r["scores"][t] for r in rs]) for t in TASKS]
            lines.append(f"| {cell} ({len(rs)} seeds) | " + " | ".join(cells) + f" | {_mean_std([r['average'] for r in rs])} |")
        if "ar" in by_cell and "semi_ar_g2" in by_cell:
            verdict = _verdict([r["average"] for r in by_cell["semi_ar_g2"]], [r["average"] for r in by_cell["ar"]], True)
            lines += ["", f"Claim \"semi-AR (g = 2) fine-tunes better than AR\": **{verdict}**."]
        lines.append("")
    generation = [r for r in runs if r["experiment"] == "generation"]
    if generation:
        lines += ["## Prefix perplexity (the paper's Table 8)", "", "| pretraining | perplexity | tokens scored |",
                  "|---|---|---|"]
        by_cell = {}
        for r in generation:
            by_cell.setdefault(r["cell"], []).append(r)
        for cell, rs in by_cell.items():
            lines.append(f"| {cell} ({len(rs)} seeds) | {_mean_std([r['perplexity'] for r in rs])} | {rs[0]['tokens_scored']} |")
        variable = [r["perplexity"] for c, rs in by_cell.items() if c.startswith("variable") for r in rs]
        fixed = [r["perplexity"] for c, rs in by_cell.items() if c.startswith("masked") for r in rs]
        if variable and fixed:
            best_variable = min((c for c in by_cell if c.startswith("variable")),
                                key=lambda c: statistics.mean(r["perplexity"] for r in by_cell[c]))
            best_fixed = min((c for c in by_cell if c.startswith("masked")),
                             key=lambda c: statistics.mean(r["perplexity"] for r in by_cell[c]))
            verdict = _verdict([r["perplexity"] for r in by_cell[best_variable]],
                               [r["perplexity"] for r in by_cell[best_fixed]], higher_is_better=False)
            lines += ["", f"Claim \"a variable mask ratio ({best_variable}) gives lower prefix perplexity than the best "
                          f"fixed ratio ({best_fixed})\": **{verdict}**."]
        from .perplexity import plot_prefix_curves

        plot_prefix_curves({cell: rs[0] for cell, rs in by_cell.items()}, out / "prefix_perplexity.png",
                           title="Prefix perplexity by prefix length (seed 0)")
        lines += ["", "![prefix perplexity by prefix length](prefix_perplexity.png)", ""]
    text = "\n".join(lines)
    (out / "RESULTS.md").write_text(text)
    return text


def run_reproduce(out_dir: str = "results", scale: str = "default", quick: bool = False,
                  experiments: tuple[str, ...] = ("classification", "generation"), cache_dir=None) -> str:
    """Run (or resume: finished cells are skipped) the experiments, then write ``RESULTS.md``."""
    chosen = SCALES["quick" if quick else scale]
    out = Path(out_dir)
    if "classification" in experiments:
        run_classification(out, chosen, cache_dir)
    if "generation" in experiments:
        run_generation(out, chosen, cache_dir)
    return summarise(out, quick)
