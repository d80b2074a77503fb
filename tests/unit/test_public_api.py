"""The public API is exactly what docs/api.md documents."""

from __future__ import annotations

import re
from pathlib import Path

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
