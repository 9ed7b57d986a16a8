"""hf_genssl: diversity-enhanced semi-autoregressive and variable-length masked pretraining as transformers models.

Importing the package registers the models with the transformers Auto classes, so
``AutoModelForCausalLM.from_pretrained(path)`` works in-library; saved checkpoints also carry their code
files and a complete ``auto_map`` for ``trust_remote_code=True`` loading without this package.

The public names load on first use (PEP 562, as transformers does), and the ``genssl`` command line registers the
models itself, only for the commands that load one: ``genssl --help``, ``--version``, ``theory`` and ``data``
then start without importing torch or transformers.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "GenSSLConfig": "models.configuration_genssl",
    "GenSSLModel": "models.modeling_genssl",
    "GenSSLForPreTraining": "models.modeling_genssl",
    "GenSSLForCausalLM": "models.modeling_genssl",
    "GenSSLForMaskedLM": "models.modeling_genssl",
    "GenSSLForSequenceClassification": "models.modeling_genssl",
    "GenSSLViTConfig": "models.configuration_genssl_vit",
    "GenSSLViTModel": "models.modeling_genssl_vit",
    "GenSSLViTForPreTraining": "models.modeling_genssl_vit",
    "GenSSLViTForImageClassification": "models.modeling_genssl_vit",
    "DataCollatorForSemiAutoregressiveLM": "collators",
    "DataCollatorForVariableLengthMasking": "collators",
    "DataCollatorForSemiAutoregressiveImages": "image_collators",
    "DataCollatorForVariableLengthImageMasking": "image_collators",
    "train_tokenizer": "tokenization",
}

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
    "register_auto_classes",
]

if TYPE_CHECKING:
    from .collators import DataCollatorForSemiAutoregressiveLM, DataCollatorForVariableLengthMasking
    from .image_collators import DataCollatorForSemiAutoregressiveImages, DataCollatorForVariableLengthImageMasking
    from .models.configuration_genssl import GenSSLConfig
    from .models.configuration_genssl_vit import GenSSLViTConfig
    from .models.modeling_genssl import (
        GenSSLForCausalLM,
        GenSSLForMaskedLM,
        GenSSLForPreTraining,
        GenSSLForSequenceClassification,
        GenSSLModel,
    )
    from .models.modeling_genssl_vit import GenSSLViTForImageClassification, GenSSLViTForPreTraining, GenSSLViTModel
    from .tokenization import train_tokenizer


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def register_auto_classes() -> None:
    """Register the configs and models with the transformers Auto classes (idempotent; done at import)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
    )

    from .models.configuration_genssl import GenSSLConfig
    from .models.configuration_genssl_vit import GenSSLViTConfig
    from .models.modeling_genssl import (
        GenSSLForCausalLM,
        GenSSLForMaskedLM,
        GenSSLForPreTraining,
        GenSSLForSequenceClassification,
        GenSSLModel,
    )
    from .models.modeling_genssl_vit import GenSSLViTForImageClassification, GenSSLViTForPreTraining, GenSSLViTModel

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


def _started_as_the_genssl_command() -> bool:
    """Whether this process is the ``genssl`` console script or ``python -m hf_genssl.cli``: then
    :func:`hf_genssl.cli.main` registers the models for the commands that need them.

    The console script is recognised by its content (pip's wrapper imports ``hf_genssl.cli``), not by its name
    alone, so a user's own ``genssl.py`` that imports the package still gets the models registered. Anything
    unrecognised registers: the cost of a wrong guess is a slower start, never a missing registration.
    """
    argv = list(getattr(sys, "orig_argv", ()))
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "hf_genssl.cli":
        return True
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.stem != "genssl":
        return False
    try:
        return b"from hf_genssl.cli import main" in script.read_bytes()[:4096]
    except OSError:
        return False


if not _started_as_the_genssl_command():
    register_auto_classes()
