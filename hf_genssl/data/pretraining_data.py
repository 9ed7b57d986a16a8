"""Pretraining data the ``datasets`` way: any text source -> tokenizer -> blocks of token ids, in memory-mapped
Arrow or streamed.

Sources follow transformers' ``run_clm`` / ``run_mlm`` examples (config fields of
:class:`hf_genssl.pretraining.PretrainConfig`, so also ``--override`` flags), first match wins:

* ``texts``: an in-memory list (tests);
* ``dataset_name`` (+ ``dataset_config_name``, ``dataset_revision``): a Hub dataset (every split of it:
  ``train`` for training, ``validation`` when it has one), or a folder saved with ``save_to_disk``;
* ``train_files`` (+ ``validation_files``): local txt / json / jsonl / csv / parquet files, globs allowed;
* otherwise ``corpus``: the built-in offline corpora (:func:`hf_genssl.data.load_pretraining_corpus`), read
  through the same ``datasets`` path.

Without a validation split, ``validation_split_percentage`` percent of the documents are held out by a hash of
their text (not by position), so the split is the same in memory and streamed, for any file order or number of
processes.

Preprocessing is one ``Dataset.map(batched=True, num_proc=...)`` that tokenizes a batch of 1000 documents
(EOS after each) and cuts their concatenation into blocks of ``seq_len - 1`` tokens (the collator adds the
BOS). Nothing is dropped: the last block of each batch may be shorter; the collator pads it and padding is
never a target. The result is cached in ``<cache>/preprocessed/`` under a fingerprint of (input data,
tokenizer, block size, workers), memory-mapped, built by the main process while the others wait
(``accelerator.main_process_first()``), then opened by all.

With ``streaming: true`` the same function runs lazily on an ``IterableDataset`` split across processes by
``datasets.distributed.split_dataset_by_node``: whole shards (files) per process when their number divides by
the number of processes, else every process reads the stream and keeps every N-th block. :class:`StreamingBatches`
saves each process's ``IterableDataset.state_dict()`` with the checkpoint (through
``accelerator.register_for_checkpointing``), so a resumed run continues exactly where it stopped.

Without ``tokenizer_name_or_path`` a byte-level BPE is trained once per (data, settings) and cached under
``<cache>/tokenizers/``; an existing tokenizer gets the special tokens the objectives need (BOS, EOS, pad,
mask) when it lacks them.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FILE_FORMATS",
    "PretrainingData",
    "StreamingBatches",
    "MapStyleBatches",
    "add_missing_special_tokens",
    "group_into_blocks",
    "load_text_pretraining_data",
    "load_text_sources",
    "split_stream_by_node",
    "train_batches",
]

logger = logging.getLogger(__name__)

# file extension -> the `datasets` packaged builder that reads it
FILE_FORMATS = {"txt": "text", "text": "text", "json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
PREPROCESSING_VERSION = 1  # bump when tokenizing / grouping changes, so cached blocks are rebuilt
DOCS_PER_BATCH = 1000  # documents tokenized and grouped together (run_clm's default map batch)
STREAMING_TOKENIZER_CHARS = 100_000_000  # a new BPE on a stream is trained on its first 100M characters
_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "mask_token": "<mask>"}


@dataclass
class PretrainingData:
    """What the loop needs: training examples, a few validation examples, the processor saved with the model.

    ``train`` is a ``datasets.Dataset`` (memory-mapped, map-style), an ``IterableDataset`` (streaming) or a list;
    its examples are dicts the collator reads (``{"input_ids": [...]}`` or ``{"pixel_values": tensor}``).
    """

    train: Any
    validation: list
    processor: Any
    name: str
    streaming: bool = False


# ------------------------------------------------------------------------------------------------------------
# sources -> datasets of documents
# ------------------------------------------------------------------------------------------------------------


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _expand_files(patterns, what: str) -> list[str]:
    """Glob patterns -> sorted existing files; one-line errors for no match, unknown format, mixed or empty files."""
    files: list[str] = []
    for pattern in _as_list(patterns):
        matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matched:
            raise FileNotFoundError(f"{what}: no file matches {pattern!r}.")
        files.extend(m for m in matched if os.path.isfile(m))
    for path in files:
        if _file_format(path) is None:
            raise ValueError(f"{what}: {path} has an unknown format; use one of .{', .'.join(sorted(FILE_FORMATS))}.")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{what}: {path} is empty.")
    return files


def _file_format(path: str) -> str | None:
    name = path[:-3] if path.endswith((".gz", ".xz")) else path[:-4] if path.endswith(".bz2") else path
    return FILE_FORMATS.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None


def _builder(files: list[str]) -> str:
    formats = {_file_format(path) for path in files}
    if len(formats) != 1:
        raise ValueError(f"train_files / validation_files mix formats {sorted(formats)}; use one format.")
    return formats.pop()


def _data_identity(cfg) -> dict:
    """What the documents are, for the tokenizer cache key: content hash, corpus names, or files' size and mtime."""
    if cfg.texts is not None:
        return {"texts": hashlib.sha256(json.dumps(list(cfg.texts)).encode()).hexdigest()}
    if cfg.dataset_name:
        return {"dataset": cfg.dataset_name, "config": cfg.dataset_config_name, "revision": cfg.dataset_revision}
    if cfg.train_files:
        return {"files": [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns)
                          for f in _expand_files(cfg.train_files, "train_files")], "sample_by": cfg.sample_by}
    from .corpus import FORMAT_VERSION

    return {"corpus": sorted(cfg.corpus), "max_docs": cfg.max_docs, "version": FORMAT_VERSION}


class _InValidation:
    """A document is held out when a hash of its text falls below ``percentage`` (batched ``filter`` predicate)."""

    def __init__(self, percentage: float, keep_validation: bool):
        self.threshold, self.keep_validation = round(percentage * 100), keep_validation

    def __call__(self, texts: list) -> list[bool]:
        return [((zlib.crc32((t or "").encode()) % 10_000) < self.threshold) == self.keep_validation for t in texts]


def _hold_out(train, cfg):
    """(train, validation) from one split by ``validation_split_percentage`` of the documents (hash of the text)."""
    if not 0 < cfg.validation_split_percentage < 100:
        raise ValueError(f"validation_split_percentage must be in (0, 100), got {cfg.validation_split_percentage}.")
    kwargs = {"batched": True, "input_columns": [cfg.text_column]}
    return (train.filter(_InValidation(cfg.validation_split_percentage, False), **kwargs),
            train.filter(_InValidation(cfg.validation_split_percentage, True), **kwargs))


def _file_without_column(files: list[str], cfg) -> ValueError | None:
    """The one-line error for the first file whose first record lacks ``text_column`` or that holds no record."""
    from datasets import load_dataset

    for path in files:
        extra = {"sample_by": cfg.sample_by} if _builder([path]) == "text" else {}
        first = next(iter(load_dataset(_builder([path]), data_files=[path], split="train", streaming=True, **extra)),
                     None)
        if first is None:
            return ValueError(f"{path} holds no documents.")
        if cfg.text_column not in first:
            return ValueError(f"{path} has no column {cfg.text_column!r} (columns: {sorted(first)}); set text_column.")
    return None


def _check_column(dataset, cfg, files: list[str], what: str) -> None:
    """A one-line error naming the file that lacks ``text_column`` (or the source, when not from files)."""
    columns = dataset.column_names
    if columns is None:  # a stream whose features are not known before reading: peek at one example
        columns = list(next(iter(dataset), {}) or {})
    if cfg.text_column in columns:
        return
    raise _file_without_column(files, cfg) or ValueError(
        f"{what} has no column {cfg.text_column!r} (columns: {sorted(columns)}); set text_column.")


def _check_not_empty(dataset, cfg, files: list[str], what: str, streaming: bool) -> None:
    empty = (next(iter(dataset), None) is None) if streaming else len(dataset) == 0
    if empty:
        raise ValueError(f"{', '.join(files) or what} holds no documents.")


def _hub_error(cfg, error: Exception) -> ValueError:
    return ValueError(
        f"Cannot load dataset {cfg.dataset_name!r} from the Hugging Face Hub ({type(error).__name__}; offline?): use "
        "local files (train_files=..., validation_files=...), the built-in corpora (corpus=[sotu, news, "
        "shakespeare]) or a folder saved with save_to_disk as dataset_name.")


def load_text_sources(cfg, streaming: bool = False) -> tuple[Any, Any, str]:
    """``(train, validation, name)``: datasets of documents with a ``cfg.text_column`` column, from the source the
    config names (see the module docstring). ``streaming`` gives ``IterableDataset``\\ s."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    cache = os.path.join(cfg.cache_dir, "hf_datasets") if cfg.cache_dir else None
    files: list[str] = []
    if cfg.dataset_revision and not cfg.dataset_name:
        raise ValueError("dataset_revision needs dataset_name (a Hub dataset).")
    if cfg.texts is not None:
        if cfg.text_column != "text":
            raise ValueError("texts= gives a 'text' column; leave text_column at 'text'.")
        cut = max(1, len(cfg.texts) // 20)
        train, validation = Dataset.from_dict({"text": list(cfg.texts[cut:])}), Dataset.from_dict(
            {"text": list(cfg.texts[:cut])})
        name = "in-memory texts"
    elif cfg.dataset_name:
        if cfg.train_files:
            raise ValueError("Give dataset_name or train_files, not both.")
        name = cfg.dataset_name + (f"/{cfg.dataset_config_name}" if cfg.dataset_config_name else "") + (
            f"@{cfg.dataset_revision}" if cfg.dataset_revision else "")
        if os.path.isdir(cfg.dataset_name) and any(
                os.path.exists(os.path.join(cfg.dataset_name, f)) for f in ("dataset_dict.json", "state.json")):
            if cfg.dataset_revision:
                raise ValueError(f"dataset_revision is for Hub datasets; {cfg.dataset_name} is a folder saved with "
                                 "save_to_disk.")
            splits = load_from_disk(cfg.dataset_name)
            if not isinstance(splits, DatasetDict):
                splits = DatasetDict({"train": splits})
        else:
            try:
                splits = load_dataset(cfg.dataset_name, cfg.dataset_config_name, revision=cfg.dataset_revision,
                                      cache_dir=cache, streaming=streaming)
            except Exception as error:  # offline, unknown name, no network: one line naming the alternatives
                raise _hub_error(cfg, error) from error
        if "train" not in splits:
            raise ValueError(f"{name} has no 'train' split (splits: {list(splits)}).")
        train = splits["train"]
        validation = splits.get("validation")
    elif cfg.train_files:
        files = _expand_files(cfg.train_files, "train_files")
        validation_files = _expand_files(cfg.validation_files, "validation_files") if cfg.validation_files else []
        builder = _builder(files + validation_files)
        extra = {"sample_by": cfg.sample_by} if builder == "text" else {}
        data_files = {"train": files, **({"validation": validation_files} if validation_files else {})}
        try:
            splits = load_dataset(builder, data_files=data_files, cache_dir=cache, streaming=streaming, **extra)
        except Exception as error:  # e.g. files with different columns: name the file at fault when we can
            culprit = _file_without_column(files + validation_files, cfg)
            if culprit is not None:
                raise culprit from error
            raise ValueError(
                f"Could not read {', '.join(files + validation_files)}: {error}".splitlines()[0]
            ) from error
        train, validation = splits["train"], splits.get("validation")
        name = ", ".join(_as_list(cfg.train_files))
        files += validation_files
    else:
        if cfg.validation_files:
            raise ValueError("validation_files needs train_files.")
        from .corpus import load_pretraining_corpus

        corpus = load_pretraining_corpus(sources=tuple(cfg.corpus), cache_dir=cfg.cache_dir)
        train, validation = corpus["train"], corpus["validation"]
        if cfg.max_docs:
            train = train.select(range(min(cfg.max_docs, len(train))))
        name = "+".join(cfg.corpus)
    if streaming and isinstance(train, Dataset):  # in-memory texts, the built-in corpora: streamed from Arrow
        train = train.to_iterable_dataset(num_shards=_shards(len(train)))
        validation = validation.to_iterable_dataset(num_shards=1) if validation is not None else None
    what = name
    _check_column(train, cfg, files, what)
    if validation is None:
        train, validation = _hold_out(train, cfg)
    else:
        _check_column(validation, cfg, files, what)
    _check_not_empty(train, cfg, files, what, streaming)
    return train, validation, name


def _shards(rows: int) -> int:
    """Shards of a stream made from an on-disk dataset: enough to split evenly over 1, 2, 4, 8 or 16 processes."""
    return max(1, min(rows, 16 * 3 * 5))


# ------------------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------------------


def add_missing_special_tokens(tokenizer) -> dict[str, str]:
    """Give ``tokenizer`` the special tokens the objectives need, in place; returns what was added.

    BOS: the always-visible first token of every sequence; EOS: between documents; pad; mask (masked objectives,
    added for every objective so a checkpoint can be continued under another one). A GPT-2-style tokenizer whose
    only special token is ``<|endoftext|>`` keeps it as BOS and EOS and gains ``<pad>`` and ``<mask>``.
    """
    added: dict[str, str] = {}
    if tokenizer.eos_token is None and tokenizer.bos_token is not None:
        added["eos_token"] = tokenizer.bos_token
    if tokenizer.bos_token is None and tokenizer.eos_token is not None:
        added["bos_token"] = tokenizer.eos_token
    for key, token in _SPECIAL_TOKENS.items():
        if getattr(tokenizer, key) is None and key not in added:
            added[key] = token
    if added:
        tokenizer.add_special_tokens(added)
    return added


def _tokenizer_key(cfg) -> str:
    settings = {"data": _data_identity(cfg), "text_column": cfg.text_column, "vocab_size": cfg.vocab_size,
                "model_max_length": cfg.seq_len,
                "streaming_chars": STREAMING_TOKENIZER_CHARS if cfg.streaming else None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _texts_for_tokenizer(train, cfg) -> Iterator[str]:
    budget = STREAMING_TOKENIZER_CHARS if cfg.streaming else None
    for batch in train.iter(batch_size=DOCS_PER_BATCH):
        for text in batch[cfg.text_column]:
            if budget is not None:
                if budget <= 0:
                    return
                budget -= len(text or "")
            yield text or ""


def load_tokenizer(cfg, train, run_dir: Path, is_main_process: bool, resuming: bool = False):
    """The run's tokenizer, saved as ``run_dir/tokenizer`` (a resumed run reuses exactly that one).

    * ``tokenizer_name_or_path`` (or ``model_name_or_path``): that tokenizer plus the missing special tokens;
    * otherwise a BPE trained on the training documents, cached under ``<cache>/tokenizers/bpe-<key>`` where
      the key hashes the data's identity and the settings, so later runs on the same data reuse it.

    Call it on the main process first (others then find the saved copies).
    """
    from filelock import FileLock
    from transformers import AutoTokenizer

    from ..tokenization import train_tokenizer
    from .sources import cache_root

    saved = run_dir / "tokenizer"
    if resuming and (saved / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(saved)
    source = cfg.tokenizer_name_or_path or cfg.model_name_or_path
    if source:
        tokenizer = AutoTokenizer.from_pretrained(source)
        before = len(tokenizer)
        added = add_missing_special_tokens(tokenizer)
        if added and is_main_process:
            logger.warning("tokenizer %s lacked special tokens the objectives need: added %s; vocabulary %d -> %d "
                           "(the model's embeddings are sized to match)", source, added, before, len(tokenizer))
    else:
        cached = cache_root(cfg.cache_dir) / "tokenizers" / f"bpe-{_tokenizer_key(cfg)}"
        cached.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cached) + ".lock"):
            if not (cached / "tokenizer.json").exists():
                logger.info("training a %d-token BPE on the training documents (cached as %s)", cfg.vocab_size, cached)
                tokenizer = train_tokenizer(_texts_for_tokenizer(train, cfg), vocab_size=cfg.vocab_size,
                                            model_max_length=cfg.seq_len)
                _save_atomically(tokenizer, cached)
            else:
                logger.info("reusing the BPE tokenizer %s", cached)
        tokenizer = AutoTokenizer.from_pretrained(cached)
    if is_main_process:
        _save_atomically(tokenizer, saved)
    return tokenizer


def _save_atomically(tokenizer, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does (its serialized pipeline and EOS), stable across processes and runs."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# documents -> blocks
# ------------------------------------------------------------------------------------------------------------


class TokenizeAndGroup:
    """Batched ``map`` function: tokenize documents (EOS after each), concatenate, cut into ``block_size`` blocks.

    The last block of a batch keeps what is left (possibly shorter), so no token is dropped.
    """

    def __init__(self, tokenizer, text_column: str, block_size: int):
        self.tokenizer, self.text_column, self.block_size = tokenizer, text_column, block_size

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [t for t in batch[self.text_column] if t and not t.isspace()]
        # verbose=False: documents longer than model_max_length are expected (they are cut into blocks)
        encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        return {"input_ids": group_into_blocks(encoded, self.tokenizer.eos_token_id, self.block_size)}


def group_into_blocks(documents: list[list[int]], eos_token_id: int, block_size: int) -> list[list[int]]:
    """Concatenate token lists (EOS after each) and cut into blocks of ``block_size``; the last may be shorter."""
    ids = list(itertools.chain.from_iterable(itertools.chain(doc, (eos_token_id,)) for doc in documents))
    return [ids[i : i + block_size] for i in range(0, len(ids), block_size)]


def _features():
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value("int32"))})


def blocks_of(documents, tokenizer, cfg, what: str):
    """Tokenized blocks of a ``Dataset`` (cached, memory-mapped) or an ``IterableDataset`` (lazy)."""
    from datasets import IterableDataset

    function = TokenizeAndGroup(tokenizer, cfg.text_column, cfg.seq_len - 1)  # the collator adds the BOS
    documents = documents.select_columns([cfg.text_column])  # a stream may not know its other columns yet
    columns = [cfg.text_column]
    if isinstance(documents, IterableDataset):
        return documents.map(function, batched=True, batch_size=DOCS_PER_BATCH, remove_columns=columns,
                             features=_features())
    workers = cfg.preprocessing_num_workers
    fingerprint = hashlib.sha256(json.dumps([documents._fingerprint, _tokenizer_fingerprint(tokenizer),
                                             cfg.text_column, cfg.seq_len - 1, workers, PREPROCESSING_VERSION])
                                 .encode()).hexdigest()[:16]
    cache_file = None
    if documents.cache_files:  # on disk: cache the blocks in our own folder, never next to (verified) source data
        from .sources import cache_root

        folder = cache_root(cfg.cache_dir) / "preprocessed"
        folder.mkdir(parents=True, exist_ok=True)
        cache_file = str(folder / f"blocks-{fingerprint}.arrow")
    return documents.map(function, batched=True, batch_size=DOCS_PER_BATCH, remove_columns=columns,
                         num_proc=workers if workers and workers > 1 else None, features=_features(),
                         new_fingerprint=fingerprint, cache_file_name=cache_file, desc=f"tokenizing {what} into blocks")


def split_stream_by_node(dataset, rank: int, world_size: int):
    """This process's share of a stream (``datasets.distributed.split_dataset_by_node``): whole shards when their
    number divides by ``world_size``, else every ``world_size``-th example of the finished pipeline (datasets
    applies that split after the ``map``, so then each process reads and tokenizes the whole stream)."""
    from datasets.distributed import split_dataset_by_node

    return dataset if world_size == 1 else split_dataset_by_node(dataset, rank=rank, world_size=world_size)


def _first_examples(blocks, limit: int) -> list[dict]:
    return [{"input_ids": list(example["input_ids"])} for example in itertools.islice(iter(blocks), limit)]


def load_text_pretraining_data(cfg, accelerator, run_dir: Path, validation_examples: int,
                                resuming: bool = False) -> PretrainingData:
    """Sources -> tokenizer -> blocks, run on the main process first (the others then load its caches).

    ``validation_examples``: how many validation blocks to keep (the loop evaluates on the first ones);
    ``resuming``: reuse the tokenizer the run saved rather than rebuilding it."""
    with accelerator.main_process_first():
        train, validation, name = load_text_sources(cfg, streaming=cfg.streaming)
        tokenizer = load_tokenizer(cfg, train, run_dir, accelerator.is_main_process, resuming)
        if cfg.streaming:
            train = split_stream_by_node(train, accelerator.process_index, accelerator.num_processes)
        train_blocks = blocks_of(train, tokenizer, cfg, f"{name} (train)")
        validation_blocks = _first_examples(blocks_of(validation, tokenizer, cfg, f"{name} (validation)"),
                                            validation_examples)
    if not cfg.streaming:
        logger.info("%s: %d training blocks of up to %d tokens", name, len(train_blocks), cfg.seq_len - 1)
    return PretrainingData(train_blocks, validation_blocks, tokenizer, name, streaming=cfg.streaming)


# ------------------------------------------------------------------------------------------------------------
# blocks -> batches for the loop
# ------------------------------------------------------------------------------------------------------------


class MapStyleBatches:
    """One epoch of the Accelerate-prepared loader per iteration, resuming mid-epoch with ``skip_first_batches``."""

    def __init__(self, loader, accelerator, micro_done: int):
        self.loader, self.accelerator = loader, accelerator
        if len(loader) == 0:
            raise ValueError("No full training batch: fewer training examples than batch_size.")
        self.epoch, self.skip = divmod(micro_done, len(loader))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.set_epoch(self.epoch)
        batches = self.accelerator.skip_first_batches(self.loader, self.skip) if self.skip else self.loader
        self.skip = 0
        yield from batches
        self.epoch += 1


class StreamingBatches:
    """One pass over this process's share of a stream per iteration, batches moved to the device.

    Not prepared by Accelerate (its iterable-dataset wrappers would read ahead or re-split the data, which is
    already split by node). ``state_dict()`` gathers every process's position (epoch and the
    ``IterableDataset.state_dict()``), so a checkpoint written by the main process holds them all; register it
    with ``accelerator.register_for_checkpointing`` and ``load_state`` restores each process's own.
    """

    def __init__(self, blocks, batch_size: int, collate_fn, accelerator):
        self.blocks, self.accelerator, self.epoch = blocks, accelerator, 0
        # num_workers=0: the dataset's state then counts exactly the examples of the batches handed out
        self.loader = torch.utils.data.DataLoader(blocks, batch_size=batch_size, collate_fn=collate_fn,
                                                  drop_last=True, num_workers=0)

    def __iter__(self):
        self.blocks.set_epoch(self.epoch)
        empty = True
        for batch in self.loader:
            empty = False
            yield {k: v.to(self.accelerator.device) for k, v in batch.items()}
        if empty:
            raise ValueError(f"Process {self.accelerator.process_index} has no full batch of training blocks in "
                             "its share of the stream; use more data or a smaller batch_size.")
        self.epoch += 1

    def state_dict(self) -> dict:
        from accelerate.utils import gather_object

        own = {"epoch": self.epoch, "dataset": self.blocks.state_dict()}
        return {"per_process": gather_object([own]) if self.accelerator.num_processes > 1 else [own]}

    def load_state_dict(self, state: dict) -> None:
        per_process = state["per_process"]
        if len(per_process) != self.accelerator.num_processes:
            raise ValueError(f"This streaming checkpoint was written by {len(per_process)} processes; resume it with "
                             f"the same number (now {self.accelerator.num_processes}).")
        own = per_process[self.accelerator.process_index]
        self.epoch = own["epoch"]
        self.blocks.load_state_dict(own["dataset"])


def train_batches(data: PretrainingData, batch_size: int, collate_fn, accelerator, micro_done: int, shuffle=True,
                  num_workers: int = 0):
    """The loop's source of micro-batches: iterate it once per epoch. ``num_workers`` processes collate the batches
    of map-style data (streams are read by the main process: see :class:`StreamingBatches`)."""
    if data.streaming:
        batches = StreamingBatches(data.train, batch_size, collate_fn, accelerator)
        accelerator.register_for_checkpointing(batches)  # restored by load_state before the first iteration
        return batches
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn,
                                         drop_last=True, num_workers=num_workers)
    return MapStyleBatches(accelerator.prepare(loader), accelerator, micro_done)
