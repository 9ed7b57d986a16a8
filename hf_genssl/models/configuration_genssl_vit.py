"""Configuration of the GenSSL vision Transformer (``model_type = "genssl_vit"``).

The same idea as the language model's config: one ViT serves every objective, and the data collator (group ids
or a patch mask) picks the objective. Field names are transformers' ``ViTConfig`` names, so a reader who knows
ViT knows this config; ``norm_pix_loss`` is ViTMAE's; ``content_attention`` is the text config's.
"""

from __future__ import annotations

from typing import Literal

from transformers import PretrainedConfig

from .configuration_genssl import check_config_keys

__all__ = ["GENSSL_VIT_AUTO_MAP", "GenSSLViTConfig"]

# Written into every saved config so that each Auto class finds its code with trust_remote_code=True in a process
# that cannot import hf_genssl (save_pretrained alone records only the class being saved).
GENSSL_VIT_AUTO_MAP = {
    "AutoConfig": "configuration_genssl_vit.GenSSLViTConfig",
    "AutoModel": "modeling_genssl_vit.GenSSLViTModel",
    "AutoModelForPreTraining": "modeling_genssl_vit.GenSSLViTForPreTraining",
    "AutoModelForImageClassification": "modeling_genssl_vit.GenSSLViTForImageClassification",
}


class GenSSLViTConfig(PretrainedConfig):
    r"""Configuration for [`GenSSLViTModel`] and its heads.

    Args:
        image_size: Side of the (square) input image in pixels.
        patch_size: Side of a square patch in pixels; must divide ``image_size``.
        num_channels: Channels of ``pixel_values`` (1 for grayscale, 3 for RGB).
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size / hidden_act: as in ``ViTConfig``.
        hidden_dropout_prob / attention_probs_dropout_prob / layer_norm_eps / initializer_range: as in ``ViTConfig``.
        norm_pix_loss: Regress each target patch normalised by its own mean and std (ViTMAE's option). Better
            features, but the predictions are no longer pixels: reconstruction needs ``False``.
        content_attention: How the content stream attends when no ``group_ids`` are given (fine-tuning, features,
            masked pretraining): ``"causal"`` = raster order over patches with the CLS token first (CLS sees only
            itself, patch i sees CLS and patches <= i), ``"bidirectional"`` = every token sees every token. Use
            ``"bidirectional"`` for masked (``bool_masked_pos``) pretraining.
        classifier_pooling: Features of [`GenSSLViTForImageClassification`]: ``"mean"`` over patch tokens (default;
            the CLS token of a causal model sees nothing but itself, so its features are constant) or ``"cls"``.
        classifier_dropout: Dropout before the classification head (default ``hidden_dropout_prob``).
    """

    model_type = "genssl_vit"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        norm_pix_loss: bool = False,
        content_attention: Literal["causal", "bidirectional"] = "causal",
        classifier_pooling: Literal["mean", "cls"] = "mean",
        classifier_dropout: float | None = None,
        **kwargs,
    ):
        check_config_keys(type(self), kwargs)
        if image_size % patch_size != 0:
            raise ValueError(
                f"image_size ({image_size}) must be divisible by patch_size ({patch_size}); pick a patch_size that "
                f"divides it (e.g. {[p for p in range(2, min(image_size, 32) + 1) if image_size % p == 0]}) or "
                "resize the images."
            )
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads}); "
                "change one of them."
            )
        if content_attention not in ("causal", "bidirectional"):
            raise ValueError(f"content_attention must be 'causal' or 'bidirectional', got {content_attention!r}.")
        if classifier_pooling not in ("mean", "cls"):
            raise ValueError(f"classifier_pooling must be 'mean' or 'cls', got {classifier_pooling!r}.")
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.norm_pix_loss = norm_pix_loss
        self.content_attention = content_attention
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
        kwargs["auto_map"] = {**GENSSL_VIT_AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


GenSSLViTConfig.register_for_auto_class()
