"""`genssl reproduce` end to end at a micro scale: the same code path as --quick, in seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_genssl import reproduce

pytestmark = pytest.mark.slow


def test_reproduce_writes_results_from_json_and_resumes(tmp_path, monkeypatch):
    cache = os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache")
    micro = reproduce.Scale({"max_steps": 4, "hidden_size": 32, "num_hidden_layers": 1, "vocab_size": 600,
                             "max_docs": 3, "batch_size": 4, "seq_len": 32, "eval_every": 4, "save_every": 1000},
                            finetune_epochs=1, finetune_samples=64, ppl_texts=1, seeds=2)
    monkeypatch.setitem(reproduce.SCALES, "quick", micro)
    monkeypatch.setattr(reproduce, "TASKS", ("rt-polarity",))
    monkeypatch.setattr(reproduce, "CLASSIFICATION_CELLS",
                        {k: reproduce.CLASSIFICATION_CELLS[k] for k in ("ar", "semi_ar_g2")})
    monkeypatch.setattr(reproduce, "GENERATION_CELLS",
                        {k: reproduce.GENERATION_CELLS[k] for k in ("masked_0.15", "variable_0.1-0.9")})
    text = reproduce.run_reproduce(str(tmp_path / "results"), quick=True, cache_dir=cache)

    assert "not evidence" in text and "fine-tunes better than AR" in text and "variable mask ratio" in text
    runs = sorted((tmp_path / "results").glob("*/*.json"))
    assert len(runs) == 2 * 2 + 4 * 2  # classification: 2 cells; generation: 2 masked + ar + semi-AR; 2 seeds each
    record = json.loads(runs[0].read_text())
    assert {"seed", "hardware", "seconds", "settings", "data"} <= set(record)
    assert (tmp_path / "results" / "prefix_perplexity.png").exists()
    # RESULTS.md comes from the JSON files alone: a second call reruns nothing and writes the same table
    first = (tmp_path / "results" / "RESULTS.md").read_text()
    assert reproduce.run_reproduce(str(tmp_path / "results"), quick=True, cache_dir=cache) == first
