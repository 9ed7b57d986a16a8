"""Deprecated alias: this module moved to :mod:`hf_genssl.models.configuration_genssl` (kept for one release)."""

from ._moved import alias_moved_module

alias_moved_module(__name__)
