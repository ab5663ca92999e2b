"""No module of ``worker/`` imports, directly or around a loop, a module that imports it back
(function-level and ``TYPE_CHECKING`` imports count: a lazy import hides a loop, it does not
break it). The checker itself is tested on small packages written for the test."""

from __future__ import annotations

from pathlib import Path

from tests.import_cycles import cycles, import_graph

REPO = Path(__file__).resolve().parents[2]


def _described(loops: list[list[str]]) -> str:
    return "\n".join(" -> ".join(loop) for loop in loops)


def test_worker_has_no_import_cycle() -> None:
    """``worker/`` has no import cycle; a failure prints every loop found."""
    found = cycles(import_graph(REPO, "worker"))
    assert not found, "import cycles in worker/:\n" + _described(found)


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_a_loop_through_a_lazy_relative_import_is_found(tmp_path: Path) -> None:
    """a -> b at the top, b -> a inside a function (relative import): one loop, printed once."""
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def thing():\n    from .a import other\n    return other\n",
            "pkg/c.py": "import pkg.a\n",
        },
    )
    assert cycles(import_graph(root, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_longer_loop_and_a_module_named_from_its_package(tmp_path: Path) -> None:
    """``from pkg.sub import mod`` is an arrow to the module; a three-step loop is found."""
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/mod.py": "from .. import top\n",
            "pkg/top.py": "import pkg.low\n",
            "pkg/low.py": "from pkg.sub import mod\n",
        },
    )
    assert cycles(import_graph(root, "pkg")) == [["pkg.low", "pkg.sub.mod", "pkg.top", "pkg.low"]]


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    """Arrows one way only, a package importing its own modules, outside imports: no loop."""
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import thing\n",
            "pkg/a.py": "import os\nfrom pkg import b\nfrom typing import TYPE_CHECKING\n",
            "pkg/b.py": "from pkg.c import value\n",
            "pkg/c.py": "import json\nvalue = 1\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == []
