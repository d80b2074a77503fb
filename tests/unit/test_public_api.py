"""The public API is exactly what docs/api.md documents."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import dispatch

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented_names() -> set[str]:
    """Every name in backticks at the start of a list item (before the em dash)."""
    names: set[str] = set()
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("- "):
            head = line.split(" — ", 1)[0]
            names.update(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", head))
    return names


def test_all_matches_the_documented_api() -> None:
    """Given docs/api.md, when compared with dispatch.__all__, then every documented name
    is exported and every exported name is documented."""
    exported = set(dispatch.__all__)
    documented = documented_names()

    assert exported - documented == set(), "exported but not documented"
    assert documented - exported == set(), "documented but not exported"


def test_every_exported_name_exists() -> None:
    """Given dispatch.__all__, when each name is looked up, then it exists (no stale entry)."""
    missing = [name for name in dispatch.__all__ if not hasattr(dispatch, name)]

    assert missing == []


def test_public_names_survive_importing_every_submodule() -> None:
    """Given every module of the package imported (as the CLI, the dispatcher and the
    Lambda handlers do, in any order), when a public name is looked up, then it is
    still the documented object, never a submodule that took its place (importing a
    submodule sets an attribute of that name on the package)."""
    for module in pkgutil.walk_packages(dispatch.__path__, "dispatch."):
        importlib.import_module(module.name)

    shadowed = [n for n in dispatch.__all__ if isinstance(getattr(dispatch, n), ModuleType)]
    assert shadowed == []
    assert callable(dispatch.status)


def test_the_lazy_import_map_and_the_type_checking_imports_agree() -> None:
    """Given dispatch/__init__.py, when its TYPE_CHECKING imports (what mypy sees) are
    compared with its lazy-import map (what runs), then both name the same module for
    every public name."""
    source = (Path(dispatch.__file__)).read_text(encoding="utf-8")
    block = source.split("if TYPE_CHECKING:", 1)[1].split("__all__", 1)[0]
    seen: dict[str, str] = {}
    for module, names in re.findall(
        r"from (dispatch[\w.]*) import \(?([^)]*?)\)?\n(?=\s*(?:from|$))", block + "\n"
    ):
        for name in re.findall(r"[A-Za-z_]\w*", names):
            seen[name] = module
    lazy = dispatch._HOME

    assert seen == {name: lazy[name] for name in seen}
    assert set(seen) == set(dispatch.__all__) == set(lazy)
