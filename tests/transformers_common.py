"""transformers' own common model tests, taken from the source distribution of the INSTALLED transformers version.

Every model inside transformers passes ``ModelTesterMixin`` (``tests/test_modeling_common.py``) and ``ConfigTester``
(``tests/test_configuration_common.py``); ``tests/test_transformers_common.py`` runs them against GenSSL. The two
files ship in transformers' sdist on PyPI (not in the wheel), so :func:`import_common_tests` fetches the sdist once
with pip (``pip download --no-deps --no-binary :all: transformers==<installed>``) into the project's download cache
(``$GENSSL_CACHE`` or ``~/.cache/hf_genssl``, ``downloads/``), extracts just those two files into
``sources/transformers-tests-<version>/transformers_common_tests/`` and imports them as a package.

Three modules they import are not in the sdist (they live in transformers' repository only); small stand-ins are
written next to them:

* ``exporters/test_export.py``: ``ExportTesterMixin`` (``torch.export`` tests), an empty mixin;
* ``generation/test_utils.py``: ``GenerationTesterMixin``, an empty mixin (generation is tested by the project's
  own decoding tests);
* ``utils/test_configuration_utils.py``: ``config_common_kwargs``, values for attributes every ``PreTrainedConfig``
  has (``ConfigTester.check_config_arguments_init`` checks that a config keeps them).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import transformers
from filelock import FileLock

__all__ = ["PACKAGE", "common_tests_folder", "import_common_tests"]

PACKAGE = "transformers_common_tests"
COMMON_FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
# Digests of sdists fetched and checked by hand; another installed version is fetched unverified (and said so).
KNOWN_SHA256 = {"5.24.0": "906cb8c3cb2123575e263962586a4d21a979ce97feeb95fe6aaf66fe6ae88bf3"}

STAND_INS = {
    "__init__.py": '"""transformers\' common tests (extracted from its sdist by hf_genssl\'s tests)."""\n',
    "exporters/__init__.py": "",
    "exporters/test_export.py": (
        '"""Stand-in: the torch.export tests are not in transformers\' sdist."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "generation/__init__.py": "",
    "generation/test_utils.py": (
        '"""Stand-in: transformers\' generation tests are not in its sdist (hf_genssl tests generate itself)."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": (
        '"""Stand-in: values of attributes every PreTrainedConfig has, each different from its default."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}


def _cache_root() -> Path:
    return Path(os.environ.get("GENSSL_CACHE") or "~/.cache/hf_genssl").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_sdist(version: str, downloads: Path) -> Path:
    archive = downloads / f"transformers-{version}.tar.gz"
    if not archive.exists():
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       "--quiet", "-d", tmp, f"transformers=={version}"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            fetched = Path(tmp) / archive.name
            if result.returncode != 0 or not fetched.exists():
                raise RuntimeError(
                    f"could not download transformers {version}'s sdist ({' '.join(command)}): "
                    f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}"
                )
            os.replace(fetched, archive)
    expected = KNOWN_SHA256.get(version)
    if expected is not None and _sha256(archive) != expected:
        archive.unlink()
        raise RuntimeError(f"transformers-{version}.tar.gz does not match its recorded sha256; deleted, rerun.")
    return archive


def common_tests_folder(version: str | None = None) -> Path:
    """The folder to put on ``sys.path`` so that ``import transformers_common_tests`` finds the common tests."""
    version = version or transformers.__version__
    root = _cache_root()
    folder = root / "sources" / f"transformers-tests-{version}"
    if (folder / PACKAGE / "test_modeling_common.py").exists():
        return folder
    (root / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "locks" / f"transformers-tests-{version}.lock")):
        if (folder / PACKAGE / "test_modeling_common.py").exists():
            return folder
        archive = _download_sdist(version, root / "downloads")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        package = staging / PACKAGE
        with tarfile.open(archive) as tar:
            for name in COMMON_FILES:
                member = tar.getmember(f"transformers-{version}/{name}")
                (package / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
                (package / Path(name).name).write_bytes(tar.extractfile(member).read())
        for name, text in STAND_INS.items():
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            (package / name).write_text(text)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    return folder


def import_common_tests() -> tuple[ModuleType, ModuleType]:
    """``(test_modeling_common, test_configuration_common)`` of the installed transformers version."""
    folder = str(common_tests_folder())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return (importlib.import_module(f"{PACKAGE}.test_modeling_common"),
            importlib.import_module(f"{PACKAGE}.test_configuration_common"))
