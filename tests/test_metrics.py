"""The shipped GLUE metric module gives GLUE's numbers offline: hand-computed examples, then sklearn/scipy directly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("evaluate")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from hf_genssl.metrics import (
    GLUE_METRIC_CONFIGS,
    METRICS_DIR,
    available_metrics,
    compute_glue_metric,
    load_metric,
    metric_path,
)

# preds vs refs: TP=1 (index 1), FP=1 (index 2), TN=2, FN=0.
PREDS = [0, 1, 1, 0]
REFS = [0, 1, 0, 0]
ACCURACY_TASKS = ["sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "hans", "accuracy"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_module_is_shipped_and_configs_match_the_module():
    assert "glue_metric" in available_metrics()
    assert metric_path("glue_metric") == METRICS_DIR / "glue_metric"
    spec = importlib.util.spec_from_file_location("_glue_metric", METRICS_DIR / "glue_metric" / "glue_metric.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.METRIC_FAMILY) == set(GLUE_METRIC_CONFIGS)


@pytest.mark.parametrize("task", ACCURACY_TASKS)
def test_accuracy_tasks_by_hand(task):
    assert compute_glue_metric(task, PREDS, REFS) == {"accuracy": 0.75}


@pytest.mark.parametrize("task", ["mrpc", "qqp", "accuracy_f1"])
def test_accuracy_f1_by_hand(task):
    # precision 1/2, recall 1/1 -> F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    result = compute_glue_metric(task, PREDS, REFS)
    assert result == pytest.approx({"accuracy": 0.75, "f1": 2 / 3})


@pytest.mark.parametrize("task", ["cola", "matthews_correlation"])
def test_matthews_by_hand(task):
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(2*1*3*2)
    result = compute_glue_metric(task, PREDS, REFS)
    assert result == pytest.approx({"matthews_correlation": 2 / 12**0.5})


@pytest.mark.parametrize("task", ["stsb", "pearson_spearman"])
def test_pearson_spearman_by_hand(task):
    # x=[1,2,3,4], y=[1,3,2,4]: covariance sum 4, variance sums 5 -> r = 0.8; rank differences (0,1,1,0) ->
    # rho = 1 - 6*2 / (4*(16-1)) = 0.8.
    result = compute_glue_metric(task, [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert set(result) == {"pearson", "spearmanr"}
    assert result == pytest.approx({"pearson": 0.8, "spearmanr": 0.8})


def test_all_configs_match_sklearn_and_scipy_on_random_data():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    three_way_labels, three_way_preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    scores = rng.normal(size=200).astype(np.float32)
    predicted_scores = (scores + rng.normal(scale=0.7, size=200)).astype(np.float32)

    cola = load_metric("cola").compute(predictions=preds, references=labels)
    assert cola["matthews_correlation"] == pytest.approx(matthews_corrcoef(labels, preds))

    mrpc = load_metric("mrpc").compute(predictions=preds, references=labels)
    assert mrpc == pytest.approx({"accuracy": accuracy_score(labels, preds), "f1": f1_score(labels, preds)})

    mnli = load_metric("mnli").compute(predictions=three_way_preds, references=three_way_labels)
    assert mnli["accuracy"] == pytest.approx(accuracy_score(three_way_labels, three_way_preds))

    stsb = load_metric("stsb").compute(predictions=predicted_scores, references=scores)
    assert stsb["pearson"] == pytest.approx(pearsonr(predicted_scores, scores)[0], rel=1e-5)
    assert stsb["spearmanr"] == pytest.approx(spearmanr(predicted_scores, scores)[0], rel=1e-5)


def test_load_metric_by_module_name_with_config_and_batches():
    metric = load_metric("glue_metric", config_name="qnli")
    metric.add_batch(predictions=[0, 1], references=[0, 1])
    metric.add_batch(predictions=[1, 1], references=[0, 1])
    assert metric.compute() == {"accuracy": 0.75}


def test_unknown_names_fail_clearly():
    with pytest.raises(FileNotFoundError, match="available modules"):
        load_metric("no_such_metric")
    with pytest.raises(KeyError, match="Unknown GLUE task"):
        compute_glue_metric("squad", [0], [0])
    with pytest.raises(KeyError, match="Unknown config name"):
        load_metric("glue_metric", config_name="squad")
    with pytest.raises(ValueError, match="config"):
        load_metric("mrpc", config_name="cola")


@pytest.mark.slow
def test_load_metric_offline_in_a_fresh_process(tmp_path):
    """A new interpreter with both offline switches and an empty HF cache still loads and computes the metric."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # anything that tried the network would fail, not hang
    }
    code = (
        "import json; from hf_genssl.metrics import load_metric; "
        "print(json.dumps(load_metric('mrpc').compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == pytest.approx({"accuracy": 0.75, "f1": 2 / 3})
