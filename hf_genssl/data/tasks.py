"""GLUE-style classification tasks: offline ones built from registry data, real GLUE, and local files.

Every task is a ``DatasetDict`` with GLUE's columns (``sentence`` or a pair such as ``sentence1``/``sentence2``,
``label``, ``idx``; class labels are a ``ClassLabel``, regression labels ``float32``) plus a :class:`TaskInfo`
saying how to score it, so one fine-tuning script serves all of them.

Offline tasks have fixed train / validation / test splits (80 / 10 / 10, stratified by label with
``Dataset.train_test_split`` and a fixed seed), built once and saved under ``<cache>/datasets/task-<name>``.
Exact duplicate texts are dropped before splitting (first occurrence kept): the BBC set has 98, the SMS set
328 and the Rotten Tomatoes set 2; a duplicate on both sides of a split would inflate test scores.

* ``rt-polarity`` (SST-2-like): the 10,605 Rotten Tomatoes sentences of the VADER paper (Pang & Lee's
  sentences, from which SST was built) with their mean human score in [-4, 4]; ``score > 0`` -> 1
  (positive), ``score < 0`` -> 0 (negative), and sentences with ``|score| < RT_NEUTRAL_BAND`` (0.8) dropped.
  Why 0.8: SST's fine-grained labels cut its [0, 1] sentiment scale into fifths and SST-2 drops the middle
  fifth (0.4, 0.6] as neutral; the same middle fifth of [-4, 4] is (-0.8, 0.8). It drops ~10% of the
  sentences, the ones whose raters disagreed on the sign.
* ``rt-regression`` (STS-B-like): the same sentences (neutral ones included), ``label`` = the score rescaled
  affinely to STS-B's [0, 5] range, ``(score + 4) * 5 / 8`` (score = ``label * 8 / 5 - 4``). Pearson and
  Spearman are unchanged by an affine map, and on STS-B's range an MSE head, its loss scale and any recipe
  tuned on STS-B carry over as is. Both rt tasks share one split of the sentences, so no sentence is in the
  train split of one and the test split of the other.
* ``bbc-news``: BBC News articles (title line + body), 5 topics (label names = the folder names, sorted).
* ``sms-spam``: SMS Spam Collection messages, ham = 0, spam = 1 (scored with accuracy and F1, like MRPC).

Real GLUE (``glue/cola`` ... ``glue/wnli``) loads ``nyu-mll/glue`` through ``datasets.load_dataset``; local
files in GLUE format load through ``datasets``' csv / json / parquet builders.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .corpus import cached_dataset, clean_text, column, decode_text
from .sources import DataUnavailableError, cache_root, fetch_source

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset, DatasetDict

__all__ = [
    "GLUE_TASKS",
    "OFFLINE_TASKS",
    "RT_NEUTRAL_BAND",
    "TASKS",
    "TaskInfo",
    "check_labels",
    "label_distribution",
    "load_task",
    "task_info",
    "validate_glue_columns",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when a task's construction changes, so cached copies are rebuilt
SPLIT_SEED = 0
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}
RT_NEUTRAL_BAND = 0.8
TEXT_COLUMN_SETS: tuple[tuple[str, ...], ...] = (
    ("sentence",), ("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
    ("premise", "hypothesis"),
)
LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                 "test": "test"}


@dataclass(frozen=True)
class TaskInfo:
    """How to build and score one task.

    ``metric`` is a config name of ``hf_genssl.metrics``' ``glue_metric`` module (``accuracy``,
    ``accuracy_f1``, ``pearson_spearman``, or a GLUE task name for real GLUE).
    """

    name: str
    num_labels: int
    is_regression: bool
    label_names: tuple[str, ...] | None
    metric: str
    text_columns: tuple[str, ...] = ("sentence",)
    source: str = ""
    description: str = ""


OFFLINE_TASKS: dict[str, TaskInfo] = {
    "rt-polarity": TaskInfo("rt-polarity", 2, False, ("negative", "positive"), "accuracy", source="rt_sentences",
                            description="SST-2-like binary sentiment of Rotten Tomatoes sentences"),
    "rt-regression": TaskInfo("rt-regression", 1, True, None, "pearson_spearman", source="rt_sentences",
                              description="STS-B-like regression of the mean human sentiment score, on [0, 5]"),
    "bbc-news": TaskInfo("bbc-news", 5, False, ("business", "entertainment", "politics", "sports", "tech"),
                         "accuracy", source="bbc_news", description="BBC News topic classification"),
    "sms-spam": TaskInfo("sms-spam", 2, False, ("ham", "spam"), "accuracy_f1", source="sms_spam",
                         description="SMS spam detection"),
}

_GLUE_SPECS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {
    "cola": (("unacceptable", "acceptable"), ("sentence",)),
    "sst2": (("negative", "positive"), ("sentence",)),
    "mrpc": (("not_equivalent", "equivalent"), ("sentence1", "sentence2")),
    "qqp": (("not_duplicate", "duplicate"), ("question1", "question2")),
    "stsb": (None, ("sentence1", "sentence2")),
    "mnli": (("entailment", "neutral", "contradiction"), ("premise", "hypothesis")),
    "qnli": (("entailment", "not_entailment"), ("question", "sentence")),
    "rte": (("entailment", "not_entailment"), ("sentence1", "sentence2")),
    "wnli": (("not_entailment", "entailment"), ("sentence1", "sentence2")),
}
GLUE_TASKS: dict[str, TaskInfo] = {
    f"glue/{task}": TaskInfo(f"glue/{task}", len(names) if names else 1, names is None, names, task, columns,
                             source="hub:nyu-mll/glue", description=f"GLUE {task} (needs the Hugging Face Hub)")
    for task, (names, columns) in _GLUE_SPECS.items()
}
TASKS: dict[str, TaskInfo] = {**OFFLINE_TASKS, **GLUE_TASKS}


# ------------------------------------------------------------------------------------------------------------
# raw tables (one row per example, source order, duplicates dropped)
# ------------------------------------------------------------------------------------------------------------


def _rt_table(cache_dir) -> pd.DataFrame:
    """``id``, ``score``, ``sentence`` of movieReviewSnippets_GroundTruth.txt (tab-separated, CRLF, no quoting)."""
    import pandas as pd

    path = fetch_source("rt_sentences", cache_dir) / "movieReviewSnippets_GroundTruth.txt"
    table = pd.read_csv(path, sep="\t", header=None, names=["id", "score", "sentence"], quoting=csv.QUOTE_NONE,
                        encoding="utf-8", dtype={"id": np.int64, "score": np.float64, "sentence": str},
                        keep_default_na=False)
    table["sentence"] = table["sentence"].str.strip()
    return table[table["sentence"] != ""].drop_duplicates("sentence", keep="first").reset_index(drop=True)


def _bbc_table(cache_dir) -> pd.DataFrame:
    """``label`` (folder name), ``sentence`` (file text) of every ``<class>/NNN.txt``, duplicates dropped."""
    import pandas as pd

    folder = fetch_source("bbc_news", cache_dir)
    paths = sorted(folder.glob("*/*.txt"), key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else 0))
    table = pd.DataFrame({"label": [p.parent.name for p in paths], "raw": [p.read_bytes() for p in paths]})
    table = table.drop_duplicates("raw", keep="first").reset_index(drop=True)
    table["sentence"] = table["raw"].map(lambda raw: clean_text(decode_text(raw)))
    return table[["label", "sentence"]]


def _sms_table(cache_dir) -> pd.DataFrame:
    """``label`` (ham/spam), ``sentence`` of spam_collection.csv: no header, one tab, quotes are literal text."""
    import pandas as pd

    path = fetch_source("sms_spam", cache_dir) / "spam_collection.csv"
    table = pd.read_csv(path, sep="\t", header=None, names=["label", "sentence"], quoting=csv.QUOTE_NONE,
                        dtype=str, keep_default_na=False, encoding="utf-8")
    return table.drop_duplicates("sentence", keep="first").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------------
# building the offline tasks
# ------------------------------------------------------------------------------------------------------------


def _stratified_splits(dataset: Dataset, stratify: str) -> DatasetDict:
    """80 / 10 / 10 train / validation / test, stratified by ``stratify`` (a ClassLabel), fixed seed, source order."""
    from datasets import DatasetDict

    held_out = SPLIT_FRACTIONS["validation"] + SPLIT_FRACTIONS["test"]
    first = dataset.train_test_split(test_size=held_out, stratify_by_column=stratify, seed=SPLIT_SEED)
    second = first["test"].train_test_split(test_size=SPLIT_FRACTIONS["test"] / held_out,
                                            stratify_by_column=stratify, seed=SPLIT_SEED)
    parts = {"train": first["train"], "validation": second["train"], "test": second["test"]}
    return DatasetDict({split: part.select(np.argsort(column(part, "row"), kind="stable"))
                        for split, part in parts.items()})


def _with_idx(data: DatasetDict) -> DatasetDict:
    """GLUE's ``idx``: the row number within each split."""
    from datasets import DatasetDict

    return DatasetDict({split: part.add_column("idx", np.arange(len(part), dtype=np.int32))
                        for split, part in data.items()})


def _rt_splits(cache_dir) -> DatasetDict:
    """The rt sentences split once (stratified by negative / neutral / positive), shared by both rt tasks."""
    from datasets import ClassLabel, Dataset, Features, Value

    table = _rt_table(cache_dir)
    bucket = np.where(table["score"].abs() < RT_NEUTRAL_BAND, 1, np.where(table["score"] > 0, 2, 0))
    features = Features({"sentence": Value("string"), "score": Value("float64"),
                         "bucket": ClassLabel(names=["negative", "neutral", "positive"]), "row": Value("int64")})
    dataset = Dataset.from_dict({"sentence": table["sentence"].tolist(), "score": table["score"].to_numpy(),
                                 "bucket": bucket, "row": np.arange(len(table))}, features=features)
    return _stratified_splits(dataset, "bucket")


def _rt_polarity_batch(batch: dict[str, list]) -> dict[str, list]:
    return {"label": (np.asarray(batch["score"]) > 0).astype(np.int64)}


def _rt_regression_batch(batch: dict[str, list]) -> dict[str, list]:
    return {"label": ((np.asarray(batch["score"], dtype=np.float64) + 4.0) * 5.0 / 8.0).astype(np.float32)}


def _build_rt(task: str, cache_dir) -> DatasetDict:
    from datasets import ClassLabel, Features, Value

    info = OFFLINE_TASKS[task]
    splits = _rt_splits(cache_dir)
    if task == "rt-polarity":
        splits = splits.filter(lambda b: np.abs(np.asarray(b["score"])) >= RT_NEUTRAL_BAND, batched=True)
        features = Features({"sentence": Value("string"), "label": ClassLabel(names=list(info.label_names))})
        function = _rt_polarity_batch
    else:
        features = Features({"sentence": Value("string"), "label": Value("float32")})
        function = _rt_regression_batch
    splits = splits.map(function, batched=True, remove_columns=["score", "bucket", "row"], features=features)
    return _with_idx(splits)


def _build_labelled(task: str, table: pd.DataFrame) -> DatasetDict:
    """A (label name, sentence) table -> stratified GLUE-format splits with a ClassLabel."""
    import pandas as pd
    from datasets import ClassLabel, Dataset, Features, Value

    info = OFFLINE_TASKS[task]
    names = list(info.label_names)
    unknown = sorted(set(table["label"]) - set(names))
    if unknown:
        raise ValueError(f"{task}: the source has labels {unknown} that the task does not know ({names}).")
    codes = pd.Categorical(table["label"], categories=names).codes.astype(np.int64)
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=names), "row": Value("int64")})
    dataset = Dataset.from_dict({"sentence": table["sentence"].tolist(), "label": codes,
                                 "row": np.arange(len(table))}, features=features)
    splits = _stratified_splits(dataset, "label").remove_columns("row")
    return _with_idx(splits)


def _build_offline(task: str, cache_dir) -> DatasetDict:
    if task in ("rt-polarity", "rt-regression"):
        return _build_rt(task, cache_dir)
    if task == "bbc-news":
        return _build_labelled(task, _bbc_table(cache_dir))
    if task == "sms-spam":
        return _build_labelled(task, _sms_table(cache_dir))
    raise ValueError(f"Unknown offline task {task!r}; known: {list(OFFLINE_TASKS)}.")


def _load_offline(task: str, cache_dir) -> DatasetDict:
    """Build ``task`` once, save it under ``<cache>/datasets/task-<name>``, reload it on later calls."""
    path = cache_root(cache_dir) / "datasets" / f"task-{task}"
    params = {"version": FORMAT_VERSION, "task": task, "seed": SPLIT_SEED, "neutral_band": RT_NEUTRAL_BAND}
    data = cached_dataset(path, params, lambda: _build_offline(task, cache_dir), label_distribution)
    logger.info("task %s: %s", task, ", ".join(f"{split} {len(part)}" for split, part in data.items()))
    return data


# ------------------------------------------------------------------------------------------------------------
# real GLUE
# ------------------------------------------------------------------------------------------------------------


def _load_glue(name: str, cache_dir) -> DatasetDict:
    """``nyu-mll/glue`` from the Hub (or the ``datasets`` cache); MNLI gets ``validation`` = matched.

    The standard Hugging Face cache is used, not ``cache_dir``, so a copy downloaded by any other tool counts.
    """
    from datasets import load_dataset

    task = name.split("/", 1)[1]
    try:
        data = load_dataset("nyu-mll/glue", task)
    except Exception as error:  # offline, DNS, 401, gated: all mean "the Hub is not usable here"
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
        raise DataUnavailableError(
            f"{name} needs the Hugging Face Hub dataset nyu-mll/glue, which could not be loaded{offline} and is not "
            f"cached ({type(error).__name__}); use an offline task instead: {', '.join(OFFLINE_TASKS)}."
        ) from error
    if "validation" not in data and "validation_matched" in data:
        data["validation"] = data["validation_matched"]
    return data


# ------------------------------------------------------------------------------------------------------------
# local files in GLUE format
# ------------------------------------------------------------------------------------------------------------


def _text_columns(columns: Sequence[str]) -> tuple[str, ...] | None:
    for candidate in TEXT_COLUMN_SETS:
        if set(candidate) <= set(columns):
            return candidate
    return None


def validate_glue_columns(data: DatasetDict, where: str = "dataset") -> tuple[str, ...]:
    """Check every split has GLUE's text column(s) and ``label`` (a test split may lack labels, as in GLUE).

    Returns the text columns. Raises ``ValueError`` naming the missing columns and the ones found.
    """
    found: tuple[str, ...] | None = None
    for split, part in data.items():
        columns = part.column_names
        text = _text_columns(columns)
        missing = [] if text else ["sentence (or sentence1 and sentence2)"]
        if "label" not in columns and split != "test":
            missing.append("label")
        if missing:
            raise ValueError(f"{where}: split {split!r} is missing the GLUE column(s) {', '.join(missing)}; "
                             f"it has {columns}.")
        found = found or text
    return found or ("sentence",)


def _local_files(path: Path) -> dict[str, str]:
    """``{split: file}`` of a folder holding train / validation (or dev) / test files, or one file (= train)."""
    if path.is_file():
        if path.suffix not in LOCAL_BUILDERS:
            raise ValueError(f"{path}: unsupported file type; use one of {sorted(LOCAL_BUILDERS)}.")
        return {"train": str(path)}
    files: dict[str, str] = {}
    for file in sorted(path.iterdir()):
        split = SPLIT_ALIASES.get(file.stem)
        if split and file.suffix in LOCAL_BUILDERS:
            if split in files:
                raise ValueError(f"{path}: two files for split {split!r}: {Path(files[split]).name}, {file.name}.")
            files[split] = str(file)
    if "train" not in files:
        raise ValueError(f"{path}: no train file (train.csv, train.tsv, train.jsonl, train.json or train.parquet).")
    return files


def _load_local(path: Path | None, data_files: Mapping[str, Any] | None, cache_dir) -> DatasetDict:
    from datasets import ClassLabel, Value, load_dataset

    if data_files is not None:
        files = {SPLIT_ALIASES.get(split, split): value for split, value in data_files.items()}
        where = "data_files"
    else:
        files, where = _local_files(path), str(path)
    first = files.get("train") or next(iter(files.values()))
    suffix = Path(first if isinstance(first, (str, os.PathLike)) else first[0]).suffix
    suffixes = {Path(f).suffix for value in files.values() for f in ([value] if isinstance(value, (str, os.PathLike))
                                                                       else value)}
    builders = {LOCAL_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1 or (".tsv" in suffixes and len(suffixes) > 1):
        raise ValueError(f"{where}: mixed or unsupported file types {sorted(suffixes)}; use one of "
                         f"{sorted(LOCAL_BUILDERS)} for every split.")
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
    for split, value in files.items():  # datasets' own error for an empty file does not name it
        for file in [value] if isinstance(value, (str, os.PathLike)) else value:
            if Path(file).suffix in (".csv", ".tsv", ".jsonl") and Path(file).is_file():
                with open(file, encoding="utf-8", errors="replace") as handle:
                    lines = sum(1 for line in handle if line.strip())
                if lines <= (0 if Path(file).suffix == ".jsonl" else 1):  # csv / tsv: the header only
                    raise ValueError(f"{file}: the {split} split is empty; fine-tuning needs examples in train and "
                                     "validation.")
    data = load_dataset(LOCAL_BUILDERS[suffix], data_files=files, cache_dir=str(cache_root(cache_dir) / "hf_datasets"),
                        **options)
    validate_glue_columns(data, where)
    labelled = [split for split in data if "label" in data[split].column_names]
    if any(data[split].features["label"].dtype in ("string", "large_string") for split in labelled):
        names = sorted({str(v) for split in labelled for v in data[split].unique("label")})
        for split in labelled:
            data[split] = data[split].cast_column("label", ClassLabel(names=names))
    for split in labelled:
        if data[split].features["label"].dtype in ("float64", "float16"):
            data[split] = data[split].cast_column("label", Value("float32"))
    for split in ("train", "validation"):  # before the hold-out below, so that rows are the files' rows
        if split in data:
            file = files[split] if isinstance(files[split], (str, os.PathLike)) else None
            check_labels(data[split], split, str(file or where), line_offset={".csv": 2, ".tsv": 2, ".jsonl": 1}.get(
                Path(file).suffix) if file else None)
    if "validation" not in data:
        stratify = "label" if isinstance(data["train"].features["label"], ClassLabel) else None
        logger.info("%s has no validation split; holding out a fixed 10%% of train", where)
        held = data["train"].train_test_split(test_size=0.1, seed=SPLIT_SEED, stratify_by_column=stratify)
        data["train"], data["validation"] = held["train"], held["test"]
    for split in data:
        if "idx" not in data[split].column_names:
            data[split] = data[split].add_column("idx", np.arange(len(data[split]), dtype=np.int32))
    return data


def check_labels(data: Dataset, split: str, where: str, num_labels: int | None = None,
                 line_offset: int | None = None) -> None:
    """One-line ``ValueError`` naming ``where`` (a file or task) and the row when ``split`` cannot be trained or
    evaluated on: no rows; a regression label (float) that is NaN or infinite; a class label below 0 or, given
    ``num_labels``, at or above it. ``line_offset`` turns a row number into the file's line (csv header: 2)."""
    from datasets import ClassLabel

    if len(data) == 0:
        raise ValueError(f"{where}: the {split} split is empty; fine-tuning needs examples in train and validation.")
    if "label" not in data.column_names:
        return
    labels = column(data, "label")
    feature = data.features["label"]
    regression = not isinstance(feature, ClassLabel) and str(feature.dtype).startswith("float")
    if regression:
        bad = np.flatnonzero(~np.isfinite(labels.astype(np.float64)))
        rule = "regression targets must be finite numbers"
    else:
        labels = labels.astype(np.int64)
        bad = np.flatnonzero(
            (labels < 0) | (labels >= (num_labels if num_labels is not None else np.iinfo(np.int64).max))
        )
        rule = f"class labels must be in [0, {num_labels})" if num_labels is not None else "class labels must be >= 0"
    if len(bad):
        row = int(bad[0])
        line = f" (line {row + line_offset})" if line_offset is not None else ""
        raise ValueError(f"{where}: {split} row {row}{line} has label {labels[row].item()!r}: {rule}"
                         + (f" ({len(bad)} such rows)." if len(bad) > 1 else "."))


def _local_info(name: str, data: DatasetDict) -> TaskInfo:
    """Infer a local task's scoring from its labels: ClassLabel/int -> classification, float -> regression."""
    from datasets import ClassLabel

    feature = data["train"].features["label"]
    text = validate_glue_columns(data, name)
    if isinstance(feature, ClassLabel):
        names: tuple[str, ...] | None = tuple(feature.names)
        num_labels = feature.num_classes
    elif feature.dtype.startswith("float"):
        return TaskInfo(name, 1, True, None, "pearson_spearman", text, source="local")
    else:
        labels = np.concatenate([column(part, "label") for part in data.values()
                                 if "label" in part.column_names])
        names, num_labels = None, int(labels.max()) + 1
    metric = "accuracy_f1" if num_labels == 2 else "accuracy"
    return TaskInfo(name, num_labels, False, names, metric, text, source="local")


# ------------------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------------------


def _unknown(name: str) -> ValueError:
    return ValueError(f"Unknown task {name!r}; offline tasks: {', '.join(OFFLINE_TASKS)}; GLUE (needs the Hub): "
                      f"{', '.join(GLUE_TASKS)}; or a path to GLUE-format files "
                      f"({'/'.join(s.lstrip('.') for s in LOCAL_BUILDERS)}).")


def _resolve(name: str | os.PathLike | None, data_files: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(kind, key)``: kind is offline / glue / local; raises the "unknown task" ValueError otherwise."""
    if data_files is not None:
        return "local", str(name or "data_files")
    if name is None:
        raise ValueError("load_task needs a task name, a path, or data_files.")
    key = os.fspath(name)
    if key in OFFLINE_TASKS:
        return "offline", key
    if key in GLUE_TASKS:
        return "glue", key
    if Path(key).exists():
        return "local", key
    raise _unknown(key)


def task_info(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
              data_files: Mapping[str, Any] | None = None) -> TaskInfo:
    """How to score task ``name``; for local files the ``label`` column decides (float: regression)."""
    kind, key = _resolve(name, data_files)
    if kind != "local":
        return TASKS[key]
    return _local_info(key, _load_local(None if data_files else Path(key), data_files, cache_dir))


def load_task(name: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, *,
              data_files: Mapping[str, Any] | None = None) -> DatasetDict:
    """The task's ``DatasetDict``: an offline task, ``glue/<task>``, or local GLUE-format files.

    Args:
        name: a key of :data:`TASKS`, or a folder (``train``/``validation`` or ``dev``/``test`` files) or one
            file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``; a fixed 10% of it becomes
            ``validation``).
        cache_dir: the hf_genssl cache (see :func:`hf_genssl.data.sources.cache_root`).
        data_files: explicit ``{split: file or files}``, as ``datasets.load_dataset`` takes it.

    Raises:
        ValueError: unknown task (the message lists the known ones), or local data without GLUE's columns.
        DataUnavailableError: the data cannot be fetched (no registry, or no Hub for ``glue/*``).
    """
    kind, key = _resolve(name, data_files)
    if kind == "offline":
        return _load_offline(key, cache_dir)
    if kind == "glue":
        return _load_glue(key, cache_dir)
    return _load_local(None if data_files else Path(key), data_files, cache_dir)


def label_distribution(data: Dataset | DatasetDict | Mapping[str, Dataset]) -> dict[str, Any]:
    """Label counts: ``{label name: count}`` for a split, ``{split: {...}}`` for a ``DatasetDict``.

    Class labels are counted with ``np.bincount`` and keyed by their names (``ClassLabel``) or values;
    GLUE's unlabelled test rows (-1) are counted as ``"unlabelled"``. Regression labels give
    ``count``/``mean``/``std``/``min``/``max`` instead.
    """
    from datasets import ClassLabel

    if isinstance(data, Mapping):
        return {split: label_distribution(part) for split, part in data.items()}
    if "label" not in data.column_names:
        return {"unlabelled": len(data)}
    feature = data.features["label"]
    labels = column(data, "label")
    if getattr(feature, "dtype", "").startswith("float"):
        if labels.size == 0:
            return {"count": 0}
        return {"count": int(labels.size), "mean": float(labels.mean()), "std": float(labels.std()),
                "min": float(labels.min()), "max": float(labels.max())}
    labels = labels.astype(np.int64)
    unlabelled = int((labels < 0).sum())
    labels = labels[labels >= 0]
    if isinstance(feature, ClassLabel):
        counts = np.bincount(labels, minlength=feature.num_classes)
        result: dict[str, Any] = {name: int(n) for name, n in zip(feature.names, counts, strict=True)}
    else:
        values, counts = np.unique(labels, return_counts=True)
        result = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
    if unlabelled:
        result["unlabelled"] = unlabelled
    return result

