"""One Accelerate pretraining loop for every objective.

The YAML config names an objective; :data:`OBJECTIVES` maps it to the model's content attention and a
collator. The loop itself never branches on the objective: it batches, steps and checkpoints.

What the loop guarantees:

* warmup + cosine schedule, gradient accumulation, optional bf16, gradient clipping, periodic validation loss;
* a progress bar (tokens/s, loss) and a JSON-lines log (``metrics.jsonl``), written by the main process only;
  the same records go to Accelerate's trackers named by ``report_to`` (``tensorboard``, ``wandb``, ... ; none by
  default), under ``output_dir``;
* atomic, verified checkpoints: a checkpoint is written to ``checkpoint-N.tmp`` with a sha256 manifest of its
  files, renamed into place, then ``latest`` points at it and only then are old ones pruned; ``final/`` is
  written the same way. Resume scans the folder for the newest checkpoint whose files match their manifest
  (falling back past corrupt ones, saying so) and refuses to start over in a folder that holds checkpoints;
  ``metrics.jsonl`` after a resume equals that of an uninterrupted run;
* bit-exact resume: Accelerate's seedable sampler, its saved RNG states, the LR scheduler, and the collator's
  own generator state; resuming with a different config is refused, naming the keys that differ;
* runs unchanged under ``accelerate launch --multi_gpu --num_processes N`` (gloo on CPU).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .collators import DataCollatorForSemiAutoregressiveLM, DataCollatorForVariableLengthMasking
from .data.sources import file_hashes, hashes_problem

__all__ = ["PretrainConfig", "OBJECTIVES", "load_config", "parse_overrides", "run_pretraining"]

logger = logging.getLogger(__name__)


class _TiedHeadSaveFilter(logging.Filter):
    """Drops Accelerate's "Removed shared tensor {'lm_head.weight'} while saving" warning, printed at every
    checkpoint: the head is tied to the embedding on purpose and ``from_pretrained`` / ``load_state`` tie it
    again (tests/test_pretrain.py resumes from such a checkpoint bit-identically). Other shared tensors still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor {'lm_head.weight'} while saving" not in record.getMessage()


@contextmanager
def _tied_head_save_warning_silenced():
    """:class:`_TiedHeadSaveFilter` on Accelerate's saving logger for the duration of our own checkpoint save only
    (installed at import it would also silence a user's unrelated Accelerate runs)."""
    accelerate_logger = logging.getLogger("accelerate.utils.other")
    quiet = _TiedHeadSaveFilter()
    accelerate_logger.addFilter(quiet)
    try:
        yield
    finally:
        accelerate_logger.removeFilter(quiet)


@contextmanager
def _quiet_accelerate_checkpointing():
    """Around our own ``save_state`` / ``load_state`` only: Accelerate's INFO lines ("Saving current state to ...",
    one per saved file, at every checkpoint) are dropped, and the tied head's warning (above).

    Left alone when the user set a level on the ``accelerate`` logger (``genssl -v`` sets DEBUG to see them);
    outside our calls, a user's Accelerate logging is as they configured it."""
    accelerate_logger = logging.getLogger("accelerate")
    quiet = accelerate_logger.level == logging.NOTSET
    if quiet:
        accelerate_logger.setLevel(logging.WARNING)
    try:
        with _tied_head_save_warning_silenced():
            yield
    finally:
        if quiet:
            accelerate_logger.setLevel(logging.NOTSET)


# Keys that may change between a run and its resumption (they do not change what is trained).
_RESUMABLE_KEYS = {"output_dir", "log_every", "eval_every", "save_every", "keep_checkpoints", "progress", "cache_dir",
                   "push_to_hub", "hub_model_id", "ddp_timeout", "report_to", "attn_implementation",
                   "gradient_checkpointing", "compile", "dataloader_num_workers"}


@dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. Unknown keys in a YAML file are an error."""

    # objective (see OBJECTIVES)
    objective: str = "semi_ar"
    group_size: int | list[int] | str = 2
    cut_probability: float = 0.5
    mask_ratio_range: list[float] = field(default_factory=lambda: [0.15, 0.15])
    # images (objectives vit_*): patches of a square image, ordered / grouped / masked by the collator
    image_dataset: str = "fashion_mnist"
    image_size: int = 28
    patch_size: int = 4
    num_channels: int = 1
    order: str = "raster"  # "raster" or "random" (shuffled square segments, RandSAC)
    segment_size: int = 1
    norm_pix_loss: bool = False
    max_images: int | None = None
    # data (hf_genssl.data.pretraining_data; names as in transformers' run_clm / run_mlm examples). First match:
    # texts, dataset_name, train_files, else the built-in corpora `corpus`.
    corpus: list[str] = field(default_factory=lambda: ["sotu"])
    texts: list[str] | None = None  # an in-memory corpus (tests); replaces `corpus`
    max_docs: int | None = None
    dataset_name: str | None = None  # a Hub dataset (or a folder saved with save_to_disk)
    dataset_config_name: str | None = None
    dataset_revision: str | None = None  # the Hub dataset's branch, tag or commit (a commit makes the run repeatable)
    train_files: str | list[str] | None = None  # txt / json / jsonl / csv / parquet files, globs allowed
    validation_files: str | list[str] | None = None
    text_column: str = "text"
    sample_by: str = "line"  # txt files: one document per "line", "paragraph" or "document" (file)
    validation_split_percentage: float = 5.0  # held out (by a hash of the text) when there is no validation split
    streaming: bool = False  # tokenize and pack on the fly (an IterableDataset), for corpora larger than disk/RAM
    preprocessing_num_workers: int | None = None  # num_proc of the tokenizing datasets.map
    tokenizer_name_or_path: str | None = None  # an existing tokenizer; default: a BPE trained (once) on the data
    vocab_size: int = 8192  # of the trained BPE
    seq_len: int = 128
    # model
    model_name_or_path: str | None = None  # continue pretraining this GenSSL checkpoint (any objective)
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    dropout: float = 0.0
    # optimisation
    max_steps: int = 300
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "auto" (the shipped configs): bf16 where the GPU / CPU has it; `accelerate launch
    # --mixed_precision` wins over this value
    ddp_timeout: int = 1800  # seconds a process waits for the others (torch.distributed's timeout; transformers' name)
    # how the model computes (never what: a run may resume with other values); names as in transformers
    attn_implementation: str | None = None  # "sdpa" (the models' default), "eager" or "flex_attention"
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward: less memory, more time
    compile: bool = False  # torch.compile the model (in place; checkpoints stay interchangeable with eager runs)
    dataloader_num_workers: int = 0  # processes that collate batches (0: the main process; not with streaming)
    seed: int = 0
    # bookkeeping
    output_dir: str = "runs/pretrain"
    cache_dir: str | None = None
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    keep_checkpoints: int = 2
    progress: bool = True
    push_to_hub: bool = False
    hub_model_id: str | None = None
    report_to: str | list[str] = "none"  # Accelerate trackers: "tensorboard", "wandb", ..., "all" or "none"

    def training_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _RESUMABLE_KEYS}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.training_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Objective:
    """How an objective shows up: the data it reads, the content stream's attention, the collator of its batches."""

    content_attention: str
    make_collator: Callable[[PretrainConfig, Any, int], Any]
    card_name: str  # the objective's name in hf_genssl.model_card.KNOWN_OBJECTIVES
    modality: str = "text"  # "text" (token blocks, GenSSLForPreTraining) or "image" (GenSSLViTForPreTraining)


def _semi_ar(group_size_of: Callable[[PretrainConfig], Any]):
    def make(cfg: PretrainConfig, tokenizer, seed: int):
        return DataCollatorForSemiAutoregressiveLM(tokenizer=tokenizer, group_size=group_size_of(cfg),
                                                   cut_probability=cfg.cut_probability, seed=seed)
    return make


def _check_ratio_range(cfg: PretrainConfig, fixed: bool) -> tuple[float, float]:
    """``(lo, hi)``; a fixed objective needs ``lo == hi``, a variable one ``lo < hi`` (the config's default,
    [0.15, 0.15], would otherwise silently turn ``variable_masked`` into BERT's fixed ratio)."""
    lo, hi = cfg.mask_ratio_range
    if fixed and lo != hi:
        raise ValueError(f"objective {cfg.objective!r} uses one fixed ratio; got mask_ratio_range="
                         f"{cfg.mask_ratio_range} (use objective "
                         f"'{cfg.objective.replace('masked', 'variable_masked')}' "
                         "for a range).")
    if not fixed and lo == hi:
        raise ValueError(f"objective {cfg.objective!r} draws the mask ratio from a range; got mask_ratio_range="
                         f"{cfg.mask_ratio_range}: set e.g. [0.15, 0.5] (text) or [0.1, 0.9] (images), "
                         "or use objective "
                         f"'{cfg.objective.replace('variable_masked', 'masked')}' for one fixed ratio.")
    return lo, hi


def _masked(fixed: bool):
    def make(cfg: PretrainConfig, tokenizer, seed: int):
        lo, hi = _check_ratio_range(cfg, fixed)
        return DataCollatorForVariableLengthMasking(tokenizer=tokenizer, mask_ratio_range=(lo, hi), seed=seed)
    return make


def _image_semi_ar(group_size_of: Callable[[PretrainConfig], Any]):
    def make(cfg: PretrainConfig, processor, seed: int):
        from .image_collators import DataCollatorForSemiAutoregressiveImages

        return DataCollatorForSemiAutoregressiveImages(patch_size=cfg.patch_size, segment_size=cfg.segment_size,
                                                       order=cfg.order, group_size=group_size_of(cfg), seed=seed)
    return make


def _image_masked(fixed: bool):
    def make(cfg: PretrainConfig, processor, seed: int):
        from .image_collators import DataCollatorForVariableLengthImageMasking

        lo, hi = _check_ratio_range(cfg, fixed)
        return DataCollatorForVariableLengthImageMasking(patch_size=cfg.patch_size, mask_ratio_range=(lo, hi),
                                                         seed=seed)
    return make


OBJECTIVES: dict[str, Objective] = {
    # autoregressive: two streams, one token per group
    "ar": Objective("causal", _semi_ar(lambda cfg: 1), "autoregressive"),
    # diversity-enhanced semi-autoregressive: groups of `group_size`
    "semi_ar": Objective("causal", _semi_ar(lambda cfg: cfg.group_size), "semi_autoregressive"),
    # masked LM with a fixed ratio (BERT)
    "masked": Objective("bidirectional", _masked(fixed=True), "masked"),
    # masked LM with a per-sample ratio from `mask_ratio_range`
    "variable_masked": Objective("bidirectional", _masked(fixed=False), "variable_length_masked"),
    # the same over image patches: raster order (or shuffled segments), groups of `group_size` segments
    "vit_ar": Objective("causal", _image_semi_ar(lambda cfg: 1), "autoregressive", "image"),
    "vit_semi_ar": Objective("causal", _image_semi_ar(lambda cfg: cfg.group_size), "semi_autoregressive", "image"),
    "vit_masked": Objective("bidirectional", _image_masked(fixed=True), "masked", "image"),
    "vit_variable_masked": Objective("bidirectional", _image_masked(fixed=False), "variable_length_masked", "image"),
}


def load_config(
    source: str | Path | dict | PretrainConfig | None = None, overrides: dict | None = None
) -> PretrainConfig:
    """A config from a shipped config's name (``"tiny"``, see :mod:`hf_genssl.configs`), a YAML path, a dict or a
    config; then overrides."""
    import yaml

    if isinstance(source, PretrainConfig):
        values = asdict(source)
    elif isinstance(source, dict):
        values = dict(source)
    elif source is None:
        values = {}
    else:
        from .configs import read_config_text

        values = yaml.safe_load(read_config_text(source)) or {}
    values.update(overrides or {})
    known = {f.name for f in fields(PretrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown config keys {unknown}; valid keys are {sorted(known)}.")
    config = PretrainConfig(**values)
    _check_values(config)
    return config


# Value rules of load_config: key -> (types, lower bound, bound included, what the value means).
# bool is not an int here.
_POSITIVE_INTS = ("max_steps", "batch_size", "gradient_accumulation_steps", "vocab_size", "seq_len", "hidden_size",
                  "num_hidden_layers", "num_attention_heads", "log_every", "eval_every", "eval_batches", "save_every",
                  "keep_checkpoints", "image_size", "patch_size", "num_channels", "segment_size", "ddp_timeout")
_OPTIONAL_POSITIVE_INTS = ("intermediate_size", "max_docs", "max_images")
_NON_NEGATIVE_INTS = ("warmup_steps", "seed", "dataloader_num_workers")
_NON_NEGATIVE_FLOATS = ("weight_decay", "max_grad_norm")
_BOOLS = ("progress", "push_to_hub", "norm_pix_loss", "gradient_checkpointing", "compile")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(config: PretrainConfig, key: str) -> float:
    """The float value of ``key``; YAML 1.1 reads ``1e-3`` (no dot) as a string, so a numeric string is accepted."""
    value = getattr(config, key)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{key} must be a number, got {getattr(config, key)!r}.")
    setattr(config, key, float(value))
    return float(value)


def _check_values(cfg: PretrainConfig) -> None:
    """Type and range of every value, and the combinations that cannot train, before any data or tokenizer work
    (a typo should fail in a second, not after minutes of tokenization)."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {cfg.objective!r}; choose one of {sorted(OBJECTIVES)}.")
    if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be 'auto', 'no', 'bf16' or 'fp16', got {cfg.mixed_precision!r}.")
    for key in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
        value = getattr(cfg, key)
        if value is None and key in _OPTIONAL_POSITIVE_INTS:
            continue
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}.")
    for key in _NON_NEGATIVE_INTS:
        value = getattr(cfg, key)
        if not _is_int(value) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}.")
    for key in _BOOLS:
        if not isinstance(getattr(cfg, key), bool):
            raise ValueError(f"{key} must be true or false, got {getattr(cfg, key)!r}.")
    if _as_float(cfg, "learning_rate") <= 0:
        raise ValueError(f"learning_rate must be > 0, got {cfg.learning_rate!r}.")
    for key in _NON_NEGATIVE_FLOATS:
        if _as_float(cfg, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(cfg, key)!r}.")
    if not 0.0 <= _as_float(cfg, "dropout") < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout!r}.")
    if not 0.0 < _as_float(cfg, "cut_probability") <= 1.0:
        raise ValueError(f"cut_probability must be in (0, 1], got {cfg.cut_probability!r}.")
    _check_group_size(cfg)
    ratios = cfg.mask_ratio_range
    if (not isinstance(ratios, (list, tuple)) or len(ratios) != 2
            or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios)
            or not 0.0 < ratios[0] <= ratios[1] <= 1.0):
        raise ValueError(f"mask_ratio_range must be [lo, hi] with 0 < lo <= hi <= 1, got {ratios!r}.")
    if "masked" in cfg.objective:
        _check_ratio_range(cfg, fixed=not cfg.objective.endswith("variable_masked"))
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size ({cfg.hidden_size}) must be a multiple of num_attention_heads "
                         f"({cfg.num_attention_heads}).")
    if cfg.seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (the BOS token plus one token), got {cfg.seq_len}.")
    if cfg.order not in ("raster", "random"):
        raise ValueError(f"order must be 'raster' or 'random', got {cfg.order!r}.")
    if not isinstance(cfg.corpus, list) or not cfg.corpus or not all(isinstance(c, str) for c in cfg.corpus):
        raise ValueError(f"corpus must be a non-empty list of source names, got {cfg.corpus!r}.")
    if cfg.texts is not None and (not isinstance(cfg.texts, list) or not all(isinstance(t, str) for t in cfg.texts)):
        raise ValueError("texts must be a list of strings (or null).")
    if OBJECTIVES[cfg.objective].modality == "image":
        _check_image_grid(cfg)
    _trackers(cfg)
    _check_run_settings(cfg)


def _check_run_settings(cfg: PretrainConfig) -> None:
    """The settings of how a run computes and publishes (the types are checked above)."""
    if cfg.attn_implementation is not None and not isinstance(cfg.attn_implementation, str):
        raise ValueError(f"attn_implementation must be a name (sdpa, eager, flex_attention) or null, got "
                         f"{cfg.attn_implementation!r}.")
    if cfg.streaming and cfg.dataloader_num_workers:
        raise ValueError("dataloader_num_workers must be 0 with streaming: the stream's saved position counts exactly "
                         "the examples of the batches handed out, which worker processes reading ahead would not.")
    if cfg.push_to_hub:
        from .hub import check_hub_model_id

        check_hub_model_id(cfg.push_to_hub, cfg.hub_model_id)


def _trackers(cfg: PretrainConfig) -> list[str] | str | None:
    """``report_to`` as Accelerate's ``log_with``: None for "none" (or an empty list), else the tracker names."""
    names = [cfg.report_to] if isinstance(cfg.report_to, str) else cfg.report_to
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"report_to must be a tracker name or a list of them (tensorboard, wandb, ...), got "
                         f"{cfg.report_to!r}.")
    names = [name for name in names if name != "none"]
    return None if not names else "all" if "all" in names else names


def _check_group_size(cfg: PretrainConfig) -> None:
    sizes = cfg.group_size if isinstance(cfg.group_size, list) else [cfg.group_size]
    if cfg.group_size == "random" and not cfg.objective.startswith("vit_"):
        return
    if not sizes or not all(_is_int(s) and s >= 1 for s in sizes):
        allowed = "a positive integer or a list of them" + ("" if cfg.objective.startswith("vit_") else ", or 'random'")
        raise ValueError(f"group_size must be {allowed}, got {cfg.group_size!r}.")


def _check_image_grid(cfg: PretrainConfig) -> None:
    """Patches tile the image, segments tile the patch grid, and the first group (context only) leaves targets."""
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"patch_size ({cfg.patch_size}) must divide image_size ({cfg.image_size}).")
    grid = cfg.image_size // cfg.patch_size
    if grid % cfg.segment_size:
        raise ValueError(f"segment_size ({cfg.segment_size}) must divide the {grid}x{grid} patch grid.")
    segments = (grid // cfg.segment_size) ** 2
    if cfg.objective in ("vit_ar", "vit_semi_ar"):
        smallest = 1 if cfg.objective == "vit_ar" else min(
            cfg.group_size if isinstance(cfg.group_size, list) else [cfg.group_size])
        if smallest >= segments:
            raise ValueError(f"group_size={cfg.group_size!r} covers all {segments} segments of an image with the first "
                             "group, which is context only: no patch would be predicted. Use a group_size below "
                             f"{segments}, or a smaller patch_size / segment_size.")
    elif grid * grid < 2:
        raise ValueError(
            f"masking needs at least 2 patches per image; patch_size {cfg.patch_size} leaves {grid * grid}."
        )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` from the command line; values parsed as YAML (numbers, lists, booleans)."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override expects KEY=VALUE, got {item!r}.")
        overrides[key] = yaml.safe_load(value)
    return overrides


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------


class _BatchSeededCollator:
    """Re-seeds the collator's own generator from (seed, batch number) before every batch.

    Why: Accelerate's dataloader collates one batch ahead, so a generator state saved with a checkpoint is
    already one batch further than the training; with a seed per batch number, resuming at batch k only needs
    k, and a resumed run draws exactly the group sizes and masks of an uninterrupted one.

    The loop calls :meth:`restart_at` with the number of the next batch before each epoch's iterator exists. With
    ``dataloader_num_workers = W`` each worker process collates a copy of this object, and worker ``w`` makes
    batches ``w, w + W, ...`` of the epoch (the DataLoader hands them out in turn), so the batch numbers, and the
    batches, are the same as with no workers.
    """

    def __init__(self, collator, seed: int, start: int = 0):
        self.collator, self.seed = collator, seed
        self.restart_at(start)

    def restart_at(self, batch_number: int) -> None:
        self.first, self.made = batch_number, 0

    def __call__(self, examples):
        worker = torch.utils.data.get_worker_info()
        number = (self.first + self.made if worker is None
                  else self.first + worker.id + self.made * worker.num_workers)
        self.collator._generator.manual_seed(self.seed * 1_000_003 + number)
        self.made += 1
        return self.collator(examples)


def _image_data(cfg: PretrainConfig, accelerator=None, run_dir: Path | None = None, resuming: bool = False):
    """Images as ``{"pixel_values": (C, H, W) in [0, 1]}`` examples; validation = the dataset's test split (the
    other arguments are those of the text data, which images do not need)."""
    from .data.images import image_arrays
    from .data.pretraining_data import PretrainingData

    arrays = image_arrays(cfg.image_dataset, cfg.cache_dir)

    def examples(split: str) -> list[dict]:
        images = arrays[split][0][: cfg.max_images]
        pixels = torch.from_numpy(images.copy()).float().div(255.0)[:, None]
        if pixels.shape[-1] != cfg.image_size or cfg.num_channels != 1:
            raise ValueError(f"{cfg.image_dataset} has 1-channel {pixels.shape[-1]}-pixel images; set image_size and "
                             "num_channels accordingly.")
        return [{"pixel_values": p} for p in pixels]

    return PretrainingData(examples("train"), examples("test"), _image_processor(cfg), cfg.image_dataset)


# ------------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------------


MANIFEST = "manifest.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointError(ValueError):
    """A run folder holds checkpoints that cannot be resumed (none intact), or a run where a fresh one was asked."""


def _write_manifest(folder: Path) -> None:
    """sha256 of every file in ``folder`` (written last: a folder with a manifest was completely written)."""
    (folder / MANIFEST).write_text(json.dumps({"sha256": file_hashes(folder, skip=(MANIFEST,))}, indent=1))


def _manifest_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be trusted (missing / changed file), or None when every file matches its manifest.

    Checkpoints written before manifests existed (a ``trainer_state.json`` and no manifest) pass unverified."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["sha256"]
    except FileNotFoundError:
        if (folder / "trainer_state.json").is_file():
            logger.warning("%s has no %s (written by an older hf_genssl); resuming from it unverified",
                           folder, MANIFEST)
            return None
        return "it is incomplete (no trainer_state.json, no manifest)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its manifest is unreadable ({error})"
    if "trainer_state.json" not in files:
        return "its manifest lists no trainer_state.json"
    return hashes_problem(folder, files)


def _checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder, newest first (``*.tmp`` half-written ones excluded)."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := _CHECKPOINT_NAME.fullmatch(p.name))]
    return sorted(found, reverse=True)


def _find_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint, found by scanning the folder (the ``latest`` pointer is only a convenience).

    A newer checkpoint that fails verification is skipped with a warning naming it and why; when checkpoints
    exist but none is intact, a :class:`CheckpointError` is raised: starting over would overwrite them.
    """
    problems = []
    for _, folder in _checkpoint_dirs(run_dir):
        problem = _manifest_problem(folder)
        if problem is None:
            if problems:
                logger.warning("falling back to %s: %s", folder.name, "; ".join(problems))
            return folder
        problems.append(f"{folder.name} is unusable ({problem})")
    if problems:
        raise CheckpointError(f"{run_dir} holds checkpoints but none is intact: {'; '.join(problems)}. Refusing to "
                              "start over in it; move them away or choose another output_dir.")
    return None


def _holds_a_run(run_dir: Path) -> bool:
    return bool(_checkpoint_dirs(run_dir)) or (run_dir / "final" / "model.safetensors").exists()


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted
    only once its replacement is in place (a kill in between leaves ``final.old`` complete, never nothing)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(accelerator, run_dir: Path, step: int, cfg: PretrainConfig, log_state: dict | None = None) -> None:
    """Write ``checkpoint-step`` to a temporary folder with its sha256 manifest, rename it into place, point
    ``latest`` at it, then prune the oldest beyond ``keep_checkpoints``: no checkpoint is deleted before a newer
    complete one exists. ``log_state`` (the open logging window) makes the logs of a resumed run continue exactly."""
    name = f"checkpoint-{step}"
    tmp = run_dir / f"{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with _quiet_accelerate_checkpointing():
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "fingerprint": cfg.fingerprint(), "config": cfg.training_dict(),
                 "log_window": log_state or {}}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        _write_manifest(tmp)
        _publish(tmp, run_dir / name)
        pointer_tmp = run_dir / "latest.tmp"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, run_dir / "latest")
        for old_step, old in _checkpoint_dirs(run_dir)[cfg.keep_checkpoints :]:
            if old_step < step:
                shutil.rmtree(old, ignore_errors=True)
        for stale in run_dir.glob("checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()


def _check_resumable(checkpoint: Path, cfg: PretrainConfig) -> tuple[int, dict]:
    """``(step, logging window)`` of ``checkpoint``; a different training config is refused, naming the keys."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if state["fingerprint"] != cfg.fingerprint():
        saved, now = state["config"], cfg.training_dict()
        differing = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(
            f"Refusing to resume {checkpoint} with a different config; differing keys: "
            + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differing)
            + ". Use a new output_dir, or the original config."
        )
    return int(state["step"]), state.get("log_window") or {}


def _resume_log(log_path: Path, step: int) -> list[dict]:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (rows logged after the checkpoint are about to be logged
    again), rewriting the file atomically; return them."""
    if not log_path.exists():
        return []
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    kept = [row for row in rows if row.get("step", 0) <= step]
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, log_path)
    return kept


# ------------------------------------------------------------------------------------------------------------
# the run, in stages: start (config, Accelerator, resume point) -> build (data, model, collator) -> optimizer ->
# train loop -> finish (final checkpoint, card, push)
# ------------------------------------------------------------------------------------------------------------


def run_pretraining(config: str | Path | dict | PretrainConfig, overrides: dict | None = None,
                    resume: bool = False) -> dict:
    """Pretrain as ``config`` says; return final metrics and paths. See the module docstring for guarantees."""
    run = _start(config, overrides, resume)
    built = _build(run)
    model, optimizer, scheduler, batches = _prepare(run, built, *_optimizer(run.cfg, built.model))
    logbook = _Logbook(run)
    run_start = time.perf_counter()
    step = _train(run, model, optimizer, scheduler, batches, built, logbook)
    return _finish(run, model, built, logbook, step, run_start)


@dataclass
class _Run:
    """What is decided before anything is built: the config, the Accelerator, the run folder and where training
    starts (the checkpoint resumed, its step and its open logging window)."""

    cfg: PretrainConfig
    objective: Objective
    accelerator: Any
    run_dir: Path
    checkpoint: Path | None
    start_step: int
    log_window: dict


def _start(config, overrides: dict | None, resume: bool) -> _Run:
    """The checked config, the Accelerator, and the resume point: a fresh run refuses a folder that holds one, a
    resumed run starts from the newest intact checkpoint (newer unusable ones are renamed ``*.unusable``)."""
    from accelerate.utils import set_seed

    cfg = load_config(config, overrides)
    # resolved before the fingerprint: resuming an "auto" run on a machine that resolves it differently is refused
    cfg.mixed_precision = _resolve_precision(cfg)
    run_dir = Path(cfg.output_dir)
    accelerator = _accelerator(cfg, run_dir)
    # Every rank decides from the folder itself (a shared filesystem), so no rank waits for one that refused.
    if not resume and _holds_a_run(run_dir):
        raise CheckpointError(f"{run_dir} already holds a run; pass resume=True (--resume) or choose another "
                              "output_dir.")
    checkpoint = _find_checkpoint(run_dir) if resume else None
    start_step, log_window = _check_resumable(checkpoint, cfg) if checkpoint else (0, {})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for newer_step, unusable in _checkpoint_dirs(run_dir):
            if checkpoint and newer_step > start_step:  # kept for inspection, out of the way of later saves
                os.replace(unusable, unusable.with_name(unusable.name + ".unusable"))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    set_seed(cfg.seed)
    return _Run(cfg, OBJECTIVES[cfg.objective], accelerator, run_dir, checkpoint, start_step, log_window)


def _accelerator(cfg: PretrainConfig, run_dir: Path):
    """The run's Accelerator (what ``accelerate launch`` asked for, the config's precision and accumulation)."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != cfg.mixed_precision:
        # a process-wide singleton: an earlier run's precision would refuse this one (Trainer resets it the same way)
        AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Step the schedule once per optimizer step ourselves: linked to the optimizer, Accelerate steps it once
        # per process, which makes an N-process run follow a different schedule than a 1-process run.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.ddp_timeout))],
        log_with=_trackers(cfg), project_dir=str(run_dir),
    )
    _warn_unhonoured_launcher(accelerator)
    logger.info("precision %s; global batch = %d per process x %d processes x %d accumulation steps = %d examples",
                cfg.mixed_precision, cfg.batch_size, accelerator.num_processes, cfg.gradient_accumulation_steps,
                cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps)
    return accelerator


# ------------------------------------------------------------------------------------------------------------
# models and precision
# ------------------------------------------------------------------------------------------------------------


def _image_model(cfg: PretrainConfig, processor, objective: Objective):
    from .models.configuration_genssl_vit import GenSSLViTConfig
    from .models.modeling_genssl_vit import GenSSLViTForPreTraining

    return GenSSLViTForPreTraining(GenSSLViTConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size or 4 * cfg.hidden_size,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        content_attention=objective.content_attention, norm_pix_loss=cfg.norm_pix_loss,
    ))


def _model(cfg: PretrainConfig, tokenizer, objective: Objective):
    from .models.configuration_genssl import GenSSLConfig
    from .models.modeling_genssl import GenSSLForPreTraining

    config = GenSSLConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.seq_len, hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, content_attention=objective.content_attention,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
    )
    return GenSSLForPreTraining(config)


def _pretrained_model(cfg: PretrainConfig, processor, objective: Objective):
    """A saved GenSSL checkpoint to continue pretraining, possibly under another objective (e.g. AR -> semi-AR).

    The checkpoint's architecture wins over the config's model fields; the content stream's attention and the
    ViT's pixel target (``norm_pix_loss``) follow the run; the embeddings grow when the tokenizer gained special
    tokens. Our own classes load it, so no code from the checkpoint runs.
    """
    from .models.configuration_genssl import GenSSLConfig
    from .models.configuration_genssl_vit import GenSSLViTConfig
    from .models.modeling_genssl import GenSSLForPreTraining
    from .models.modeling_genssl_vit import GenSSLViTForPreTraining

    path = cfg.model_name_or_path
    wanted = GenSSLViTConfig if objective.modality == "image" else GenSSLConfig
    try:
        found = wanted.get_config_dict(path)[0].get("model_type")
    except OSError as error:
        raise ValueError(f"model_name_or_path={path!r}: no checkpoint there ({error})".splitlines()[0]) from error
    if found != wanted.model_type:
        raise ValueError(f"model_name_or_path={path!r} is a {found!r} checkpoint; objective {cfg.objective!r} needs "
                         f"a {wanted.model_type!r} one.")
    config = wanted.from_pretrained(path)
    if objective.modality == "image":  # the collators cut patches by the run's config, the model by its own
        differ = [f"{key} {getattr(cfg, key)} (checkpoint: {getattr(config, key)})"
                  for key in ("image_size", "patch_size", "num_channels") if getattr(cfg, key) != getattr(config, key)]
        if differ:
            raise ValueError(f"model_name_or_path={path!r} was pretrained on other patches: this run has "
                             f"{', '.join(differ)}; set them to the checkpoint's.")
        if config.norm_pix_loss != cfg.norm_pix_loss:  # what the loss regresses is the run's choice, as its objective
            logger.warning("norm_pix_loss: this run's %s replaces the checkpoint's %s (the pixel target is set by the "
                           "run, like the objective).", cfg.norm_pix_loss, config.norm_pix_loss)
            config.norm_pix_loss = cfg.norm_pix_loss
    config.content_attention = objective.content_attention
    model_class = GenSSLViTForPreTraining if objective.modality == "image" else GenSSLForPreTraining
    model = model_class.from_pretrained(path, config=config)
    if objective.modality == "text":
        if cfg.seq_len > config.max_position_embeddings:
            raise ValueError(f"seq_len={cfg.seq_len} exceeds the checkpoint's max_position_embeddings="
                             f"{config.max_position_embeddings}.")
        if len(processor) != model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(processor))
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"):
            setattr(model.config, key, getattr(processor, key))
    logger.info("continuing pretraining from %s (%s attention, %d parameters)", path, objective.content_attention,
                model.num_parameters())
    return model


def _bf16_available() -> bool:
    """bf16 runs natively here: a GPU that supports it, or a CPU with AVX512-BF16 / AMX (where it is faster than
    fp32 at the same loss: README "Speed", ``python benchmarks/bench_scale.py --sections precision``)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay in fp32
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _resolve_precision(cfg: PretrainConfig) -> str:
    """The precision the run uses: the launcher's (``accelerate launch --mixed_precision`` / an accelerate config,
    seen as ACCELERATE_MIXED_PRECISION) wins; else the config's, with "auto" = bf16 where available."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        if cfg.mixed_precision not in ("auto", launcher):
            logger.warning("mixed_precision: the launcher's %r is used, not the config's %r", launcher,
                           cfg.mixed_precision)
        return launcher
    if cfg.mixed_precision == "auto":
        return "bf16" if _bf16_available() else "no"
    return cfg.mixed_precision


def _warn_unhonoured_launcher(accelerator) -> None:
    """`accelerate launch` asked for sharding that this hardware cannot do through Accelerate (FSDP / DeepSpeed need
    GPUs there): say so instead of silently training as plain data parallel."""
    from accelerate.utils import DistributedType

    for variable, wanted, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP, "FSDP"),
                                   ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true" and accelerator.distributed_type != wanted:
            logger.warning("%s was requested (%s) but Accelerate cannot use it on %s; training as %s (every process "
                           "holds the whole model).", kind, variable, accelerator.device.type,
                           accelerator.distributed_type.value)


# ------------------------------------------------------------------------------------------------------------
# build: data, model, collator (the only place that knows the modality)
# ------------------------------------------------------------------------------------------------------------


def _text_data(cfg: PretrainConfig, accelerator, run_dir: Path, resuming: bool):
    from .data.pretraining_data import load_text_pretraining_data

    return load_text_pretraining_data(cfg, accelerator, run_dir, resuming=resuming,
                                      validation_examples=cfg.eval_batches * cfg.batch_size * accelerator.num_processes)


@dataclass(frozen=True)
class _Modality:
    """What differs between text and images before the loop: where the examples come from, the new model, and how
    many items (tokens / patches) a batch holds, for the tokens/s column."""

    load_data: Callable[[PretrainConfig, Any, Path, bool], Any]  # (cfg, accelerator, run_dir, resuming)
    new_model: Callable[[PretrainConfig, Any, Objective], Any]  # (cfg, processor, objective)
    items_in: Callable[[PretrainConfig, dict], Any]  # (cfg, batch)


def _tokens_in(cfg: PretrainConfig, batch: dict):
    return batch["attention_mask"].sum()


def _patches_in(cfg: PretrainConfig, batch: dict) -> int:
    return len(batch["pixel_values"]) * (cfg.image_size // cfg.patch_size) ** 2


_MODALITIES = {"text": _Modality(_text_data, _model, _tokens_in),
               "image": _Modality(_image_data, _image_model, _patches_in)}


@dataclass
class _Built:
    """What the loop is given: examples (``data.train``, ``data.validation``) and the collator that turns them into
    batches, the model, and two callables that hide the objective and the modality from the loop."""

    data: Any  # hf_genssl.data.pretraining_data.PretrainingData
    model: Any
    collator: _BatchSeededCollator
    validation_collator: Callable[[], Any]  # a fresh collator with a fixed seed, so validations are comparable
    items_in: Callable[[dict], Any]  # tokens / patches in a batch


def _build(run: _Run) -> _Built:
    cfg, objective, accelerator = run.cfg, run.objective, run.accelerator
    modality = _MODALITIES[objective.modality]
    # Data: datasets of examples plus a collator (hf_genssl.data.pretraining_data); the loop never looks at the
    # modality, the source or whether the data is streamed.
    data = modality.load_data(cfg, accelerator, run.run_dir, run.checkpoint is not None)
    if not data.streaming and len(data.train) < cfg.batch_size:
        raise ValueError(f"Fewer training examples ({len(data.train)}) than batch_size={cfg.batch_size}.")
    model = (_pretrained_model(cfg, data.processor, objective) if cfg.model_name_or_path
             else modality.new_model(cfg, data.processor, objective))
    _apply_model_knobs(model, cfg)
    collator = _BatchSeededCollator(objective.make_collator(cfg, data.processor, cfg.seed),
                                    seed=cfg.seed * 1000 + accelerator.process_index,
                                    start=run.start_step * cfg.gradient_accumulation_steps)
    return _Built(data, model, collator, functools.partial(objective.make_collator, cfg, data.processor, 1234),
                  functools.partial(modality.items_in, cfg))


def _apply_model_knobs(model, cfg: PretrainConfig) -> None:
    """How the model computes, never what: the attention backend, activation checkpointing, torch.compile."""
    if cfg.attn_implementation:
        model.set_attn_implementation(cfg.attn_implementation)
    if cfg.gradient_checkpointing:
        # non-reentrant: works with inputs that need no gradient, and under DDP with unused parameters
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        # in place (nn.Module.compile): the module, its state dict keys and so its checkpoints stay as they are
        model.compile(**_COMPILE_OPTIONS)


_COMPILE_OPTIONS: dict[str, Any] = {}  # torch.compile's defaults (inductor); the tests use the quick "eager" backend


def _optimizer(cfg: PretrainConfig, model):
    """AdamW (no weight decay on embeddings, norms and biases) and the warmup + cosine schedule."""
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)


def _prepare(run: _Run, built: _Built, optimizer, scheduler):
    """Model, optimizer and schedule through ``accelerator.prepare``, the batches, and the resumed state."""
    from .data.pretraining_data import train_batches

    cfg, accelerator = run.cfg, run.accelerator
    model, optimizer, scheduler = accelerator.prepare(built.model, optimizer, scheduler)
    # An iterable over one epoch of micro-batches; a streaming one registers its position for checkpointing.
    batches = train_batches(built.data, cfg.batch_size, built.collator, accelerator,
                            run.start_step * cfg.gradient_accumulation_steps, num_workers=cfg.dataloader_num_workers)
    if not built.data.streaming and len(batches) < cfg.gradient_accumulation_steps:
        raise ValueError("Fewer batches per epoch than gradient_accumulation_steps; lower batch_size.")
    if run.checkpoint:
        with _quiet_accelerate_checkpointing():
            accelerator.load_state(str(run.checkpoint))
        logger.info("resumed from %s at step %d", run.checkpoint, run.start_step)
    return model, optimizer, scheduler, batches


# ------------------------------------------------------------------------------------------------------------
# the train loop (objective- and modality-blind)
# ------------------------------------------------------------------------------------------------------------


def _train(run: _Run, model, optimizer, scheduler, batches, built: _Built, logbook: _Logbook) -> int:
    """Optimizer steps from ``run.start_step`` to ``max_steps``; returns the last step. Batches come from the
    collator, the loss from the model: nothing here depends on the objective or the modality."""
    from tqdm.auto import tqdm

    cfg, accelerator = run.cfg, run.accelerator
    evaluate = (functools.partial(_validation_loss, accelerator=accelerator, blocks=built.data.validation, cfg=cfg,
                                  make_collator=built.validation_collator) if built.data.validation else None)
    step, micro_done = run.start_step, run.start_step * cfg.gradient_accumulation_steps
    window = _LogWindow(accelerator, run.log_window)
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and accelerator.is_main_process),
               desc=f"pretrain {cfg.objective}", unit="step")
    model.train()
    if cfg.model_name_or_path and step == 0 and evaluate:  # where the continued model starts from
        logbook.write({"step": 0, "val_loss": evaluate(model)})
    while step < cfg.max_steps:
        built.collator.restart_at(micro_done)  # before the epoch's iterator (and its worker processes) exist
        for batch in batches:  # one epoch (resumes mid-epoch / mid-stream where the checkpoint was)
            # Dropout is seeded per micro-batch: creating a DataLoader iterator (as a resume does) draws from the
            # global generator, so a state saved with the checkpoint alone would not make resumption bit-exact.
            torch.manual_seed(cfg.seed * 1_000_003 + accelerator.process_index * 7_919 + micro_done)
            micro_done += 1
            loss = _micro_step(accelerator, model, optimizer, scheduler, batch, cfg.max_grad_norm)
            window.add(loss / cfg.gradient_accumulation_steps, built.items_in(batch))
            if not accelerator.sync_gradients:
                continue
            step += 1
            window.steps += 1
            bar.update(1)
            _after_step(run, step, model, scheduler, window, evaluate, logbook, bar)
            if step >= cfg.max_steps:
                break
    bar.close()
    return step


def _micro_step(accelerator, model, optimizer, scheduler, batch: dict, max_grad_norm: float) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer and the schedule step when the accumulation is
    complete (``accelerator.sync_gradients``). Returns the detached loss."""
    with accelerator.accumulate(model):
        loss = model(**batch, only_target_logits=True).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _after_step(run: _Run, step: int, model, scheduler, window: _LogWindow, evaluate, logbook: _Logbook,
                bar) -> None:
    """Log, validate and checkpoint after optimizer step ``step``, as often as the config says."""
    cfg = run.cfg
    record: dict[str, Any] = {}
    if step % cfg.log_every == 0 or step == cfg.max_steps:
        record = window.close(step, scheduler.get_last_lr()[0])
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
    if (step % cfg.eval_every == 0 or step == cfg.max_steps) and evaluate:
        record = {"step": step, **record, "val_loss": evaluate(model)}
    if record:
        logbook.write(record)
    if step % cfg.save_every == 0 and step < cfg.max_steps:
        _save_checkpoint(run.accelerator, run.run_dir, step, cfg, window.state())


class _LogWindow:
    """The loss sum and items (tokens / patches) since the last logged row.

    They stay on the device and are reduced across processes only when a row is logged or a checkpoint saved: no
    host sync per micro-batch. Resuming, the main process carries the saved window (the sum over processes
    restores it)."""

    def __init__(self, accelerator, saved: dict):
        self.accelerator = accelerator
        carried = accelerator.is_main_process
        float_type = torch.float32 if accelerator.device.type == "mps" else torch.float64
        self.loss = torch.tensor(float(saved.get("loss", 0.0)) * accelerator.num_processes * carried,
                                 dtype=float_type, device=accelerator.device)
        self.items = torch.tensor(int(saved.get("tokens", 0)) * carried, device=accelerator.device)
        self.steps = int(saved.get("steps", 0))
        self.start = time.perf_counter() - float(saved.get("seconds", 0.0))

    def add(self, loss: torch.Tensor, items) -> None:
        self.items += items
        self.loss += loss

    def close(self, step: int, lr: float) -> dict[str, Any]:
        """The row logged at ``step``; the window starts again."""
        elapsed = time.perf_counter() - self.start
        loss_sum, tokens = _reduce_window(self.accelerator, self.loss, self.items)
        row = {"step": step, "loss": loss_sum / self.steps, "lr": lr, "tokens": tokens,
               "tokens_per_s": tokens / max(elapsed, 1e-9)}
        self.loss.zero_()
        self.items.zero_()
        self.steps, self.start = 0, time.perf_counter()
        return row

    def state(self) -> dict[str, Any]:
        """The open window, saved with a checkpoint so that a resumed run logs exactly what an uninterrupted one
        does."""
        loss_sum, tokens = _reduce_window(self.accelerator, self.loss, self.items)
        return {"loss": loss_sum, "steps": self.steps, "tokens": tokens, "seconds": time.perf_counter() - self.start}


class _Logbook:
    """The run's rows: kept in memory (the result, the model card), appended to ``metrics.jsonl`` by the main
    process and sent to Accelerate's trackers."""

    def __init__(self, run: _Run):
        self.accelerator, self.path = run.accelerator, run.run_dir / "metrics.jsonl"
        if self.accelerator.log_with:  # trackers log from the main process only; their files go under output_dir
            self.accelerator.init_trackers("trackers", config={
                k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run.cfg.training_dict().items()})
        # rows logged after the checkpoint are logged again: drop them, so a resumed log equals an uninterrupted one
        self.history: list[dict] = (_resume_log(self.path, run.start_step) if self.accelerator.is_main_process
                                    else [])

    def write(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.history.append(record)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])

    def close(self) -> None:
        for tracker in self.accelerator.trackers:  # not end_training(): it also destroys the caller's process group
            tracker.finish()


@torch.no_grad()
def _validation_loss(model, accelerator, blocks, cfg, make_collator) -> float:
    """Mean loss over the first ``eval_batches`` validation batches, with a fixed collator seed (comparable runs).

    Each process evaluates its share of ``blocks`` (the same list on every process), and every process runs the
    same number of batches: under DDP (buffer broadcast) or FSDP (parameter gathers) a forward is a collective, so
    a process with fewer batches, or none, left the others waiting forever. A validation set with fewer blocks than
    processes is evaluated whole by every process."""
    collator = make_collator()
    shares = [blocks[rank :: accelerator.num_processes][: cfg.eval_batches * cfg.batch_size]
              for rank in range(accelerator.num_processes)]
    own = shares[accelerator.process_index]
    batches = min(math.ceil(len(share) / cfg.batch_size) for share in shares)
    if not batches:
        own = blocks[: cfg.eval_batches * cfg.batch_size]
        batches = math.ceil(len(own) / cfg.batch_size)
    if not batches:
        return float("nan")
    model.eval()
    losses = []
    for i in range(0, batches * cfg.batch_size, cfg.batch_size):
        batch = {k: v.to(accelerator.device) for k, v in collator(own[i : i + cfg.batch_size]).items()}
        losses.append(model(**batch, only_target_logits=True).loss)
    model.train()
    return accelerator.gather(torch.stack(losses).mean()[None]).mean().item()


def _reduce_window(accelerator, loss_sum: torch.Tensor, tokens: torch.Tensor) -> tuple[float, int]:
    """(sum of the per-micro-batch losses averaged over processes, tokens of all processes) of the open window: one
    collective and one host sync, done only when a row is logged or a checkpoint saved."""
    total = accelerator.reduce(torch.stack([loss_sum, tokens.to(loss_sum.dtype)]), reduction="sum")
    return total[0].item() / accelerator.num_processes, int(total[1].item())


# ------------------------------------------------------------------------------------------------------------
# finish: the last checkpoint, final/ with its card, the push
# ------------------------------------------------------------------------------------------------------------


def _finish(run: _Run, model, built: _Built, logbook: _Logbook, step: int, run_start: float) -> dict:
    cfg, accelerator = run.cfg, run.accelerator
    if step > run.start_step or run.checkpoint is None:  # a resumed finished run has its last checkpoint already
        _save_checkpoint(accelerator, run.run_dir, step, cfg)
    final_dir = run.run_dir / "final"
    pushed = None
    # gathered on every process (a sharded model needs all of them), written by the main one
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        card = _save_final(run, accelerator.unwrap_model(model), state_dict, built, logbook.history,
                           time.perf_counter() - run_start)
        if cfg.push_to_hub:
            from .hub import push_finished_run

            pushed = push_finished_run(final_dir, cfg.hub_model_id, card=card)
    logbook.close()
    accelerator.wait_for_everyone()
    if pushed is not None:
        pushed.raise_error()  # the run is saved; the caller (and the CLI's exit status) must know
    val = [r["val_loss"] for r in logbook.history if "val_loss" in r]
    return {"final_dir": str(final_dir), "steps": step, "history": logbook.history,
            "final_val_loss": val[-1] if val else None, "seconds": time.perf_counter() - run_start,
            "data": built.data.name, "mixed_precision": cfg.mixed_precision}


def _save_final(run: _Run, model, state_dict: dict, built: _Built, history: list[dict], seconds: float):
    """Write ``final/`` (weights, processor, card) next to it and rename it into place: ``genssl reproduce`` takes
    ``final/model.safetensors`` as "this run is done". Returns the card renderer for a push."""
    final_dir, final_tmp = run.run_dir / "final", run.run_dir / "final.tmp"
    shutil.rmtree(final_tmp, ignore_errors=True)
    model.save_pretrained(final_tmp, state_dict=state_dict)
    built.data.processor.save_pretrained(final_tmp)
    card = _write_card(final_tmp, final_dir, run.cfg, run.objective, history, built.data.name, seconds)
    _publish(final_tmp, final_dir)
    return card


def _image_processor(cfg: PretrainConfig):
    """Saved with image checkpoints so the image-classification pipeline works (Pillow-based, no torchvision)."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size}, do_normalize=False,
                                image_mean=[0.0] * cfg.num_channels, image_std=[1.0] * cfg.num_channels)


# The config keys that are the objective's own hyper-parameters (the card lists these, not other objectives').
_OBJECTIVE_KEYS: dict[str, tuple[str, ...]] = {
    "ar": (), "semi_ar": ("group_size",), "masked": ("mask_ratio_range",), "variable_masked": ("mask_ratio_range",),
    "vit_ar": ("order", "segment_size"), "vit_semi_ar": ("group_size", "order", "segment_size"),
    "vit_masked": ("mask_ratio_range", "norm_pix_loss"), "vit_variable_masked": ("mask_ratio_range", "norm_pix_loss"),
}


def _card_fields(final_dir: Path, cfg: PretrainConfig, objective: Objective, history, data_name, seconds) -> dict:
    """The model card of a pretraining run (see :mod:`hf_genssl.model_card`); ``repo_id`` is the Hub repo when one
    is named, else the local folder (:func:`hf_genssl.hub.push_checkpoint` renders it again for the repo it goes
    to)."""
    val = [r["val_loss"] for r in history if "val_loss" in r]
    results = {"validation loss": val[-1], "validation perplexity (exp loss)": math.exp(val[-1])} if val else {}
    hparams = {key: getattr(cfg, key) for key in _OBJECTIVE_KEYS.get(cfg.objective, ())}
    if hparams.get("group_size") == "random":
        hparams["cut_probability"] = cfg.cut_probability
    image = objective.modality == "image"
    return {
        "repo_id": cfg.hub_model_id or str(final_dir), "model_name": cfg.hub_model_id or final_dir.parent.name,
        "objective": objective.card_name, "objective_hparams": hparams,
        "model_details": {"layers": cfg.num_hidden_layers, "hidden size": cfg.hidden_size,
                          "heads": cfg.num_attention_heads,
                          **({"image / patch": f"{cfg.image_size} / {cfg.patch_size}"} if image else
                             {"vocabulary": cfg.vocab_size, "sequence length": cfg.seq_len}),
                          "training steps": cfg.max_steps, "batch size": cfg.batch_size,
                          "learning rate": cfg.learning_rate},
        "training_data": f"{data_name} (split by document; see hf_genssl.data)",
        "results": results, "results_data": f"held-out documents of {data_name}", "results_dataset": data_name,
        "results_hardware": f"{'GPU' if torch.cuda.is_available() else 'CPU'}, {seconds:.0f} s of training",
    }


def _write_card(folder: Path, final_dir: Path, cfg: PretrainConfig, objective: Objective, history, data_name,
                seconds):
    """Write the card of the run whose final checkpoint goes to ``final_dir`` into ``folder`` (where it is being
    written); return a function that renders it for a Hub repo id (for the push)."""
    from .model_card import render_model_card, tokenizer_needs_remote_code, write_model_card

    template = "vision_model" if objective.modality == "image" else "language_model"
    fields = _card_fields(final_dir, cfg, objective, history, data_name, seconds)
    try:
        write_model_card(folder, template, fields)
    except (TypeError, ValueError) as error:
        logger.warning("model card not written: %s", error)
        return None
    remote = tokenizer_needs_remote_code(folder)
    return lambda repo_id: render_model_card(template, **{**fields, "repo_id": repo_id, "model_name": repo_id,
                                                           "tokenizer_trust_remote_code": remote})
