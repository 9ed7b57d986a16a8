"""GenSSL vision Transformer: a ViT with an optional second (query) stream, sharing the language model's attention.

Read top to bottom:

1. ``patchify`` / ``unpatchify``   - pixels <-> per-patch vectors (ViTMAE's layout: ``(p, q, c)`` inside a patch).
2. ``GenSSLViTEmbeddings``         - Conv2d patch embedding, CLS token, mask token, query-stream start, positions.
3. ``GenSSLViTModel``              - the one visibility rule (from ``two_stream_attention``) over CLS + patches.
4. Heads                           - pretraining (two-stream or masked pixel regression), image classification.

What sees what is decided by the caller, as in the language model. With ``group_ids`` (one per patch, raster
order) two streams run in ONE attention call per layer: content patch i sees j iff ``gid[j] <= gid[i]``; the
query row of patch i sees content j iff ``gid[j] < gid[i]``. The CLS token always gets a group id below every
patch, so it is visible to every row and no query row is ever empty (it plays the BOS token's part). Without
``group_ids`` only the content stream runs, with ``config.content_attention`` (raster-causal or bidirectional),
and ``bool_masked_pos`` swaps in a learned mask token (SimMIM style, any number of masked patches per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init  # init helpers that respect `_is_hf_initialized`
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_genssl_vit import GenSSLViTConfig
from .modeling_genssl import _register_peft_target_modules
from .two_stream_attention import GroupVisibility, TwoStreamBlock, gather_rows, run_block_stack

__all__ = [
    "GenSSLViTForImageClassification",
    "GenSSLViTForPreTraining",
    "GenSSLViTForPreTrainingOutput",
    "GenSSLViTModel",
    "GenSSLViTModelOutput",
    "GenSSLViTPreTrainedModel",
    "patchify",
    "unpatchify",
]


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(batch, C, H, W)`` -> ``(batch, num_patches, patch_size**2 * C)``, patches in raster order."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, num_channels: int, grid_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square ``grid_size x grid_size`` grid."""
    b, p, c, g = patches.shape[0], patch_size, num_channels, grid_size
    x = patches.reshape(b, g, g, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)


def _selected_indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, n)`` bool -> the selected indices packed to the left in ascending order ``(batch, k)`` and which of
    them are real ``(batch, k)`` (padding points at unselected indices).

    ``k`` is the largest count in the batch: a data-dependent size, so under ``torch.compile`` it is ``n`` instead
    (static shapes, no graph break); the selected indices and their order are the same.
    """
    counts = selected.sum(1)
    if torch.compiler.is_compiling():
        k = selected.shape[1]
    else:
        k = int(counts.max()) if selected.numel() else 0
    index = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k, device=selected.device)[None, :] < counts[:, None]
    return index, valid


@dataclass
class _Rows:
    """What the block stack runs on: the rows ``[content (n_content); query]``, their visibility rule, and the
    content rows that become the last block's query rows (one stream, outputs at selected patches only)."""

    hidden_states: torch.Tensor
    n_content: int
    mask: GroupVisibility | None
    last_layer_queries_from_content: tuple[torch.Tensor, GroupVisibility | None] | None = None


@dataclass
class GenSSLViTModelOutput(ModelOutput):
    """Output of [`GenSSLViTModel`].

    Args:
        last_hidden_state: ``(batch, 1 + num_patches, hidden)`` content stream after the final LayerNorm; row 0 is
            the CLS token, row ``1 + p`` patch p (raster order). ``None`` when the caller skipped it.
        query_hidden_state: ``(batch, num_patches, hidden)`` query stream after the final LayerNorm; row p
            represents the prediction of patch p. Only when ``group_ids`` are given.
        prediction_hidden_state: ``(batch, k, hidden)``, only with ``prediction_patches``: the final representation
            of each selected patch (query stream with ``group_ids``, content stream without), packed to the left in
            raster order; ``k`` is the most patches selected in any image of the batch (``num_patches`` under
            ``torch.compile``: static shapes).
        prediction_mask: ``(batch, k)`` bool, the real rows of ``prediction_hidden_state`` (the rest is padding).
            ``prediction_hidden_state[prediction_mask]`` lists the selected patches in row-major order.
        hidden_states: ``num_hidden_layers + 1`` tensors, when requested: the content stream entering each block (the
            embeddings first; only the content rows that were computed, when ``prediction_patches`` pruned some),
            then the final features the head reads (``last_hidden_state``, or the query/prediction rows when the
            last block ran those only). All on the gradient path.
        attentions: attention probabilities of each block, when requested: rows ``[content; query]`` stacked against
            the content keys (``(2N x N)``-like with ``group_ids``); slice the rows for each stream's square map.
    """

    last_hidden_state: torch.FloatTensor | None = None
    query_hidden_state: torch.FloatTensor | None = None
    prediction_hidden_state: torch.FloatTensor | None = None
    prediction_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class GenSSLViTForPreTrainingOutput(ModelOutput):
    """Output of [`GenSSLViTForPreTraining`].

    Args:
        loss: mean squared error over the target patches (per-patch normalised targets with ``norm_pix_loss``).
        logits: ``(batch, num_patches, patch_size**2 * num_channels)`` pixel prediction of every patch, in
            :func:`patchify` layout (query stream with ``group_ids``, content stream without); with
            ``only_target_logits=True``: ``(num_targets, patch_size**2 * num_channels)``, the target patches in
            row-major order.
        target_mask: ``(batch, num_patches)`` bool, the patches that entered the loss.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    target_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class GenSSLViTEmbeddings(nn.Module):
    """Patch embedding + learned absolute positions (CLS + patches), and the two learned start vectors.

    * ``mask_token`` replaces the patch embedding at ``bool_masked_pos`` (masked pretraining, one stream);
    * ``query_stream_start`` plus the patch's position starts the query stream: it knows *where* it predicts,
      never *what* is there.

    A head that never uses one of the two (the classifier uses neither) builds the embeddings without it: a parameter
    that never gets a gradient breaks DDP without ``find_unused_parameters`` (``Trainer``'s setting under gradient
    checkpointing).
    """

    def __init__(self, config: GenSSLViTConfig, add_mask_token: bool = True, add_query_stream: bool = True):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(config.hidden_size)) if add_mask_token else None
        self.query_stream_start = nn.Parameter(torch.zeros(config.hidden_size)) if add_query_stream else None
        self.position_embeddings = nn.Parameter(torch.zeros(config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Content stream input ``(batch, 1 + num_patches, hidden)``."""
        patches = self.patch_embeddings(pixel_values.to(self.patch_embeddings.weight.dtype)).flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError(
                    "This head was built without a mask token; bool_masked_pos needs GenSSLViTForPreTraining."
                )
            patches = torch.where(bool_masked_pos[..., None].bool(), self.mask_token.to(patches.dtype), patches)
        cls = self.cls_token.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return self.dropout(torch.cat([cls, patches], dim=1) + self.position_embeddings)

    def query_stream(self, batch_size: int) -> torch.Tensor:
        """Query stream input ``(batch, num_patches, hidden)``: one row per patch, at the patch's position."""
        if self.query_stream_start is None:
            raise ValueError("This head was built without a query stream; group_ids need GenSSLViTForPreTraining.")
        rows = self.query_stream_start + self.position_embeddings[1:]
        return self.dropout(rows.expand(batch_size, -1, -1))


class GenSSLViTPreTrainedModel(PreTrainedModel):
    config_class = GenSSLViTConfig
    config: GenSSLViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["TwoStreamBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False  # arbitrary (2T x T) masks: no flash-attention kernel takes them
    _supports_flex_attn = True  # the rule becomes a BlockMask (GroupVisibility.block_mask)
    _supports_attention_backend = True

    def post_init(self) -> None:
        super().post_init()
        _register_peft_target_modules()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GenSSLViTEmbeddings):
            std = self.config.initializer_range
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.query_stream_start is not None:
                init.trunc_normal_(module.query_stream_start, mean=0.0, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)  # as ViT/SimMIM


class GenSSLViTModel(GenSSLViTPreTrainedModel):
    """The bare ViT backbone. Returns the content stream (CLS + patches) and, given ``group_ids``, the query stream.

    ``add_mask_token`` / ``add_query_stream``: see :class:`GenSSLViTEmbeddings` (heads that never use them leave them
    out, and ignore them when loading a checkpoint that has them).
    """

    def __init__(self, config: GenSSLViTConfig, add_mask_token: bool = True, add_query_stream: bool = True):
        super().__init__(config)
        self.embeddings = GenSSLViTEmbeddings(config, add_mask_token=add_mask_token, add_query_stream=add_query_stream)
        self.layers = nn.ModuleList(TwoStreamBlock(config, i) for i in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.embeddings.patch_embeddings

    # -- inputs -> group ids --------------------------------------------------------------------------------------

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        c, s = self.config.num_channels, self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != c:
            found = pixel_values.shape[1] if pixel_values.ndim == 4 else f"a {pixel_values.ndim}-D tensor"
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)} ({found} channels) but this model expects "
                f"(batch, {c}, {s}, {s}) (config.num_channels={c}). Convert the images first (PIL: "
                f"image.convert({'L' if c == 1 else 'RGB'!r})). The image-classification pipeline converts PIL "
                "images to RGB: for a grayscale model pass numpy arrays of shape (H, W, 1) instead."
            )
        if tuple(pixel_values.shape[2:]) != (s, s):
            raise ValueError(
                f"pixel_values has spatial size {tuple(pixel_values.shape[2:])} but this model expects ({s}, {s}) "
                f"(config.image_size={s}, learned positions); resize the images (the image processor's `size`)."
            )

    def _check_patch_tensor(self, name: str, value: torch.Tensor | None, batch_size: int) -> None:
        if value is not None and tuple(value.shape) != (batch_size, self.config.num_patches):
            raise ValueError(
                f"{name} has shape {tuple(value.shape)} but should be (batch, num_patches) = "
                f"{(batch_size, self.config.num_patches)}: one entry per patch in raster order (the image data "
                "collators make it)."
            )

    def _default_group_ids(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Content group ids (CLS + patches) when the caller gives none: the configured attention."""
        n = self.config.num_patches + 1
        if self.config.content_attention == "causal":
            return torch.arange(n, device=device).expand(batch_size, n)
        return torch.zeros(batch_size, n, dtype=torch.long, device=device)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        group_ids: torch.LongTensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_content_stream: bool = True,
        prediction_patches: torch.BoolTensor | None = None,
        **kwargs,
    ) -> GenSSLViTModelOutput:
        r"""
        Args:
            pixel_values: ``(batch, num_channels, image_size, image_size)``.
            group_ids: ``(batch, num_patches)`` integer order of the patches (raster order). When given, the query
                stream runs: content patch i sees j iff ``group_ids[j] <= group_ids[i]``, query row i sees content
                j iff ``group_ids[j] < group_ids[i]``; the CLS token gets ``min(group_ids) - 1`` (visible to all).
            bool_masked_pos: ``(batch, num_patches)``; True patches are replaced by the learned mask token in the
                content stream (SimMIM style; every image may have its own number of masked patches).
            return_content_stream: ``False`` skips the content stream of the last block when ``group_ids`` are
                given (pretraining reads only the query stream); ``last_hidden_state`` is then ``None``.
            prediction_patches: ``(batch, num_patches)`` bool: compute only what the final representations of these
                patches need, returned packed as ``prediction_hidden_state`` / ``prediction_mask`` (the other
                outputs are then ``None``). With ``group_ids``: query rows only at these patches, and content rows
                only for patches that one of them can see (group below the largest selected group): in MPNet-style
                masked pretraining (visible 0, masked 1) the content stream runs on the visible patches only.
                Without: the last block runs only at these patches. Exact: the selected outputs do not change.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        self._check_pixels(pixel_values)
        for name, value in (("group_ids", group_ids), ("bool_masked_pos", bool_masked_pos),
                            ("prediction_patches", prediction_patches)):
            self._check_patch_tensor(name, value, pixel_values.shape[0])
        content = self.embeddings(pixel_values, bool_masked_pos)
        selection = _selected_indices(prediction_patches.bool()) if prediction_patches is not None else None
        if group_ids is not None:
            rows = self._two_stream_rows(content, group_ids.long(), selection)
        else:
            rows = self._one_stream_rows(content, selection)
        hidden_states, n_content, all_hidden_states, all_attentions = run_block_stack(
            self.layers,
            rows.hidden_states,
            rows.n_content,
            rows.mask,
            last_layer_queries_only=selection is not None or (group_ids is not None and not return_content_stream),
            last_layer_queries_from_content=rows.last_layer_queries_from_content,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return self._split_streams(self.layernorm(hidden_states), n_content, group_ids is not None, selection,
                                   all_hidden_states, all_attentions)

    @staticmethod
    def _split_streams(
        rows: torch.Tensor,
        n_content: int,
        two_streams: bool,
        selection: tuple[torch.Tensor, torch.Tensor] | None,
        all_hidden_states: tuple | None,
        all_attentions: tuple | None,
    ) -> GenSSLViTModelOutput:
        """The final (normalised) rows split into content and query (or selected-patch) rows; ``hidden_states`` gets
        its last entry, what the head reads."""
        content_out = rows[:, :n_content] if n_content else None
        query_out = rows[:, n_content:] if (two_streams or selection is not None) else None
        if all_hidden_states is not None:
            all_hidden_states += (content_out if content_out is not None else query_out,)
        return GenSSLViTModelOutput(
            last_hidden_state=content_out,
            query_hidden_state=query_out if selection is None else None,
            prediction_hidden_state=query_out if selection is not None else None,
            prediction_mask=selection[1] if selection is not None else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )

    def _two_stream_rows(
        self, content: torch.Tensor, patch_gids: torch.Tensor, selection: tuple[torch.Tensor, torch.Tensor] | None
    ) -> _Rows:
        """Rows ``[CLS + patches (content); one query row per patch]`` and their rule; the CLS token gets a group id
        below every patch. With a ``selection`` (index, valid) of patches: query rows only at the selected patches,
        and content rows only for the patches one of them can see (group below the largest selected group)."""
        batch_size = content.shape[0]
        cls_gid = patch_gids.amin(1, keepdim=True) - 1
        query, query_limits = self.embeddings.query_stream(batch_size), patch_gids
        key_padding_mask = None
        if selection is not None:
            index, valid = selection
            query, query_limits = gather_rows(query, index), patch_gids.gather(1, index)
            # Content rows at or above the last selected group are seen by no selected query row: drop them.
            floor = torch.full_like(query_limits, torch.iinfo(torch.long).min)
            last_group = torch.where(valid, query_limits, floor).amax(1, keepdim=True)
            keep_index, keep_mask = _selected_indices(patch_gids < last_group)
            content = torch.cat([content[:, :1], gather_rows(content[:, 1:], keep_index)], dim=1)
            patch_gids = patch_gids.gather(1, keep_index)
            # Padding rows point at patches at or above the last selected group, which the group rule already
            # hides from every kept row; the padding mask says so explicitly, so that correctness does not rest
            # on where _selected_indices lets the padding point (removing it changes no output today).
            key_padding_mask = torch.cat([keep_mask.new_ones(batch_size, 1), keep_mask], dim=1)
        content_gids = torch.cat([cls_gid, patch_gids], dim=1)
        mask = GroupVisibility(torch.cat([content_gids + 1, query_limits], dim=1), content_gids, key_padding_mask)
        return _Rows(torch.cat([content, query], dim=1), content.shape[1], mask)

    def _one_stream_rows(
        self, content: torch.Tensor, selection: tuple[torch.Tensor, torch.Tensor] | None
    ) -> _Rows:
        """Content rows (CLS + patches) under the configured attention. With a ``selection`` of patches the last
        block runs only there: their content rows are copied as its query rows."""
        content_gids = self._default_group_ids(content.shape[0], content.device)
        causal = self.config.content_attention == "causal"
        # Bidirectional: every token sees every token; no mask lets SDPA pick its fastest kernel.
        mask = GroupVisibility(content_gids + 1, content_gids) if causal else None
        queries_from_content = None
        if selection is not None:
            index = selection[0]
            row_limits = content_gids[:, 1:].gather(1, index) + 1
            queries_from_content = (index + 1, GroupVisibility(row_limits, content_gids) if causal else None)
        return _Rows(content, content.shape[1], mask, queries_from_content)

    def forward_features(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """timm-style: normalised token features ``(batch, 1 + num_patches, hidden)``, CLS first (content stream)."""
        return self(pixel_values, bool_masked_pos=bool_masked_pos, return_dict=True).last_hidden_state

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, 1 + num_patches, hidden)`` -> ``(batch, hidden)`` by ``config.classifier_pooling``."""
        return features[:, 0] if self.config.classifier_pooling == "cls" else features[:, 1:].mean(1)


# ------------------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------------------


class GenSSLViTForPreTraining(GenSSLViTPreTrainedModel):
    """Pixel-regression pretraining for every objective; the collator's tensors pick the objective.

    * with ``group_ids`` ((semi-)autoregressive over a patch order, or MPNet-style masked: visible 0, hidden 1):
      ``logits[:, p]`` is the query stream's prediction of patch p from the content of earlier groups. Targets:
      every patch whose group is above the image's smallest group (the first group has only the CLS token
      before it, so predicting it would only learn the mean patch);
    * without (``bool_masked_pos``, SimMIM style): ``logits[:, p]`` is the content stream's output at p; targets:
      the masked patches.

    ``labels`` (``(batch, num_patches)``, nonzero/True = target) overrides the default targets. The loss is the
    mean squared error over target patches, each patch normalised by its own mean and std with
    ``config.norm_pix_loss`` (as ViTMAE). The head is one linear map per patch (SimMIM's 1x1-conv decoder).

    ``only_target_logits=True`` skips all work no target needs: query rows of non-targets, content rows no target
    can see (MPNet-style masked: the content stream runs on visible patches only, as MAE's encoder), and in the
    masked (``bool_masked_pos``) path the last block's rows at visible patches.
    """

    def __init__(self, config: GenSSLViTConfig):
        super().__init__(config)
        self.vit = GenSSLViTModel(config)
        self.decoder = nn.Linear(config.hidden_size, config.patch_size**2 * config.num_channels)
        self.post_init()

    def target_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-patch regression targets ``(batch, num_patches, p*p*C)`` (normalised per patch with
        ``norm_pix_loss``)."""
        target = patchify(pixel_values, self.config.patch_size)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        group_ids: torch.LongTensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        labels: torch.Tensor | None = None,
        only_target_logits: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> GenSSLViTForPreTrainingOutput:
        r"""
        Args:
            only_target_logits: compute only what the targets need (see ``prediction_patches`` of
                [`GenSSLViTModel`]) and return ``logits`` of shape ``(num_targets, p*p*C)``, the target patches in
                row-major order (``logits_full[target_mask]``). Same loss; what the training loop uses. Under
                ``torch.compile`` the logits are ``(batch, num_patches, p*p*C)`` regardless (the number of targets
                is data-dependent: static shapes), and the loss is the same masked mean (0 without targets).
        """
        targets = self._targets(pixel_values.shape[0], group_ids, bool_masked_pos, labels)
        if only_target_logits and targets is None:
            raise ValueError("only_target_logits=True needs targets: pass group_ids, bool_masked_pos or labels.")
        at_targets_only = only_target_logits and not torch.compiler.is_compiling()
        outputs = self.vit(
            pixel_values,
            group_ids=group_ids,
            bool_masked_pos=bool_masked_pos,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_content_stream=False,
            prediction_patches=targets if at_targets_only and bool(targets.any()) else None,
            **kwargs,
        )
        if outputs.prediction_hidden_state is not None:
            logits = self.decoder(outputs.prediction_hidden_state[outputs.prediction_mask])
        elif at_targets_only:  # no target anywhere in the batch
            logits = self.decoder.weight.new_zeros(0, self.decoder.out_features)
        else:
            hidden = outputs.query_hidden_state if group_ids is not None else outputs.last_hidden_state[:, 1:]
            logits = self.decoder(hidden)
        # Each step uses the query-stream vector or the mask token, not both: zero times the unused one(s) keeps every
        # parameter in the graph (DDP without find_unused_parameters, Trainer's setting under gradient checkpointing).
        embeddings = self.vit.embeddings
        unused = [p for p, used in ((embeddings.query_stream_start, group_ids is not None),
                                    (embeddings.mask_token, bool_masked_pos is not None)) if not used]
        logits = logits + sum(0.0 * p.sum() for p in unused)
        return GenSSLViTForPreTrainingOutput(
            loss=self._loss(logits, pixel_values, targets, at_targets_only),
            logits=logits,
            target_mask=targets,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _targets(
        self,
        batch_size: int,
        group_ids: torch.Tensor | None,
        bool_masked_pos: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The patches the loss reads ``(batch, num_patches)``: ``labels`` when given; else with group ids every
        patch above the image's first group, without them the masked patches."""
        targets = None
        if group_ids is not None:
            self.vit._check_patch_tensor("group_ids", group_ids, batch_size)
            targets = group_ids > group_ids.amin(1, keepdim=True)
        elif bool_masked_pos is not None:
            targets = bool_masked_pos.bool()
        if labels is not None:
            self.vit._check_patch_tensor("labels", labels, batch_size)
            targets = labels.bool()
        return targets

    def _loss(
        self, logits: torch.Tensor, pixel_values: torch.Tensor, targets: torch.Tensor | None, at_targets_only: bool
    ) -> torch.Tensor | None:
        """Mean squared error over the target patches (``logits`` are those rows already when ``at_targets_only``);
        ``None`` when there is no target."""
        if targets is None:
            return None
        target_pixels = self.target_pixels(pixel_values)
        if torch.compiler.is_compiling():  # a masked mean: no data-dependent shape or branch (0 without targets)
            per_patch = ((logits.float() - target_pixels.float()) ** 2).mean(-1)
            return (per_patch * targets).sum() / targets.sum().clamp(min=1)
        if not bool(targets.any()):
            return None
        predicted = logits if at_targets_only else logits[targets]
        return ((predicted.float() - target_pixels[targets].float()) ** 2).mean()


class GenSSLViTForImageClassification(GenSSLViTPreTrainedModel):
    """Image classification on pooled content-stream features; fine-tuning or linear probing.

    Features: ``config.classifier_pooling`` (``"mean"`` over patch tokens by default, or ``"cls"``). Linear probing:
    call :meth:`freeze_backbone` (gradients only reach the classifier, and the backbone stays in eval mode, so no
    dropout) — e.g. ``model = GenSSLViTForImageClassification.from_pretrained(ckpt, num_labels=10);
    model.freeze_backbone()``. For fine-tuning a (semi-)autoregressively pretrained checkpoint you may also load it
    with ``content_attention="bidirectional"``; the default keeps the attention the checkpoint was trained with.
    """

    _keys_to_ignore_on_load_unexpected = [r"mask_token", r"query_stream_start"]

    def __init__(self, config: GenSSLViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = GenSSLViTModel(config, add_mask_token=False, add_query_stream=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.backbone_frozen = False
        self.post_init()

    def freeze_backbone(self, freeze: bool = True) -> GenSSLViTForImageClassification:
        """Linear probing: stop gradients into the ViT (``freeze=False`` undoes it). Returns ``self``."""
        self.backbone_frozen = freeze
        self.vit.requires_grad_(not freeze)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> GenSSLViTForImageClassification:
        super().train(mode)
        if self.backbone_frozen:
            self.vit.eval()
        return self

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(self.vit.pool(outputs.last_hidden_state)))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# Save the code files with every checkpoint (see `GenSSLViTConfig.auto_map` for the full map).
GenSSLViTModel.register_for_auto_class("AutoModel")
GenSSLViTForPreTraining.register_for_auto_class("AutoModelForPreTraining")
GenSSLViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
