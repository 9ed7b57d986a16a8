"""transformers' own common model tests (``ModelTesterMixin``, ``ConfigTester``) run against GenSSL's classes.

The two test files come from the sdist of the installed transformers version (see ``tests/transformers_common.py``);
the testers below are modelled on transformers' ``tests/models/gpt2`` and ``tests/models/vit``. Three testers: the
language model with a causal content stream, the same with a bidirectional one (masked checkpoints), and the ViT.

Overrides (a common test that cannot apply to a two-stream model), each with its reason:

* ``test_attention_outputs`` (causal tester): the attention maps are ``(2T x T)`` (content rows stacked on query
  rows) for the heads that run the query stream; the test expects ``(T x T)``. ``test_two_stream_attention_maps``
  below checks the documented split into the two square maps instead.
* ``test_generation_tester_mixin_inheritance`` (causal tester): ``GenerationTesterMixin`` is not in transformers'
  sdist; generation is tested in ``tests/test_decoding.py``.
* ``test_model_rope_scaling_from_config_*`` (text testers): run unchanged, except that the *unscaled* model the test
  compares against may take its input of 1.5 x ``max_position_embeddings``: GenSSL refuses positions past
  ``config.max_sequence_length`` (an error instead of RoPE extrapolated beyond what it was trained for, see
  ``test_generate_past_the_position_limit_is_the_forward_error``), while Llama, which the test is written for, has no
  limit. The scaled models keep their real limit (``factor`` x the length: the input fits).
"""

from __future__ import annotations

import unittest
from unittest import mock

import pytest
import torch
from transformers.models.auto import modeling_auto

from hf_genssl import (
    GenSSLConfig,
    GenSSLForCausalLM,
    GenSSLForMaskedLM,
    GenSSLForPreTraining,
    GenSSLForSequenceClassification,
    GenSSLModel,
    GenSSLViTConfig,
    GenSSLViTForImageClassification,
    GenSSLViTForPreTraining,
    GenSSLViTModel,
)

from .transformers_common import import_common_tests

try:
    modeling_common, configuration_common = import_common_tests()
except Exception as error:  # no registry reachable and nothing cached: nothing to run, said clearly
    pytest.skip(f"transformers' common tests unavailable: {error}", allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ids_tensor, floats_tensor = modeling_common.ids_tensor, modeling_common.floats_tensor

# transformers' mixin decides which inputs (labels) a class gets from its own model-type -> class-name tables; GenSSL
# registers with the Auto classes at runtime, so the tables get its entries for the duration of each test class.
MAPPING_ENTRIES = {
    "MODEL_MAPPING_NAMES": {"genssl": "GenSSLModel", "genssl_vit": "GenSSLViTModel"},
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES": {"genssl": "GenSSLForPreTraining", "genssl_vit": "GenSSLViTForPreTraining"},
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": {"genssl": "GenSSLForCausalLM"},
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": {"genssl": "GenSSLForMaskedLM"},
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": {"genssl": "GenSSLForSequenceClassification"},
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": {"genssl_vit": "GenSSLViTForImageClassification"},
}


class _RegisteredInMappings:
    """Adds GenSSL to transformers' model-name tables while the test class runs (and removes it afterwards)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._patches = [mock.patch.dict(getattr(modeling_auto, name), entries)
                        for name, entries in MAPPING_ENTRIES.items()]
        for patch in cls._patches:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in cls._patches:
            patch.stop()
        super().tearDownClass()


class GenSSLModelTester:
    """Tiny text configs and inputs (transformers' GPT-2 tester, minus what GenSSL has no use for)."""

    def __init__(self, parent, content_attention="causal", batch_size=3, seq_length=7, vocab_size=99,
                 hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                 max_position_embeddings=32, num_labels=3, is_training=True):
        self.parent = parent
        self.content_attention = content_attention
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.num_labels = num_labels
        self.is_training = is_training

    def get_config(self) -> GenSSLConfig:
        return GenSSLConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            content_attention=self.content_attention,
            num_labels=self.num_labels,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            mask_token_id=4,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :2] = 0  # one left-padded row, so padding is exercised
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.filterwarnings("ignore::UserWarning")
class GenSSLCausalModelTest(_RegisteredInMappings, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (GenSSLModel, GenSSLForPreTraining, GenSSLForCausalLM, GenSSLForSequenceClassification)
    content_attention = "causal"
    test_resize_embeddings = True

    def setUp(self):
        self.model_tester = GenSSLModelTester(self, content_attention=self.content_attention)
        self.config_tester = ConfigTester(self, config_class=GenSSLConfig, hidden_size=16, num_attention_heads=4,
                                          num_hidden_layers=2, vocab_size=99, content_attention=self.content_attention)

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is GenSSLForPreTraining:  # the mixin knows no labels for pretraining heads
            inputs_dict["labels"] = inputs_dict["input_ids"].clone()
        return inputs_dict

    def test_attention_outputs(self):
        self.skipTest("two-stream attention maps are (2T x T); see test_two_stream_attention_maps")

    def test_generation_tester_mixin_inheritance(self):
        self.skipTest("GenerationTesterMixin is not in transformers' sdist; tests/test_decoding.py covers generate")


def _unscaled_rope_without_length_limit(test):
    """``test`` with ``GenSSLConfig.max_sequence_length`` lifted for unscaled RoPE only (see the module docstring)."""
    limit = GenSSLConfig.max_sequence_length

    def lifted(config: GenSSLConfig) -> int:
        return 10**9 if config.rope_parameters["rope_type"] == "default" else limit.fget(config)

    def run(self):
        with mock.patch.object(GenSSLConfig, "max_sequence_length", property(lifted)):
            test(self)

    return run


for _name in [name for name in dir(ModelTesterMixin) if name.startswith("test_model_rope_scaling_from_config_")]:
    setattr(GenSSLCausalModelTest, _name, _unscaled_rope_without_length_limit(getattr(ModelTesterMixin, _name)))


@pytest.mark.filterwarnings("ignore::UserWarning")
class GenSSLBidirectionalModelTest(GenSSLCausalModelTest):
    all_model_classes = (GenSSLModel, GenSSLForPreTraining, GenSSLForMaskedLM, GenSSLForSequenceClassification)
    content_attention = "bidirectional"

    test_attention_outputs = ModelTesterMixin.test_attention_outputs  # one stream only: square maps, run as is
    test_generation_tester_mixin_inheritance = ModelTesterMixin.test_generation_tester_mixin_inheritance


class GenSSLViTModelTester:
    """Tiny ViT configs and inputs (transformers' ViT tester)."""

    def __init__(self, parent, batch_size=3, image_size=8, patch_size=2, num_channels=3, hidden_size=16,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=24, num_labels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_labels = num_labels
        self.is_training = is_training
        self.seq_length = (image_size // patch_size) ** 2 + 1  # patches + CLS, as ViT's tester
        self.mask_length = self.seq_length - 1  # bool_masked_pos covers the patches, not CLS (ViT's tester)
        self.num_masks = self.mask_length // 2

    def get_config(self) -> GenSSLViTConfig:
        return GenSSLViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


@pytest.mark.filterwarnings("ignore::UserWarning")
class GenSSLViTModelTest(_RegisteredInMappings, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (GenSSLViTModel, GenSSLViTForPreTraining, GenSSLViTForImageClassification)
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = GenSSLViTModelTester(self)
        self.config_tester = ConfigTester(self, config_class=GenSSLViTConfig, has_text_modality=False, hidden_size=16,
                                          num_attention_heads=4, num_hidden_layers=2)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):  # as transformers' ViT test: the input embedding is a Conv2d
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Conv2d)
            self.assertIsNone(model.get_output_embeddings())

    def test_model_outputs_equivalence(self):
        # The pretraining output's target_mask is bool (it indexes the logits) and the common test subtracts outputs:
        # that head is compared exactly here, the common test runs on the other classes.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs = self._prepare_for_class(inputs, GenSSLViTForPreTraining, return_labels=True)
        model = GenSSLViTForPreTraining(config).eval()
        with torch.no_grad():
            as_dict, as_tuple = model(**inputs, return_dict=True), model(**inputs, return_dict=False)
        self.assertEqual(len(as_tuple), len(as_dict))
        for expected, found in zip(as_dict.to_tuple(), as_tuple, strict=True):
            self.assertTrue(torch.equal(expected, found))
        with mock.patch.object(self, "all_model_classes", (GenSSLViTModel, GenSSLViTForImageClassification)):
            super().test_model_outputs_equivalence()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is GenSSLViTForPreTraining:  # targets: every other patch masked
            num_patches = (self.model_tester.image_size // self.model_tester.patch_size) ** 2
            mask = torch.zeros(self.model_tester.batch_size, num_patches, dtype=torch.bool)
            mask[:, ::2] = True
            inputs_dict["bool_masked_pos"] = mask
        return inputs_dict


def test_two_stream_attention_maps():
    """The causal LM's (2T x T) maps split as documented: content rows = the one-stream backbone's causal map, query row
    i = the map of the row predicting token i + 1 (sees content <= i); the last block returns the query map alone."""
    config = GenSSLModelTester(None).get_config()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = GenSSLForCausalLM(config).eval()
    input_ids = ids_tensor([2, 7], config.vocab_size)
    T = input_ids.shape[1]
    with torch.no_grad():
        maps = model(input_ids, output_attentions=True, use_cache=False).attentions
        backbone_maps = model.model(input_ids, output_attentions=True, use_cache=False).attentions
    assert [tuple(m.shape) for m in maps] == [(2, 4, 2 * T, T), (2, 4, T, T)]
    content, query = maps[0][:, :, :T], maps[0][:, :, T:]
    torch.testing.assert_close(content, backbone_maps[0])  # independent: the backbone runs the content stream alone
    causal = torch.ones(T, T).tril().bool()
    for square in (content, query, maps[1]):
        assert torch.all(square[..., ~causal] == 0)
        torch.testing.assert_close(square.sum(-1), torch.ones(square.shape[:-1]))
