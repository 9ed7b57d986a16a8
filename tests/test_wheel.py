"""A wheel install can pretrain (issue 14, bug 2): the configs and experiment definitions are package data.

The test builds the real wheel from the working tree (``pip wheel``, no build isolation, no index: no network),
installs it with ``--no-deps`` into a folder of its own (the dependencies come from the running environment), and
runs the installed ``genssl`` script from a directory outside the repository, with nothing of the source tree on
the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The built wheel installed into a folder; returns that folder (its ``bin/genssl`` is the console script)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so the build leaves no build/ or *.egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "hf_genssl", source / "hf_genssl", ignore=shutil.ignore_patterns("__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(root / "dist"), str(source))
    (wheel,) = (root / "dist").glob("hf_genssl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"hf_genssl/configs/tiny.yaml", "hf_genssl/configs/experiments/reproduce.yaml"} <= names
    _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(root / "site"),
         str(wheel))
    return root / "site"


def _env(site: Path, tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
            "TOKENIZERS_PARALLELISM": "false"}


def test_the_installed_wheel_pretrains_from_a_shipped_config(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not the repository: training/ and the source hf_genssl are out of reach
    elsewhere.mkdir()
    env = _env(installed, tmp_path)
    where = _run(sys.executable, "-c", "import hf_genssl, hf_genssl.reproduce as r; print(hf_genssl.__file__); "
                 "print(sorted(r.load_definitions().scales))", cwd=elsewhere, env=env).stdout.split("\n")
    assert where[0].startswith(str(installed)), where  # the wheel's copy, not the checkout
    assert "quick" in where[1] and "default" in where[1]
    cache = os.environ.get("GENSSL_CACHE")
    overrides = ["max_steps=2", "max_docs=20", "vocab_size=300", "seq_len=32", "hidden_size=32", "num_hidden_layers=1",
                 "batch_size=4", "eval_every=2", "eval_batches=1", "save_every=1000", "progress=false"]
    command = [str(installed / "bin" / "genssl"), "pretrain", "--config", "tiny", "--output-dir", "run"]
    command += [arg for item in overrides for arg in ("--override", item)]
    if cache:
        command += ["--override", f"cache_dir={cache}"]
    result = _run(*command, cwd=elsewhere, env=env)
    assert '"step": 2' in result.stdout or '"steps": 2' in result.stdout, result.stdout
    assert (elsewhere / "run" / "final" / "model.safetensors").exists()
