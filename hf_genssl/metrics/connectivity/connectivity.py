"""Feature connectivity (the paper's Figure 2 surrogate) as an offline ``evaluate`` module.

``predictions`` are feature vectors, one per held-out sample (for example from
``hf_genssl.connectivity.text_features`` or ``hf_genssl.vision_eval.extract_features``); the result is the mean over
samples of the mean cosine similarity to their ``k`` most similar other samples. The computation lives in
``hf_genssl.connectivity``; this file only adapts it to ``evaluate``.
"""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = "Mean of the top-k pairwise cosine similarities between the features of held-out samples."

_KWARGS_DESCRIPTION = """
Args:
    predictions: feature vectors (lists of floats), one per sample, at least two.
    k: neighbours per sample (default 10).
Returns:
    top_k_similarity, top_1_similarity, mean_similarity, k, num_samples.
Examples:
    >>> from hf_genssl.metrics import load_metric
    >>> connectivity = load_metric("connectivity")
    >>> round(connectivity.compute(predictions=[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], k=1)["top_1_similarity"], 3)
    0.667
"""

_CITATION = """\
@inproceedings{zhang2024look,
  title={Look Ahead or Look Around? A Theoretical Comparison Between Autoregressive and Masked Pretraining},
  author={Zhang, Qi and Du, Tianqi and Huang, Haotian and Wang, Yifei and Wang, Yisen},
  booktitle={ICML}, year={2024}
}
"""


class Connectivity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32"))}),
        )

    def _compute(self, predictions, k=10):
        from hf_genssl.connectivity import top_similarity

        return top_similarity(predictions, k=k)
