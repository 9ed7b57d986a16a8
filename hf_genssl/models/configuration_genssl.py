"""Configuration of the GenSSL language model (``model_type = "genssl"``).

One decoder-only Transformer serves every objective of the paper: the objective is chosen by the
data collator (group ids, masks, labels), never by the config. The only objective-related setting
here is how the *content stream* attends when no ``group_ids`` are given, i.e. at fine-tuning,
feature-extraction and generation time: ``"causal"`` for checkpoints pretrained (semi-)autoregressively,
``"bidirectional"`` for checkpoints pretrained with a masked objective.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import RopeParameters

__all__ = ["GenSSLConfig", "CONTENT_ATTENTION_MODES", "GENSSL_AUTO_MAP"]

# Keys every saved transformers config may carry besides a model's own arguments.
_COMMON_CONFIG_KEYS = set(PretrainedConfig().to_dict()) | {
    "auto_map", "torch_dtype", "num_labels", "use_cache", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "tokenizer_class", "prefix", "task_specific_params",
    "finetuning_task", "attn_implementation", "is_decoder", "add_cross_attention", "tie_encoder_decoder",
    "cross_attention_hidden_size", "pruned_heads", "torchscript", "use_bfloat16", "tf_legacy_loss",
    # what PretrainedConfig.from_dict passes on to __init__ (AutoConfig.from_pretrained sets name_or_path)
    "name_or_path", "dtype", "output_attentions", "experts_implementation",
    # RoPE keys of configs written before ``rope_parameters`` (transformers folds them into it)
    "rope_theta", "rope_scaling",
}


def check_config_keys(config_class: type[PretrainedConfig], extra_kwargs: dict[str, Any]) -> None:
    """Checks the keyword arguments a config's ``__init__`` did not name (a saved config.json arrives this way too): a
    config of another model type is an error (its weights would load as random ones with a "MISSING" table), keys no
    transformers config has warn (a typo would otherwise silently keep the default)."""
    model_type = extra_kwargs.get("model_type")
    if model_type is not None and model_type != config_class.model_type:
        raise ValueError(
            f"This config is of model_type {model_type!r} but {config_class.__name__} reads "
            f"{config_class.model_type!r} "
            "configs: load it with the matching class (e.g. GenSSLViT* for 'genssl_vit', GenSSL* for 'genssl') or "
            "through the Auto classes."
        )
    unknown = sorted(k for k in extra_kwargs if not k.startswith("_") and k not in _COMMON_CONFIG_KEYS)
    if unknown:
        warnings.warn(
            f"{config_class.__name__} does not know the key(s) {unknown}: they are kept as attributes "
            "but nothing reads "
            "them (a typo, or a key of another model's config?).", UserWarning, stacklevel=3)

CONTENT_ATTENTION_MODES = ("causal", "bidirectional")

# Written into every saved config so that each Auto class finds its code with trust_remote_code=True, in a
# process that cannot import hf_genssl (save_pretrained alone records only the class being saved).
GENSSL_AUTO_MAP = {
    "AutoConfig": "configuration_genssl.GenSSLConfig",
    "AutoModel": "modeling_genssl.GenSSLModel",
    "AutoModelForPreTraining": "modeling_genssl.GenSSLForPreTraining",
    "AutoModelForCausalLM": "modeling_genssl.GenSSLForCausalLM",
    "AutoModelForMaskedLM": "modeling_genssl.GenSSLForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_genssl.GenSSLForSequenceClassification",
}


class GenSSLConfig(PretrainedConfig):
    r"""Configuration for [`GenSSLModel`] and its heads.

    Args:
        vocab_size: Size of the token vocabulary.
        hidden_size: Width of the residual stream.
        num_hidden_layers: Number of Transformer blocks.
        num_attention_heads: Attention heads per block (must divide ``hidden_size`` unless ``head_dim`` is given).
        head_dim: Width of each attention head; defaults to ``hidden_size // num_attention_heads``. The projections
            map ``hidden_size`` to ``num_attention_heads * head_dim`` and back (as Llama's).
        intermediate_size: Width of the MLP; defaults to ``4 * hidden_size``.
        hidden_act: MLP activation (a key of ``transformers.activations.ACT2FN``).
        max_position_embeddings: Longest sequence the model accepts (the learned table's size for absolute
            positions); RoPE scaling in ``rope_parameters`` can extend it (see :attr:`max_sequence_length`).
        position_embedding_type: ``"rope"`` (default) or ``"absolute"`` (learned, GPT-2 style). Why RoPE: the query
            row of token i never sees token i, so unlike GPT it gets no bigram for free from its own residual; it
            must learn to attend to position i - 1. With rotary angles that is one relative pattern; with learned
            absolute embeddings every position learns it separately (``benchmarks/bench_positions.py`` trains
            both side by side, against the unigram loss of a model that ignores its context). Positions
            enter the query stream through the rotation of its rows, so both streams still share one call.
        rope_parameters: transformers' RoPE dictionary (``RopeParameters``), read by the same code as Llama's
            rotary embedding (``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``): ``rope_theta`` (the base,
            default 10000) and ``rope_type``: ``"default"``, or a scaling for longer inputs than pretraining saw with
            its ``factor``: ``"linear"`` (positions divided by ``factor``), ``"dynamic"`` (NTK base growing with
            the input length once it passes ``max_position_embeddings``), ``"yarn"`` (with
            ``original_max_position_embeddings``, default ``max_position_embeddings``), ``"longrope"``,
            ``"llama3"``. Configs written before this field (``rope_theta`` / ``rope_scaling`` at the top level)
            load into it unchanged: same angles, same outputs. Ignored with absolute positions.
        hidden_dropout_prob: Dropout on embeddings, attention output and MLP output.
        attention_probs_dropout_prob: Dropout on attention probabilities.
        layer_norm_eps: Epsilon of the (pre-)LayerNorms.
        initializer_range: Std of the normal initialisation.
        content_attention: How the content stream attends when no ``group_ids`` are given:
            ``"causal"`` (token i sees j <= i) or ``"bidirectional"`` (every real token sees every real token).
        classifier_pooling: How [`GenSSLForSequenceClassification`] pools the sequence: ``"query"`` (a
            query-stream row after the last token; what two-stream pretraining trains), ``"last"`` (content
            stream at the last real token), ``"mean"`` (mean content over real tokens) or ``"auto"``
            (``"query"`` for causal, ``"mean"`` for bidirectional).
        classifier_dropout: Dropout before the classification head (defaults to ``hidden_dropout_prob``).
        tie_word_embeddings: Share the input embedding with the LM head.
        bos_token_id / eos_token_id / pad_token_id / mask_token_id: Special token ids. ``bos_token_id``
            matters: the BOS token is the always-visible first token of every sequence, so no
            attention row of the query stream is ever empty.
    """

    model_type = "genssl"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # "cache": its name from transformers 5.24 on

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        max_position_embeddings: int = 512,
        position_embedding_type: Literal["absolute", "rope"] = "rope",
        rope_parameters: RopeParameters | dict | None = None,
        head_dim: int | None = None,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        content_attention: Literal["causal", "bidirectional"] = "causal",
        classifier_pooling: Literal["auto", "query", "last", "mean"] = "auto",
        classifier_dropout: float | None = None,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        pad_token_id: int | None = 0,
        mask_token_id: int | None = 4,
        **kwargs,
    ):
        check_config_keys(type(self), kwargs)
        if head_dim is None and hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads}); "
                "change one of them, or give head_dim."
            )
        if head_dim is not None and (head_dim <= 0 or (position_embedding_type == "rope" and head_dim % 2)):
            raise ValueError(f"head_dim must be a positive (and, with RoPE, even) number, got {head_dim}.")
        if content_attention not in CONTENT_ATTENTION_MODES:
            raise ValueError(f"content_attention must be one of {CONTENT_ATTENTION_MODES}, got {content_attention!r}.")
        if classifier_pooling not in ("auto", "query", "last", "mean"):
            raise ValueError(
                f"classifier_pooling must be 'auto', 'query', 'last' or 'mean', got {classifier_pooling!r}."
            )
        if position_embedding_type not in ("absolute", "rope"):
            raise ValueError(f"position_embedding_type must be 'absolute' or 'rope', got {position_embedding_type!r}.")
        if position_embedding_type == "absolute" and (rope_parameters or {}).get("rope_type", "default") != "default":
            raise ValueError(
                f"rope_parameters asks for {rope_parameters['rope_type']!r} RoPE scaling but position_embedding_type "
                "is 'absolute' (learned positions, no RoPE): use position_embedding_type='rope' or drop the scaling."
            )
        if (rope_parameters or {}).get("partial_rotary_factor", kwargs.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial_rotary_factor is not supported: GenSSL rotates every dimension of a head.")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.position_embedding_type = position_embedding_type
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        # A copy: transformers fills in defaults (rope_type, rope_theta) in place. A legacy ``rope_theta`` /
        # ``rope_scaling`` in kwargs is folded in by PretrainedConfig (``convert_rope_params_to_dict``), as for Llama.
        self.rope_parameters = dict(rope_parameters) if rope_parameters is not None else None
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.content_attention = content_attention
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        kwargs["auto_map"] = {**GENSSL_AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_rope()

    @property
    def max_sequence_length(self) -> int:
        """Longest sequence (in positions) the model accepts: ``max_position_embeddings``, or with a RoPE scaling the
        length that scaling was set up for, ``factor x original_max_position_embeddings`` (the latter defaulting to
        ``max_position_embeddings``), whichever is larger. Why a limit at all with RoPE: past the length it was
        trained (or scaled) for, RoPE extrapolates badly, and a clear error beats silently worse predictions."""
        rope = self.rope_parameters or {}
        if self.position_embedding_type != "rope" or rope.get("rope_type", "default") == "default":
            return self.max_position_embeddings
        original = rope.get("original_max_position_embeddings") or self.max_position_embeddings
        factor = rope.get("factor") or self.max_position_embeddings / original
        return max(self.max_position_embeddings, int(factor * original))


GenSSLConfig.register_for_auto_class()
