"""The README's Python examples run as written (those that need a Hub id or a trained checkpoint are skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if "path/or/hub-id" not in b and "your-name/" not in b]


def test_readme_has_runnable_examples():
    assert RUNNABLE, "the README should show code that runs"


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(block):
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
