"""Fine-tuning a tiny pretrained checkpoint with Trainer beats the majority class (a real signal, not just a run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hf_genssl.finetuning import run_finetuning
from hf_genssl.pretraining import run_pretraining

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return Path(os.environ.get("GENSSL_CACHE") or tmp_path_factory.mktemp("genssl-cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cache) -> Path:
    """A tiny semi-AR model pretrained for a few steps on the task's own sentences (no labels)."""
    from hf_genssl.data.tasks import load_task

    texts = list(load_task("rt-polarity", cache)["train"]["sentence"])
    run = tmp_path_factory.mktemp("pretrained")
    result = run_pretraining({"texts": texts, "vocab_size": 2000, "seq_len": 64, "hidden_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "batch_size": 32, "max_steps": 80,
                              "learning_rate": 3e-3, "warmup_steps": 10, "eval_every": 1000, "save_every": 1000,
                              "progress": False, "output_dir": str(run)})
    return Path(result["final_dir"])


def test_one_epoch_beats_the_majority_class(checkpoint, cache, tmp_path):
    result = run_finetuning({"model": str(checkpoint), "task": "rt-polarity", "output_dir": str(tmp_path),
                             "epochs": 1, "max_eval_samples": 600, "batch_size": 32, "learning_rate": 1e-3,
                             "cache_dir": str(cache)})
    accuracy, majority = result["final"]["eval_accuracy"], result["majority_baseline_accuracy"]
    assert accuracy > majority + 0.08, (accuracy, majority)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metric"] == "accuracy" and saved["final"]["eval_accuracy"] == accuracy
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_regression_task_reports_pearson_and_spearman(checkpoint, cache, tmp_path):
    result = run_finetuning({"model": str(checkpoint), "task": "rt-regression", "output_dir": str(tmp_path),
                             "epochs": 1, "max_train_samples": 500, "max_eval_samples": 200, "batch_size": 32,
                             "cache_dir": str(cache)})
    assert {"eval_pearson", "eval_spearmanr"} <= set(result["final"])


def test_bad_inputs_keep_existing_files(checkpoint, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="Unknown task"):
        run_finetuning({"model": str(checkpoint), "task": "sst-9", "output_dir": str(tmp_path)})
    empty = tmp_path / "empty_checkpoint"
    empty.mkdir()
    (empty / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(ValueError, match="no model weights"):
        run_finetuning({"model": str(empty), "task": "rt-polarity", "output_dir": str(tmp_path)})
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_lora(checkpoint, cache, tmp_path):
    result = run_finetuning({"model": str(checkpoint), "task": "sms-spam", "output_dir": str(tmp_path), "epochs": 1,
                             "max_train_samples": 300, "max_eval_samples": 100, "lora": True,
                             "cache_dir": str(cache)})
    assert {"eval_accuracy", "eval_f1"} <= set(result["final"])
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_finetune_writes_a_card_reports_to_trackers_and_needs_a_hub_id(checkpoint, cache, tmp_path):
    """`finetune` wrote no model card, hard-coded report_to=[] and pushed to a repo named after the output folder."""
    from huggingface_hub import ModelCard

    with pytest.raises(ValueError, match="push_to_hub needs hub_model_id"):
        run_finetuning({"model": str(checkpoint), "task": "rt-polarity", "output_dir": str(tmp_path / "nohub"),
                        "push_to_hub": True})
    assert not (tmp_path / "nohub").exists()  # refused before any work
    pytest.importorskip("tensorboard")
    out = tmp_path / "ft"
    result = run_finetuning({"model": str(checkpoint), "task": "rt-polarity", "output_dir": str(out), "epochs": 1,
                             "max_train_samples": 64, "max_eval_samples": 64, "report_to": "tensorboard",
                             "cache_dir": str(cache)})
    card = ModelCard.load(out / "final" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "hf_genssl" in card.data.tags
    (accuracy,) = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert accuracy.metric_value == result["final"]["eval_accuracy"] and accuracy.dataset_name == "rt-polarity"
    assert accuracy.task_type == "text-classification"
    assert "| `learning_rate` | 0.0001 |" in card.text
    assert list((out / "trainer").rglob("events.out.tfevents.*"))  # Trainer's TensorBoard callback ran
