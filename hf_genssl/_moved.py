"""The old import paths of the modules that moved into :mod:`hf_genssl.models` (kept for one release).

``hf_genssl.modeling_genssl`` and its five siblings each call :func:`alias_moved_module` and nothing else, so the
six old paths warn alike and go away together.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_moved_module(old_name: str) -> None:
    """Make the module being imported as ``old_name`` (``hf_genssl.<name>``) be ``hf_genssl.models.<name>``.

    Called from the old module's body: it warns (``FutureWarning``, pointing at the import that used the old path)
    and replaces itself in ``sys.modules``, so both paths give the very same module object.
    """
    package, name = old_name.rsplit(".", 1)
    new_name = f"{package}.models.{name}"
    moved = importlib.import_module(new_name)
    warnings.warn(
        f"{old_name} moved to {new_name}; the old import path will be removed in the next release",
        FutureWarning,
        stacklevel=3,  # this function, the old module's body, then the importer
    )
    sys.modules[old_name] = moved
