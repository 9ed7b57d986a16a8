"""Every Python example in the README runs as written: a placeholder checkpoint id ("path/or/hub-id") becomes a tiny
checkpoint saved here, a placeholder namespace ("your-name/") the local fake Hub's user; no block is skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from tests.fake_hub import FAKE_USER, fake_hub, hub_online

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    """What `genssl pretrain` leaves in final/: a pretraining model and its tokenizer."""
    from hf_genssl import GenSSLForPreTraining

    path = tmp_path_factory.mktemp("readme-checkpoint")
    torch.manual_seed(0)
    GenSSLForPreTraining(tiny_config(vocab_size=len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_readme_has_examples_that_load_a_checkpoint():
    assert len(BLOCKS) >= 2 and any("path/or/hub-id" in block for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands here
    code = block.replace("path/or/hub-id", str(checkpoint)).replace("your-name/", f"{FAKE_USER}/")
    with fake_hub(tmp_path / "hub") as endpoint, hub_online(endpoint):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})  # noqa: S102 - running the docs is the test
