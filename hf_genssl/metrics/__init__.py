"""Evaluation metrics shipped with hf_genssl as local ``evaluate`` modules.

``evaluate.load("glue", ...)`` downloads its script from the Hugging Face Hub and therefore fails offline
(``HF_HUB_OFFLINE=1``, air-gapped clusters, CI). Every metric here is instead a folder ``METRICS_DIR/<name>/``
holding ``<name>.py``, an ``evaluate`` module that ``evaluate.load`` accepts by path with no network access.

- ``load_metric("mrpc")``: a GLUE task name (or "accuracy", "accuracy_f1", "pearson_spearman",
  "matthews_correlation") selects the ``glue_metric`` module with that config;
- ``load_metric("<module dir>", config_name=...)``: any module folder in ``METRICS_DIR`` (for example a
  module added later) is loaded by its folder name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # evaluate is an optional dependency (the "eval" extra); import it only when loading.
    import evaluate

__all__ = [
    "GLUE_METRIC_CONFIGS",
    "METRICS_DIR",
    "available_metrics",
    "compute_glue_metric",
    "load_metric",
    "metric_path",
]

logger = logging.getLogger(__name__)

METRICS_DIR: Path = Path(__file__).resolve().parent
"""Folder holding one sub-folder per shipped ``evaluate`` module (``<name>/<name>.py``)."""

GLUE_MODULE = "glue_metric"

# Config names the glue_metric module accepts (kept in sync with METRIC_FAMILY in glue_metric.py; a test checks it).
GLUE_METRIC_CONFIGS: tuple[str, ...] = (
    "cola",
    "stsb",
    "mrpc",
    "qqp",
    "sst2",
    "mnli",
    "mnli_matched",
    "mnli_mismatched",
    "qnli",
    "rte",
    "wnli",
    "hans",
    "accuracy",
    "accuracy_f1",
    "pearson_spearman",
    "matthews_correlation",
)


def available_metrics() -> list[str]:
    """Names of the metric modules shipped in ``METRICS_DIR`` (folders ``<name>/<name>.py``)."""
    return sorted(p.parent.name for p in METRICS_DIR.glob("*/*.py") if p.stem == p.parent.name)


def metric_path(module_name: str) -> Path:
    """Folder of the shipped module ``module_name``, the path ``evaluate.load`` expects.

    Raises ``FileNotFoundError`` listing the available modules, so a typo is not mistaken for a Hub id
    (``evaluate.load`` would otherwise try to download it).
    """
    folder = METRICS_DIR / module_name
    if not (folder / f"{module_name}.py").is_file():
        raise FileNotFoundError(
            f"No metric module {module_name!r} in {METRICS_DIR}; available modules: {available_metrics()}, "
            f"GLUE configs: {list(GLUE_METRIC_CONFIGS)}."
        )
    return folder


def _resolve(name: str, config_name: str | None) -> tuple[Path, str | None]:
    """Map a user-facing name to (module folder, config name): module folders win, then GLUE configs."""
    if (METRICS_DIR / name / f"{name}.py").is_file():
        return METRICS_DIR / name, config_name
    if name in GLUE_METRIC_CONFIGS:
        if config_name not in (None, name):
            raise ValueError(f"{name!r} is itself a glue_metric config; got a different config_name={config_name!r}.")
        return metric_path(GLUE_MODULE), name
    return metric_path(name), config_name  # raises FileNotFoundError with the available names


def load_metric(name: str, config_name: str | None = None, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load a shipped metric module offline with ``evaluate.load(<module folder>, config_name, **kwargs)``.

    ``name`` is a module folder name in ``METRICS_DIR`` or a glue_metric config (GLUE task or metric family).
    Results are kept in memory unless told otherwise (``keep_in_memory=False``, needed for multi-process
    evaluation with ``num_process``), so that computing a metric writes no cache files.
    """
    import evaluate

    path, config = _resolve(name, config_name)
    if kwargs.get("num_process", 1) == 1:
        kwargs.setdefault("keep_in_memory", True)
    logger.debug("Loading metric module %s (config %s) from %s", path.name, config, path)
    if config is None:
        return evaluate.load(str(path), **kwargs)
    return evaluate.load(str(path), config, **kwargs)


def compute_glue_metric(
    task_or_metric: str, predictions: Sequence[float] | Any, references: Sequence[float] | Any
) -> dict[str, float]:
    """Compute a GLUE task's metric (or a metric family's) in one call, for ``Trainer`` ``compute_metrics``."""
    if task_or_metric not in GLUE_METRIC_CONFIGS:
        raise KeyError(f"Unknown GLUE task or metric {task_or_metric!r}; expected one of {list(GLUE_METRIC_CONFIGS)}.")
    metric = load_metric(GLUE_MODULE, config_name=task_or_metric)
    return metric.compute(predictions=predictions, references=references)
