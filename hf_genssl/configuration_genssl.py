"""Deprecated alias: this module moved to :mod:`hf_genssl.models.configuration_genssl` (kept for one release)."""

import sys
import warnings

from .models import configuration_genssl as _moved

warnings.warn(
    "hf_genssl.configuration_genssl moved to hf_genssl.models.configuration_genssl; "
    "the old import path will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
