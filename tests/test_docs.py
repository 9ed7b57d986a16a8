"""Pointers from code and README into the repository's documents stay valid.

Docstrings point readers to ``docs/*.md``, ``results/<scale>/RESULTS.md`` and README sections instead of carrying
derivations and experiment numbers themselves; a pointer to a moved or renamed file would rot silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a repository path that a reader is sent to: docs/<name>.md or results/<scale>/RESULTS.md
POINTER = re.compile(r"(?<![\w/.])((?:docs/[\w./-]+\.md)|(?:results/\w+/RESULTS\.md))")
SOURCES = sorted((ROOT / "hf_genssl").rglob("*.py")) + [ROOT / "README.md"]


def _pointers(path: Path) -> list[str]:
    return POINTER.findall(path.read_text())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_document_a_file_points_to_exists(path):
    missing = [p for p in _pointers(path) if not (ROOT / p).is_file()]
    assert not missing, f"{path.relative_to(ROOT)} points to missing files: {missing}"


def test_every_doc_page_is_reachable_from_the_readme_or_a_docstring():
    pointed = {p for source in SOURCES for p in _pointers(source)}
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")}
    assert pages, "docs/ holds no page"
    assert not pages - pointed, f"pages nothing points to: {sorted(pages - pointed)}"


def test_theory_module_docstring_is_a_summary_pointing_to_its_derivation():
    """The derivation lives in docs/theory.md; the module docstring stays a summary that points there."""
    import hf_genssl.theory as theory

    doc = theory.__doc__
    assert "docs/theory.md" in doc
    assert len(doc.splitlines()) <= 20
    page = (ROOT / "docs" / "theory.md").read_text()
    for heading in ("## Data model", "## Which quantity is compared, and why", "## What the exact model gives"):
        assert heading in page
