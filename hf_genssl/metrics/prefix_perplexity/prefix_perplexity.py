"""Prefix perplexity (the paper's Eq. 2) as an offline ``evaluate`` module.

Same interface as the Hub's ``perplexity`` metric (``predictions`` are texts, ``model_id`` a checkpoint), for
every GenSSL objective: the query stream scores (semi-)AR checkpoints in one pass per window, and masked
checkpoints are scored from the prefix followed by ``[MASK]`` tokens, up to the window end (the default: the
count of masks tells the model where the window ends) or exactly ``trailing_masks`` of them. The computation
lives in ``hf_genssl.perplexity`` (its module docstring says what each variant tells the model); this file only
adapts it to ``evaluate``.
"""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = """\
exp(mean_t -log p(x_t | x_<t)) over held-out texts, for autoregressive, semi-autoregressive and masked GenSSL
checkpoints alike, with a breakdown by prefix length.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: texts to score.
    model_id: a GenSSL checkpoint directory or Hub id (loaded through hf_genssl's registered classes).
    window: text tokens per window (default: the model's positions minus one).
    stride: how far the window moves (default: window).
    batch_size: rows per forward pass.
    bucket_size: width of the prefix-length buckets.
    trust_remote_code: run code shipped with the checkpoint (default False; GenSSL checkpoints never need it).
    trailing_masks: masked checkpoints only: None = [MASK] up to the window end, H = exactly H masks after the prefix.
Returns:
    perplexity, mean_nll, tokens_scored, windows, window, stride, method, by_prefix_length, trailing_masks.
Examples:
    >>> from hf_genssl.metrics import load_metric
    >>> ppl = load_metric("prefix_perplexity")
    >>> ppl.compute(predictions=["some held-out text"], model_id="path/to/checkpoint")  # doctest: +SKIP
"""

_CITATION = """\
@inproceedings{zhang2024look,
  title={Look Ahead or Look Around? A Theoretical Comparison Between Autoregressive and Masked Pretraining},
  author={Zhang, Qi and Du, Tianqi and Huang, Haotian and Wang, Yifei and Wang, Yisen},
  booktitle={ICML}, year={2024}
}
"""


class PrefixPerplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id, window=None, stride=None, batch_size=16, bucket_size=8,
                 trust_remote_code=False, trailing_masks=None):
        from hf_genssl.perplexity import prefix_perplexity

        return prefix_perplexity(
            model_id, list(predictions), window=window, stride=stride, batch_size=batch_size, bucket_size=bucket_size,
            trust_remote_code=trust_remote_code, trailing_masks=trailing_masks,
        ).to_dict()
