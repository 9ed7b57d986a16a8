"""``genssl data prepare``: fetch every offline source and build the corpus, the tasks and the image sets."""

from __future__ import annotations

import argparse

from .corpus import CORPUS_SOURCES, corpus_report, load_pretraining_corpus
from .images import IMAGE_DATASETS, load_image_dataset
from .sources import SOURCES, fetch_source
from .tasks import OFFLINE_TASKS, label_distribution, load_task

__all__ = ["add_data_commands"]


def _prepare(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    names = args.only or sorted(SOURCES)
    unknown = sorted(set(names) - set(SOURCES) - set(OFFLINE_TASKS) - set(IMAGE_DATASETS) - {"corpus"})
    if unknown:
        raise ValueError(f"Unknown names {unknown}; choose from sources {sorted(SOURCES)}, tasks "
                         f"{sorted(OFFLINE_TASKS)}, image sets {sorted(IMAGE_DATASETS)} or 'corpus'.")
    for name in tqdm([n for n in names if n in SOURCES], desc="sources", unit="source"):
        print(f"source {name:14s} -> {fetch_source(name, args.cache_dir)}")
    if args.only is None or "corpus" in names or set(names) & set(CORPUS_SOURCES):
        report = corpus_report(load_pretraining_corpus(cache_dir=args.cache_dir))
        print("corpus (" + "+".join(CORPUS_SOURCES) + "): " +
              ", ".join(f"{split} {r['documents']} docs / {r['characters'] / 1e6:.1f}M chars" for split, r in report.items()))
    for task in OFFLINE_TASKS:
        if args.only is None or task in names:
            data = load_task(task, args.cache_dir)
            sizes = ", ".join(f"{split} {len(d)}" for split, d in data.items())
            labels = "" if OFFLINE_TASKS[task].is_regression else f"; labels {label_distribution(data)}"
            print(f"task {task:14s}: {sizes}{labels}")
    for name in IMAGE_DATASETS:
        if args.only is None or name in names:
            data = load_image_dataset(name, args.cache_dir)
            print(f"images {name:12s}: " + ", ".join(f"{split} {len(d)}" for split, d in data.items()))
    return 0


def add_data_commands(subparsers) -> None:
    """Add ``data prepare`` to the ``genssl`` command line."""
    data = subparsers.add_parser("data", help="offline datasets (download once, cached)")
    sub = data.add_subparsers(dest="data_command", required=True)
    prepare = sub.add_parser("prepare", help="fetch every source and build the corpus, tasks and image sets")
    prepare.add_argument("--cache-dir", help="default: $GENSSL_CACHE or ~/.cache/hf_genssl")
    prepare.add_argument("--only", nargs="+", help="sources, tasks, image sets or 'corpus' to prepare")
    prepare.set_defaults(func=_prepare)
