"""hf_genssl: diversity-enhanced semi-autoregressive and variable-length masked pretraining as transformers models.

Importing the package registers the models with the transformers Auto classes, so
``AutoModelForCausalLM.from_pretrained(path)`` works in-library; saved checkpoints also carry their code
files and a complete ``auto_map`` for ``trust_remote_code=True`` loading without this package.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

from .collators import DataCollatorForSemiAutoregressiveLM, DataCollatorForVariableLengthMasking
from .configuration_genssl import GenSSLConfig
from .configuration_genssl_vit import GenSSLViTConfig
from .image_collators import DataCollatorForSemiAutoregressiveImages, DataCollatorForVariableLengthImageMasking
from .modeling_genssl import (
    GenSSLForCausalLM,
    GenSSLForMaskedLM,
    GenSSLForPreTraining,
    GenSSLForSequenceClassification,
    GenSSLModel,
)
from .modeling_genssl_vit import GenSSLViTForImageClassification, GenSSLViTForPreTraining, GenSSLViTModel
from .tokenization import train_tokenizer

__version__ = "0.1.0"

# Language model
AutoConfig.register("genssl", GenSSLConfig, exist_ok=True)
AutoModel.register(GenSSLConfig, GenSSLModel, exist_ok=True)
AutoModelForPreTraining.register(GenSSLConfig, GenSSLForPreTraining, exist_ok=True)
AutoModelForCausalLM.register(GenSSLConfig, GenSSLForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(GenSSLConfig, GenSSLForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(GenSSLConfig, GenSSLForSequenceClassification, exist_ok=True)
# Vision
AutoConfig.register("genssl_vit", GenSSLViTConfig, exist_ok=True)
AutoModel.register(GenSSLViTConfig, GenSSLViTModel, exist_ok=True)
AutoModelForPreTraining.register(GenSSLViTConfig, GenSSLViTForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(GenSSLViTConfig, GenSSLViTForImageClassification, exist_ok=True)

__all__ = [
    "GenSSLConfig",
    "GenSSLModel",
    "GenSSLForPreTraining",
    "GenSSLForCausalLM",
    "GenSSLForMaskedLM",
    "GenSSLForSequenceClassification",
    "GenSSLViTConfig",
    "GenSSLViTModel",
    "GenSSLViTForPreTraining",
    "GenSSLViTForImageClassification",
    "DataCollatorForSemiAutoregressiveLM",
    "DataCollatorForVariableLengthMasking",
    "DataCollatorForSemiAutoregressiveImages",
    "DataCollatorForVariableLengthImageMasking",
    "train_tokenizer",
]
