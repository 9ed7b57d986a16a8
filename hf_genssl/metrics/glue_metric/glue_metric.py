"""GLUE metrics as an offline ``evaluate`` module.

``evaluate.load("glue", task)`` fetches its script from the Hugging Face Hub, so it fails offline. This module
reproduces that script's numbers exactly (same scikit-learn / scipy calls, same output keys) and is shipped
inside ``hf_genssl``, so ``evaluate.load(<path of this folder>, config_name)`` works with no network.
``hf_genssl.metrics.load_metric`` wraps that call.

The module is self-contained on purpose: ``evaluate`` copies it into its own module cache and imports it
from there, so it must not import ``hf_genssl``.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  note={In the Proceedings of ICLR.},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE metrics computed offline, identical to the Hub's "glue" metric: CoLA -> Matthews correlation;
STS-B -> Pearson and Spearman correlation; MRPC, QQP -> accuracy and binary F1; SST-2, MNLI (matched and
mismatched), QNLI, RTE, WNLI and HANS -> accuracy. The config names "accuracy", "accuracy_f1",
"pearson_spearman" and "matthews_correlation" select a metric family directly, for tasks that are not GLUE.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (integers), or predicted scores (floats) for "stsb" / "pearson_spearman".
    references: gold labels (integers), or gold scores (floats) for "stsb" / "pearson_spearman".
Returns:
    "accuracy": fraction of exact matches, for accuracy configs;
    "accuracy" and "f1": for "mrpc", "qqp" and "accuracy_f1" (F1 of the positive class 1);
    "pearson" and "spearmanr": for "stsb" and "pearson_spearman";
    "matthews_correlation": for "cola" and "matthews_correlation".
Examples:
    >>> metric = evaluate.load("path/to/glue_metric", "mrpc")
    >>> metric.compute(predictions=[0, 1], references=[0, 1])
    {'accuracy': 1.0, 'f1': 1.0}
"""

# Config name -> metric family. GLUE task names first, then the task-agnostic names used offline.
METRIC_FAMILY: dict[str, str] = {
    "cola": "matthews_correlation",
    "stsb": "pearson_spearman",
    "mrpc": "accuracy_f1",
    "qqp": "accuracy_f1",
    "sst2": "accuracy",
    "mnli": "accuracy",
    "mnli_matched": "accuracy",
    "mnli_mismatched": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
    "wnli": "accuracy",
    "hans": "accuracy",
    "accuracy": "accuracy",
    "accuracy_f1": "accuracy_f1",
    "pearson_spearman": "pearson_spearman",
    "matthews_correlation": "matthews_correlation",
}


def simple_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches (GLUE's ``simple_accuracy``)."""
    return float((preds == labels).mean())


def acc_and_f1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and binary F1 of class 1, as GLUE reports them for paraphrase tasks."""
    return {"accuracy": simple_accuracy(preds, labels), "f1": float(f1_score(y_true=labels, y_pred=preds))}


def pearson_and_spearman(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation, as GLUE reports them for STS-B (key names kept from GLUE)."""
    return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}


def matthews_correlation(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Matthews correlation coefficient, as GLUE reports it for CoLA."""
    return {"matthews_correlation": float(matthews_corrcoef(labels, preds))}


_COMPUTE = {
    "accuracy": lambda preds, labels: {"accuracy": simple_accuracy(preds, labels)},
    "accuracy_f1": acc_and_f1,
    "pearson_spearman": pearson_and_spearman,
    "matthews_correlation": matthews_correlation,
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    """GLUE metric selected by ``config_name`` (a GLUE task or a metric family name)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in METRIC_FAMILY:
            raise KeyError(
                f"Unknown config name {self.config_name!r} for the GLUE metric; "
                f"expected one of {sorted(METRIC_FAMILY)}."
            )
        # Regression scores are floats; every other family compares integer class labels.
        dtype = "float32" if METRIC_FAMILY[self.config_name] == "pearson_spearman" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            codebase_urls=[],
            reference_urls=["https://gluebenchmark.com/"],
            format="numpy",
        )

    def _compute(self, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        return _COMPUTE[METRIC_FAMILY[self.config_name]](np.asarray(predictions), np.asarray(references))
