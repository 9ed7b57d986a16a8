"""Fine-tune a GenSSL checkpoint on a GLUE-style task with ``transformers.Trainer``.

The same code serves the offline tasks (``rt-polarity``, ``rt-regression``, ``bbc-news``, ``sms-spam``), real
GLUE (``glue/sst2``, ... when the Hub is reachable) and local GLUE-format files: the task loader returns a
``DatasetDict`` with GLUE's columns and the task's metric name; this module tokenizes, trains, evaluates
every epoch with the offline ``evaluate`` GLUE metric, and writes ``results.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["FinetuneConfig", "run_finetuning"]

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the CLI flags of ``training/finetune_glue.py``)."""

    model: str
    task: str
    output_dir: str
    epochs: float = 3.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # a fraction of the training steps (transformers 5: warmup_steps < 1)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 42
    lora: bool = False
    lora_r: int = 8
    cache_dir: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None  # required with push_to_hub (``user/name`` or ``name``)
    trust_remote_code: bool = False  # run code shipped with the checkpoint (GenSSL checkpoints never need it)
    report_to: str | list[str] = "none"  # Trainer's integrations: "tensorboard", "wandb", "all", ...


def _sentence_columns(dataset) -> tuple[str, str | None]:
    columns = dataset.column_names
    if "sentence" in columns:
        return "sentence", None
    for a, b in (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                 ("premise", "hypothesis")):
        if a in columns and b in columns:
            return a, b
    raise ValueError(f"The dataset has no text columns in GLUE's format (sentence, or sentence1/sentence2); "
                     f"it has {columns}.")


def _majority_baseline(train_labels, eval_labels, is_regression: bool) -> float | None:
    if is_regression:
        return None
    majority = Counter(train_labels).most_common(1)[0][0]
    return float(np.mean(np.asarray(eval_labels) == majority))


def run_finetuning(config: FinetuneConfig | dict) -> dict:
    """Fine-tune, evaluate every epoch, save the model + tokenizer + card, write ``results.json``; return the
    results."""
    from transformers import set_seed

    from hf_genssl.data.tasks import task_info

    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig(**config)
    if cfg.push_to_hub:
        from hf_genssl.hub import check_hub_model_id

        check_hub_model_id(cfg.push_to_hub, cfg.hub_model_id)
    set_seed(cfg.seed)
    info = task_info(cfg.task)
    train, evaluation, eval_split = _task_splits(cfg, info)
    model, tokenizer = _model_and_tokenizer(cfg, info)
    trainer = _trainer(cfg, info, model, tokenizer, train, evaluation)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    per_epoch = [dict(log) for log in trainer.state.log_history if "eval_loss" in log]
    final = per_epoch[-1] if per_epoch else trainer.evaluate()
    results = {
        "task": cfg.task, "metric": info.metric, "eval_split": eval_split, "train_examples": len(train),
        "eval_examples": len(evaluation), "final": final, "per_epoch": per_epoch, "train_seconds": seconds,
        "majority_baseline_accuracy": _majority_baseline(list(train["label"]), list(evaluation["label"]),
                                                         info.is_regression),
        "config": asdict(cfg),
    }
    return _finish(cfg, info, model, tokenizer, results)


def _task_splits(cfg: FinetuneConfig, info):
    """``(train, evaluation, name of the evaluation split)``, labels checked before any model loading or training,
    subsampled as the config says."""
    from hf_genssl.data.tasks import check_labels, load_task

    data = load_task(cfg.task, cache_dir=cfg.cache_dir)
    eval_split = "validation" if "validation" in data else "test"
    train, evaluation = data["train"], data[eval_split]
    for split, part in (("train", train), (eval_split, evaluation)):
        check_labels(part, split, f"task {cfg.task}", num_labels=None if info.is_regression else info.num_labels)
    if cfg.max_train_samples:
        train = train.shuffle(seed=cfg.seed).select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples:
        evaluation = evaluation.shuffle(seed=cfg.seed).select(range(min(cfg.max_eval_samples, len(evaluation))))
    return train, evaluation, eval_split


def _model_and_tokenizer(cfg: FinetuneConfig, info):
    """The checkpoint with a new sequence-classification head for the task (LoRA adapters if asked), its
    tokenizer. No code from the checkpoint runs unless ``trust_remote_code``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_genssl.hub import from_pretrained

    model_path = Path(cfg.model)
    if model_path.exists() and not any(model_path.glob("*.safetensors")) and not any(model_path.glob("*.bin")):
        raise ValueError(f"{cfg.model} has no model weights (*.safetensors); point --model at a saved checkpoint.")
    problem_type = "regression" if info.is_regression else "single_label_classification"
    label_maps = {}
    if info.label_names:
        label_maps = {"id2label": dict(enumerate(info.label_names)),
                      "label2id": {name: i for i, name in enumerate(info.label_names)}}
    model = from_pretrained(AutoModelForSequenceClassification, cfg.model, trust_remote_code=cfg.trust_remote_code,
                            num_labels=info.num_labels, problem_type=problem_type, **label_maps)
    tokenizer = from_pretrained(AutoTokenizer, cfg.model, trust_remote_code=cfg.trust_remote_code)
    if cfg.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        from hf_genssl.models.modeling_genssl import PEFT_TARGET_MODULES

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                 target_modules=PEFT_TARGET_MODULES, modules_to_save=["score"]))
    return model, tokenizer


def _trainer(cfg: FinetuneConfig, info, model, tokenizer, train, evaluation):
    """A ``Trainer`` over the tokenized splits that evaluates every epoch with the task's GLUE metric."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_genssl.metrics import compute_glue_metric

    first, second = _sentence_columns(train)
    # One position is kept free for the query row that classifies after the last token.
    max_length = min(cfg.max_length, getattr(model.config, "max_position_embeddings", cfg.max_length + 1) - 1)

    def tokenize(batch):
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        return tokenizer(*texts, truncation=True, max_length=max_length)

    def tokenized(split):
        return split.map(tokenize, batched=True, remove_columns=[c for c in split.column_names if c != "label"])

    def compute_metrics(prediction):
        logits, labels = prediction
        predictions = logits.squeeze(-1) if info.is_regression else logits.argmax(-1)
        return compute_glue_metric(info.metric, predictions=predictions, references=labels)

    args = TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "trainer"), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=2 * cfg.batch_size,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, eval_strategy="epoch", save_strategy="no",
        logging_strategy="epoch", report_to=cfg.report_to, seed=cfg.seed, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    return Trainer(model=model, args=args, train_dataset=tokenized(train), eval_dataset=tokenized(evaluation),
                   processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                   compute_metrics=compute_metrics)


def _finish(cfg: FinetuneConfig, info, model, tokenizer, results: dict) -> dict:
    """Save ``final/`` (LoRA merged) with its card, write ``results.json``, push when asked. A failed push is
    recorded in ``results.json`` (``hub_error``) before it is raised."""
    out = Path(cfg.output_dir)
    if cfg.lora:
        model = model.merge_and_unload()
    final_dir = out / "final"
    model.save_pretrained(final_dir)
    tokenizer.save_pretrained(final_dir)
    results["checkpoint"] = str(final_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    card = _write_card(final_dir, cfg, info, results)
    logger.info("fine-tuned %s on %s: %s", cfg.model, cfg.task,
                {k: v for k, v in results["final"].items() if k.startswith("eval_")})
    if cfg.push_to_hub:
        from hf_genssl.hub import push_finished_run

        pushed = push_finished_run(final_dir, cfg.hub_model_id, card=card)
        results.update({"hub_url": pushed.url} if pushed.error is None else {"hub_error": str(pushed.error)})
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        pushed.raise_error()
    return results


def _write_card(final_dir: Path, cfg: FinetuneConfig, info, results: dict):
    """Write the fine-tuned checkpoint's card; return a function rendering it for a Hub repo id (for the push)."""
    from hf_genssl.model_card import render_model_card, tokenizer_needs_remote_code, write_model_card

    metrics = {key.removeprefix("eval_"): value for key, value in results["final"].items()
               if key.startswith("eval_") and key not in ("eval_runtime", "eval_samples_per_second",
                                                           "eval_steps_per_second")}
    hparams = {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size,
               "max_length": cfg.max_length, "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio,
               "seed": cfg.seed, **({"lora_r": cfg.lora_r} if cfg.lora else {})}
    base = cfg.model
    fields = {
        "repo_id": cfg.hub_model_id or str(final_dir), "model_name": cfg.hub_model_id or final_dir.parent.name,
        "objective": "sequence_classification", "tags": ["text-classification"],
        "objective_description": (f"fine-tuned from `{base}` on `{cfg.task}` with transformers' `Trainer`"
                                  + (" (LoRA adapters, merged into the weights)" if cfg.lora else "")
                                  + "; the pretraining objective is the base checkpoint's."),
        "model_description": f"`{base}` fine-tuned on `{cfg.task}` ({results['train_examples']} training examples).",
        "objective_hparams": hparams, "pipeline_tag": "text-classification", "results_task": "text-classification",
        "results": {cfg.task: metrics}, "results_hardware": "GPU" if _on_gpu() else "CPU",
        "results_data": f"{results['eval_examples']} examples of the {results['eval_split']} split of {cfg.task}",
        "training_data": f"the train split of `{cfg.task}` ({results['train_examples']} examples)",
        **({"base_model": base} if not Path(base).exists() else {}),
    }
    try:
        write_model_card(final_dir, "language_model", fields)
    except (TypeError, ValueError) as error:
        logger.warning("model card not written: %s", error)
        return None
    remote = tokenizer_needs_remote_code(final_dir)
    return lambda repo_id: render_model_card("language_model", **{**fields, "repo_id": repo_id, "model_name": repo_id,
                                                                  "tokenizer_trust_remote_code": remote})


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
