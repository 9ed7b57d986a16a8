"""Shared fixtures: a tokenizer trained on text made here and tiny configs, so nothing needs the Hub."""

from __future__ import annotations

import atexit
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cold_data_cache() -> str:
    """A data cache whose built datasets start empty in every test session, sharing only the verified raw downloads.

    The data builders (corpus splits, tasks, images) save what they build under ``<cache>/datasets`` and reuse it
    while the build settings match; a warm copy would hide a bug in the building code (a split that leaks
    validation documents into train passed on a developer's cache). So the session gets a fresh cache folder in
    which ``downloads/``, ``sources/`` and ``locks/`` link to the user's cache (``$GENSSL_CACHE`` or
    ``~/.cache/hf_genssl``; every fetch checks an archive's sha256) and ``datasets/`` is empty. Tests that corrupt a
    cache use their own tmp_path.
    """
    warm = Path(os.environ.get("GENSSL_CACHE") or "~/.cache/hf_genssl").expanduser()
    cold = Path(tempfile.mkdtemp(prefix="genssl-test-cache-"))
    for name in ("downloads", "sources", "locks"):
        (warm / name).mkdir(parents=True, exist_ok=True)
        (cold / name).symlink_to(warm / name, target_is_directory=True)
    os.environ["HF_DATASETS_CACHE"] = str(cold / "hf_datasets")  # datasets' own map/parse cache: cold as well
    atexit.register(shutil.rmtree, cold, True)  # removes the links, never what they point to
    return str(cold)


os.environ["GENSSL_CACHE"] = _cold_data_cache()

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

WORDS = (
    "the of and to a in that is was he for it with as his on be at by i this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way well"
).split()


def make_texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(n)]


@pytest.fixture(autouse=True)
def _logger_levels_restored():
    """`genssl` (cli.main) sets logger levels for the whole process, as a command should (the `accelerate` logger
    to WARNING); a test that calls it must not change what the tests after it see."""
    loggers = [logging.getLogger(), logging.getLogger("accelerate"), logging.getLogger("hf_genssl")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return make_texts()


@pytest.fixture(scope="session")
def tokenizer(texts):
    from hf_genssl import train_tokenizer

    return train_tokenizer(texts, vocab_size=512, model_max_length=64)


def tiny_config(**overrides):
    from hf_genssl import GenSSLConfig

    values = dict(
        vocab_size=512,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return GenSSLConfig(**values)


BLOCK_HF_GENSSL = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_genssl" or name.startswith("hf_genssl."):
            raise ImportError("hf_genssl is blocked in this process")
sys.meta_path.insert(0, _Block())
"""


def run_isolated(script: str, cwd, tmp_path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter that cannot import hf_genssl, from a directory outside the repo."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_HF_GENSSL + textwrap.dedent(script)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
