"""The package layout keeps the remote-code boundary: hf_genssl/models/ is what a checkpoint carries."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_imports

MODELS = Path(__file__).resolve().parents[1] / "hf_genssl" / "models"
REMOTE_CODE = ["configuration_genssl", "configuration_genssl_vit", "modeling_genssl", "modeling_genssl_vit",
               "two_stream_attention", "decoding"]
ALLOWED_TOP_LEVEL = {"torch", "transformers"} | set(sys.stdlib_module_names)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) for every import statement of a file: level 0 = absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_models_folder_is_exactly_the_remote_code_set():
    assert sorted(p.stem for p in MODELS.glob("*.py") if p.stem != "__init__") == sorted(REMOTE_CODE)


@pytest.mark.parametrize("name", REMOTE_CODE)
def test_remote_code_imports_only_siblings_torch_and_transformers(name):
    """transformers copies single-dot sibling imports into a checkpoint and, before running remote code, requires
    every package the file imports outside a try block (``get_imports``): only torch and transformers may be there."""
    path = MODELS / f"{name}.py"
    required = set(get_imports(path)) - set(sys.stdlib_module_names)
    assert required <= {"torch", "transformers"}, f"{name}.py needs {required}"
    for level, module in _imports(path):
        if level == 0:
            assert module.split(".")[0] in ALLOWED_TOP_LEVEL | {"peft"}, f"{name}.py imports {module}"
        else:
            assert level == 1 and module in REMOTE_CODE, f"{name}.py imports {'.' * level}{module}"


def test_boundary_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom ..collators import X\nfrom .modeling_genssl import Y\n"
                   "def f():\n    from peft import LoraConfig\n")
    found = _imports(bad)
    assert (0, "numpy") in found and (2, "collators") in found and (1, "modeling_genssl") in found
    assert {"numpy", "peft"} <= set(get_imports(bad))
    assert "numpy" not in ALLOWED_TOP_LEVEL


@pytest.mark.parametrize("name", REMOTE_CODE)
def test_old_import_paths_still_work_with_a_future_warning(name):
    sys.modules.pop(f"hf_genssl.{name}", None)
    with pytest.warns(FutureWarning, match=f"hf_genssl.models.{name}"):
        old = importlib.import_module(f"hf_genssl.{name}")
    assert old is importlib.import_module(f"hf_genssl.models.{name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module(f"hf_genssl.models.{name}")


@pytest.mark.parametrize("name", REMOTE_CODE)
def test_old_import_path_warning_points_at_the_users_import(name):
    """The FutureWarning names the user's line that imports the old path, not the alias module (the six aliases
    share ``hf_genssl._moved.alias_moved_module``, whose stacklevel decides this)."""
    sys.modules.pop(f"hf_genssl.{name}", None)
    code = compile(f"import hf_genssl.{name}\n", "users_script.py", "exec")
    with pytest.warns(FutureWarning, match=f"hf_genssl.{name} moved to hf_genssl.models.{name}") as record:
        exec(code, {})  # noqa: S102 - an import statement in a file of the user's
    assert [w.filename for w in record if issubclass(w.category, FutureWarning)] == ["users_script.py"]
