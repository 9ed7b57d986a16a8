"""Model cards (the Hub's ``README.md``) for hf_genssl checkpoints, rendered from templates shipped in the package.

A published checkpoint should say what objective produced it, on what data, what was measured (on what data and
hardware), how to load it without this package, and what paper to cite. The templates live in
``hf_genssl/model_cards/`` (package data, so an installed wheel has them too; ``model_cards/`` at the repository
root links to them). They are Jinja templates rendered by ``huggingface_hub.ModelCard.from_template``, whose
``ModelCardData`` writes the YAML metadata the Hub indexes: ``library_name: transformers``, ``tags: [hf_genssl,
<objective>]``, ``datasets``, ``license``, ``pipeline_tag`` (by objective: masked checkpoints are ``fill-mask``) and
``model-index`` (the evaluation results, as ``EvalResult`` entries).

A card names the repository it is published to: the pretraining and fine-tuning loops write one for the local
folder, and :func:`hf_genssl.hub.push_checkpoint` renders it again for the Hub repo id at push time (``card=``).

>>> card = render_model_card("language_model", repo_id="me/genssl-small", objective="semi_autoregressive",
...                          objective_hparams={"group_size": 2}, results={"sst2": {"accuracy": 0.81}},
...                          results_data="SST-2 validation", results_hardware="2 CPU cores")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = [
    "CITATION",
    "KNOWN_OBJECTIVES",
    "TEMPLATE_NAMES",
    "eval_results",
    "render_model_card",
    "tokenizer_needs_remote_code",
    "results_table",
    "settings_table",
    "template_path",
    "write_model_card",
]

logger = logging.getLogger(__name__)

TEMPLATE_NAMES: tuple[str, ...] = ("language_model", "vision_model")

CITATION = """@inproceedings{zhang2024look,
  title     = {Look Ahead or Look Around? A Theoretical Comparison Between Autoregressive and Masked Pretraining},
  author    = {Zhang, Qi and Du, Tianqi and Huang, Haotian and Wang, Yifei and Wang, Yisen},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2024}
}"""

# objective name (also a Hub tag) -> (title, one-paragraph description)
KNOWN_OBJECTIVES: dict[str, tuple[str, str]] = {
    "semi_autoregressive": (
        "Diversity-enhanced semi-autoregressive pretraining",
        (
            "the sequence is cut into consecutive groups of `group_size` tokens and every token of group k is "
            "predicted, in parallel, from all tokens of the groups before k, with XLNet-style two-stream attention. "
            "Each prefix gets several prediction targets, which the paper shows improves downstream classification "
            "over plain autoregressive pretraining."
        ),
    ),
    "autoregressive": (
        "Autoregressive pretraining",
        "every token is predicted from the tokens before it (the semi-autoregressive objective with `group_size=1`).",
    ),
    "variable_length_masked": (
        "Variable-length masked pretraining",
        (
            "masked modelling whose mask ratio is drawn per sample from a range instead of being fixed, so the "
            "model learns to predict from contexts of every length and can generate from prefixes of any length."
        ),
    ),
    "masked": (
        "Masked pretraining",
        "a fixed fraction of the tokens is masked and predicted from the others, bidirectionally (BERT / MAE style).",
    ),
}

# The pipeline a checkpoint of each objective serves (the Hub's `pipeline_tag`); vision cards keep their default.
OBJECTIVE_PIPELINE_TAGS: dict[str, str] = {
    "semi_autoregressive": "text-generation",
    "autoregressive": "text-generation",
    "variable_length_masked": "fill-mask",
    "masked": "fill-mask",
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "language_model": {
        "pipeline_tag": "text-generation",
        "pipeline_tag_by_objective": OBJECTIVE_PIPELINE_TAGS,
        "kind": "language model",
        "architecture": "A decoder-only Transformer with two-stream (content / query) attention; see `config.json`.",
    },
    "vision_model": {
        "pipeline_tag": "image-feature-extraction",
        "kind": "vision model",
        "architecture": "A Vision Transformer over image patches with two-stream (content / query) attention; "
        "see `config.json`.",
    },
}

_DEFAULT_LIMITATIONS = (
    "This is a research checkpoint. It has not been evaluated for bias, toxicity or factual accuracy and should "
    "not be used for decisions about people. Its quality is bounded by the size of its training data and model; "
    "the results above hold only for the data and settings they name. Loading it with `trust_remote_code=True` "
    "runs the Python files stored in the repository: read them, or pin a `revision`, before doing so."
)

_FIELDS: frozenset[str] = frozenset(
    {
        "repo_id",
        "objective",
        "model_name",
        "model_description",
        "objective_description",
        "objective_hparams",
        "model_details",
        "training_data",
        "datasets",
        "language",
        "license",
        "pipeline_tag",
        "base_model",
        "tags",
        "results",
        "results_data",
        "results_hardware",
        "results_task",
        "results_dataset",
        "tokenizer_trust_remote_code",
        "limitations",
    }
)


def template_path(template_name: str) -> Path:
    """Path of a shipped template (``"language_model"``/``"vision_model"``) or of a custom ``.md`` template file.

    Shipped templates are resolved through ``importlib.resources``, so they are found wherever the package is
    installed (editable checkout or wheel), not relative to a working directory.
    """
    if template_name.endswith(".md") and os.path.isfile(template_name):
        return Path(template_name)
    if template_name not in TEMPLATE_NAMES:
        raise ValueError(
            f"Unknown model card template {template_name!r}; expected one of {TEMPLATE_NAMES} or a .md file."
        )
    path = Path(str(resources.files("hf_genssl") / "model_cards" / f"{template_name}.md"))
    if not path.is_file():
        raise FileNotFoundError(f"Model card template {path} is missing from the installed hf_genssl package.")
    return path


def _library_version() -> str:
    try:
        return metadata.version("hf_genssl")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "(source tree)"


def _cell(value: Any) -> str:
    """Format one table cell: floats with 6 significant digits (a learning rate of 1e-05 stays 1e-05, not
    0.0000), sequences as tuples, and no raw ``|`` to break the table."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = "(" + ", ".join(_cell(v) for v in value) + ")"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table(settings: Mapping[str, Any] | None, header: str, empty: str) -> str:
    """Two-column markdown table ``| `key` | value |`` (or the ``empty`` sentence when there is nothing)."""
    if not settings:
        return empty
    rows = [f"| `{key}` | {_cell(value)} |" for key, value in settings.items()]
    return "\n".join([f"| {header} | value |", "|---|---|", *rows])


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table of measured results: ``{metric: value}`` or ``{task: {metric: value}}``."""
    nested = any(isinstance(value, Mapping) for value in results.values())
    if not nested:
        rows = [f"| {_cell(metric)} | {_cell(value)} |" for metric, value in results.items()]
        return "\n".join(["| metric | value |", "|---|---|", *rows])
    rows = []
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            raise TypeError(f"results mixes flat and per-task entries (entry {task!r}); use one form.")
        rows += [f"| {_cell(task)} | {_cell(metric)} | {_cell(value)} |" for metric, value in metrics.items()]
    return "\n".join(["| task | metric | value |", "|---|---|---|", *rows])


def _results_section(fields: Mapping[str, Any]) -> str:
    """The results table plus where it was measured; refuses numbers that do not say on what data and hardware."""
    results = fields.get("results")
    if not results:
        return "No results have been measured for this checkpoint yet."
    missing = [name for name in ("results_data", "results_hardware") if not fields.get(name)]
    if missing:
        raise ValueError(f"results need {' and '.join(missing)}: say on what data and hardware they were measured.")
    return f"{results_table(results)}\n\nMeasured on {fields['results_data']}, on {fields['results_hardware']}."


def _objective_text(objective: str, fields: Mapping[str, Any]) -> tuple[str, str]:
    title, description = KNOWN_OBJECTIVES.get(objective, (objective.replace("_", " ").capitalize(), None))
    description = fields.get("objective_description") or description
    if description is None:
        raise ValueError(
            f"Objective {objective!r} is not one of {sorted(KNOWN_OBJECTIVES)}; pass objective_description."
        )
    return title, description


def _slug(name: str) -> str:
    """An identifier for the Hub's metadata (``"validation loss"`` -> ``"validation_loss"``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or name


def eval_results(fields: Mapping[str, Any], task_type: str) -> list[EvalResult] | None:
    """The ``model-index`` entries of ``fields["results"]``: one per (dataset, metric). Per-task results name
    their task as the dataset; flat results use ``results_dataset`` (default: ``results_data``)."""
    results = fields.get("results")
    if not results:
        return None
    if any(isinstance(value, Mapping) for value in results.values()):
        per_dataset = list(results.items())
    else:
        per_dataset = [(fields.get("results_dataset") or fields.get("results_data") or "held-out data", results)]
    return [EvalResult(task_type=fields.get("results_task") or task_type, dataset_type=_slug(str(dataset)),
                       dataset_name=str(dataset), metric_type=_slug(str(metric)), metric_name=str(metric),
                       metric_value=value)
            for dataset, metrics in per_dataset for metric, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def _card_data(
    objective: str, fields: Mapping[str, Any], defaults: Mapping[str, Any], model_name: str
) -> ModelCardData:
    tags = ["hf_genssl", objective, *[t for t in fields.get("tags") or () if t not in ("hf_genssl", objective)]]
    pipeline_tag = fields.get("pipeline_tag") or defaults.get("pipeline_tag_by_objective", {}).get(
        objective, defaults["pipeline_tag"])
    results = eval_results(fields, pipeline_tag)
    return ModelCardData(
        library_name="transformers",
        tags=tags,
        datasets=list(fields["datasets"]) if fields.get("datasets") else None,
        license=fields.get("license", "apache-2.0"),
        pipeline_tag=pipeline_tag,
        language=fields.get("language"),
        base_model=fields.get("base_model"),
        model_name=model_name if results else None,
        eval_results=results or None,
    )


def _check_fields(fields: Mapping[str, Any]) -> None:
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise TypeError(f"Unknown model card field(s) {unknown}; known fields: {sorted(_FIELDS)}.")
    missing = [name for name in ("repo_id", "objective") if not fields.get(name)]
    if missing:
        raise TypeError(f"Missing required model card field(s): {missing}.")


def render_model_card(template_name: str, **fields: Any) -> str:
    """Render a model card (``README.md`` text with YAML metadata) for an hf_genssl checkpoint.

    Required fields: ``repo_id`` and ``objective`` (one of ``KNOWN_OBJECTIVES``, or any name together with
    ``objective_description``). Optional: ``model_name``, ``model_description``, ``objective_hparams`` and
    ``model_details`` (mappings, rendered as tables), ``training_data``, ``datasets`` (Hub ids), ``language``,
    ``license`` (default apache-2.0), ``pipeline_tag`` (default: by objective), ``base_model``, ``tags`` (extra),
    ``results`` (``{metric: value}`` or ``{task: {metric: value}}``, which then needs ``results_data`` and
    ``results_hardware``; written to ``model-index`` too, with ``results_task`` as the task type (default: the
    pipeline tag) and ``results_dataset`` naming the data of flat results), ``tokenizer_trust_remote_code``
    (the tokenizer ships code: the loading snippet passes ``trust_remote_code=True`` to it), ``limitations``.
    Unknown fields raise ``TypeError`` so a typo is not silently dropped.
    """
    _check_fields(fields)
    path = template_path(template_name)
    defaults = _DEFAULTS.get(path.stem, _DEFAULTS["language_model"])
    objective = str(fields["objective"])
    objective_title, objective_description = _objective_text(objective, fields)
    repo_id = str(fields["repo_id"])
    model_name = fields.get("model_name") or repo_id.rstrip("/").rsplit("/", 1)[-1]
    context = {
        "repo_id": repo_id,
        "model_name": model_name,
        "tokenizer_kwargs": ", trust_remote_code=True" if fields.get("tokenizer_trust_remote_code") else "",
        "model_description": fields.get("model_description")
        or f"A {defaults['kind']} pretrained with {objective_title.lower()}.",
        "library_version": _library_version(),
        "objective": objective,
        "objective_title": objective_title,
        "objective_description": objective_description,
        "objective_hparams_table": settings_table(
            fields.get("objective_hparams"),
            "hyper-parameter",
            "No objective hyper-parameters were recorded for this checkpoint.",
        ),
        "model_details_table": settings_table(fields.get("model_details"), "setting", defaults["architecture"]),
        "training_data": fields.get("training_data") or "Not documented for this checkpoint.",
        "results_section": _results_section(fields),
        "limitations": fields.get("limitations") or _DEFAULT_LIMITATIONS,
        "citation": CITATION,
    }
    card = ModelCard.from_template(
        _card_data(objective, fields, defaults, model_name), template_str=path.read_text(encoding="utf-8"), **context
    )
    return str(card)


def write_model_card(checkpoint_dir: str | os.PathLike[str], template_name: str, fields: Mapping[str, Any]) -> Path:
    """Render a card and write it as ``checkpoint_dir/README.md`` (replacing any), ready for ``push_checkpoint``."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {checkpoint_dir} does not exist.")
    readme = checkpoint_dir / "README.md"
    if readme.exists():
        logger.info("Replacing the existing model card %s", readme)
    fields = {"tokenizer_trust_remote_code": tokenizer_needs_remote_code(checkpoint_dir), **fields}
    readme.write_text(render_model_card(template_name, **fields), encoding="utf-8")
    return readme


def tokenizer_needs_remote_code(checkpoint_dir: str | os.PathLike[str]) -> bool:
    """Whether the folder's tokenizer (or processor) is a class shipped as code (``auto_map`` in its config), so
    ``AutoTokenizer.from_pretrained`` needs ``trust_remote_code=True``; the package's own tokenizers do not."""
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        path = Path(checkpoint_dir) / name
        if path.is_file():
            try:
                if "auto_map" in json.loads(path.read_text(encoding="utf-8")):
                    return True
            except (ValueError, OSError):
                continue
    return False
