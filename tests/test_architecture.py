"""The import contracts see the whole package: no module on disk is invisible to them.

import-linter analyses the graph grimp builds, and grimp skips a folder without ``__init__.py``
silently: a contract over such a folder passes because nothing in it is checked.
"""

from __future__ import annotations

from pathlib import Path

import grimp

import ml_system

ROOT = Path(ml_system.__file__).resolve().parent


def modules_on_disk() -> set[str]:
    out = set()
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.add(".".join(parts))
    return out


def test_every_module_on_disk_is_in_the_import_graph() -> None:
    graph = grimp.build_graph("ml_system", cache_dir=None)
    missing = sorted(modules_on_disk() - set(graph.modules))
    assert not missing, f"invisible to the import contracts (a folder without __init__.py?): {missing}"


def test_every_package_folder_has_an_init() -> None:
    folders = {p.parent for p in ROOT.rglob("*.py")}
    assert not sorted(str(f) for f in folders if not (f / "__init__.py").exists())
