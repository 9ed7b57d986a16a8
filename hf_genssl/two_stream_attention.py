"""Deprecated alias: this module moved to :mod:`hf_genssl.models.two_stream_attention` (kept for one release)."""

import sys
import warnings

from .models import two_stream_attention as _moved

warnings.warn(
    "hf_genssl.two_stream_attention moved to hf_genssl.models.two_stream_attention; "
    "the old import path will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
