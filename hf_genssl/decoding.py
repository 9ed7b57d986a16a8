"""Deprecated alias: this module moved to :mod:`hf_genssl.models.decoding` (kept for one release)."""

import sys
import warnings

from .models import decoding as _moved

warnings.warn(
    "hf_genssl.decoding moved to hf_genssl.models.decoding; the old import path will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
