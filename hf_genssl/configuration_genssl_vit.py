"""Deprecated alias: this module moved to :mod:`hf_genssl.models.configuration_genssl_vit` (kept for one release)."""

import sys
import warnings

from .models import configuration_genssl_vit as _moved

warnings.warn(
    "hf_genssl.configuration_genssl_vit moved to hf_genssl.models.configuration_genssl_vit; "
    "the old import path will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
