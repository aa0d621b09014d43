"""Every `pixeljit.…` name the README and docs/ write exists: a reader copying one gets the
object, not an AttributeError (`pixeljit.SamplerConfig` was named and missing)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import pixeljit

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `pixeljit.a.b.C`, not inside a path or a URL (…/pixeljit.git, pixeljit.egg-info)
DOTTED = re.compile(r"(?<![\w/.-])pixeljit((?:\.[A-Za-z_]\w*)+)")


def resolve(dotted: str):
    """The object `pixeljit.<dotted>` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), -1, -1):
        try:
            obj = importlib.import_module(".".join(["pixeljit", *parts[:cut]]))
            break
        except ModuleNotFoundError:
            continue
    for name in parts[cut:]:
        obj = getattr(obj, name)
    return obj


def named_in_docs() -> list[tuple[str, str]]:
    found = set()
    for doc in DOCS:
        for match in DOTTED.finditer(doc.read_text(encoding="utf-8")):
            found.add((doc.name, match.group(1).lstrip(".")))
    return sorted(found)


def test_the_docs_name_something():
    names = {name for _, name in named_in_docs()}
    assert {"create_model", "load_trained", "sample", "train", "SamplerConfig"} <= names


@pytest.mark.parametrize(("doc", "dotted"), named_in_docs())
def test_each_documented_name_exists(doc, dotted):
    assert resolve(dotted) is not None, f"{doc} names pixeljit.{dotted}"


@pytest.mark.parametrize("name", pixeljit.__all__)
def test_each_top_level_name_imports(name):
    assert getattr(pixeljit, name).__name__ == name
