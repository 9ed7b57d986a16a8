"""The configs shipped with the package, read with :mod:`importlib.resources` so a wheel install has them too.

* ``tiny.yaml``, ``small.yaml``, ``paper.yaml``, ``vit_tiny.yaml``: pretraining configs (``genssl pretrain --config
  tiny``; every key is a field of :class:`hf_genssl.pretraining.PretrainConfig`);
* ``experiments/reproduce.yaml``: the cells and scales of ``genssl reproduce``.

:func:`resolve_config` decides what a ``--config`` value names: a bare name is a shipped config, anything else a
file. A bare name that is also a file or folder in the working directory is refused rather than guessed (an
``--output-dir tiny`` once made ``--config tiny`` read the run folder instead of the shipped config).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["config_names", "shipped_config", "resolve_config", "read_config_text"]

_SUFFIXES = (".yaml", ".yml")


def _folder() -> Traversable:
    return files(__name__)


def config_names() -> list[str]:
    """The names of the shipped pretraining configs (``["paper", "small", "tiny", "vit_tiny"]``)."""
    return sorted(entry.name.rsplit(".", 1)[0] for entry in _folder().iterdir()
                  if entry.is_file() and entry.name.endswith(".yaml"))


def shipped_config(name: str) -> Traversable:
    """The shipped file ``name`` (``"tiny"`` or ``"experiments/reproduce.yaml"``); readable with ``read_text()``."""
    entry = _folder()
    for part in (name if name.endswith(_SUFFIXES) else f"{name}.yaml").split("/"):
        entry = entry / part
    if not entry.is_file():
        raise FileNotFoundError(f"No shipped config {name!r}; the shipped configs are {config_names()}.")
    return entry


def resolve_config(source: str | Path) -> Traversable:
    """What ``source`` names: a shipped config for a bare name (``"tiny"``), else a file.

    A path must end in ``.yaml`` / ``.yml`` or be an existing file; a bare name that is both a shipped config and a
    file or folder in the working directory is ambiguous and raises ``ValueError`` (rename it, or pass it as
    ``./name``).
    """
    text = str(source)
    is_name = isinstance(source, str) and "/" not in text and "\\" not in text and not text.endswith(_SUFFIXES)
    if is_name and text in config_names():
        if Path(text).exists():
            kind, hint = ("folder", f"Rename ./{text}, run from another directory,") if Path(text).is_dir() else \
                ("file", f"Pass ./{text} to read the file,")
            raise ValueError(f"--config {text!r} is ambiguous: it names a shipped config and the {kind} ./{text} in "
                             f"the working directory. {hint} or pass the shipped config's path: "
                             f"{shipped_config(text)}.")
        return shipped_config(text)
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(f"--config {text!r} is a folder, not a YAML config; give a .yaml file or one of the shipped "
                         f"configs {config_names()}.")
    if text.endswith(_SUFFIXES) or not is_name:
        raise FileNotFoundError(f"No config file {text!r}; give an existing .yaml file or one of the shipped configs "
                                f"{config_names()}.")
    raise FileNotFoundError(f"No config {text!r}: not a shipped config ({config_names()}) and not a file.")


def read_config_text(source: str | Path) -> str:
    """The YAML text of :func:`resolve_config`'s answer."""
    return resolve_config(source).read_text()
