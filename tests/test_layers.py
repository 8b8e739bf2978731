"""The rooms of the package import downwards only: common -> data -> metric -> {judge, indexer} -> app.

Walks every module's imports with ``ast`` (top-level, inside functions and under ``TYPE_CHECKING`` alike) and fails
on an upward edge, an edge between the sibling rooms judge and indexer, a relative import that leaves a room, or a
room reaching into another room's private modules (``lookalike.metric._base``): a room uses another's public names
(its ``__init__`` and modules without a leading underscore) only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Room -> its level; a room may import only rooms of a lower level (and itself).
LEVELS = {"common": 0, "data": 1, "metric": 2, "judge": 3, "indexer": 3, "app": 4}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in a file; relative imports are resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(REPO).with_suffix("")
    package = ["lookalike", *rel.parts[:-1]]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                out.append((node.lineno, node.module))
    return out


def room_edges() -> list[tuple[str, str, str]]:
    """(from room, to room, "file:line") for every import of one room by another."""
    return [(src, dst, where) for src, dst, where, _ in _edges()]


def _edges() -> list[tuple[str, str, str, str]]:
    """(from room, to room, "file:line", imported module) for every import of one room by another."""
    edges = []
    for room in LEVELS:
        for path in sorted((REPO / room).rglob("*.py")):
            for line, mod in _imports(path):
                parts = mod.split(".")
                if parts[0] != "lookalike" or len(parts) < 2:
                    continue
                if parts[1] not in LEVELS:
                    raise AssertionError(f"{path.relative_to(REPO)}:{line} imports unknown room {mod!r}")
                if parts[1] != room:
                    edges.append((room, parts[1], f"{path.relative_to(REPO)}:{line}", mod))
    return edges


def test_rooms_import_downwards_only():
    bad = [f"{where}: {src} imports {dst}" for src, dst, where in room_edges() if LEVELS[dst] >= LEVELS[src]]
    assert not bad, "upward or sideways imports between rooms:\n" + "\n".join(bad)


def test_rooms_import_public_names_only():
    bad = [f"{where}: {src} imports {mod}" for src, _, where, mod in _edges()
           if any(part.startswith("_") for part in mod.split(".")[2:])]
    assert not bad, "imports of another room's private modules (use its public names):\n" + "\n".join(bad)


def test_room_graph_has_no_cycle():
    graph: dict[str, set[str]] = {r: set() for r in LEVELS}
    for src, dst, _ in room_edges():
        graph[src].add(dst)
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle between rooms: " + " -> ".join([*trail, n, m]))
            if m not in state:
                visit(m, [*trail, n])
        state[n] = 2

    for n in LEVELS:
        if n not in state:
            visit(n, [])


def test_walker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself can fail: an upward import hidden in a function is reported."""
    fake = tmp_path / "data"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from lookalike.app import cli\n    from . import images\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = _imports(fake / "bad.py")
    assert (2, "lookalike.app") in found and (3, "lookalike.data") in found
    for room in LEVELS:
        (tmp_path / room).mkdir(exist_ok=True)
    with pytest.raises(AssertionError, match="data imports app"):
        test_rooms_import_downwards_only()


def test_private_module_check_can_fail(tmp_path, monkeypatch):
    """The checker itself can fail: judge or app reaching into ``lookalike.metric._base`` is reported."""
    for room in LEVELS:
        (tmp_path / room).mkdir()
    (tmp_path / "judge" / "bad.py").write_text("from lookalike.metric._base import Metric\nimport lookalike.metric\n")
    (tmp_path / "app" / "worse.py").write_text("def f():\n    from lookalike.metric._precision import dtype_name\n")
    (tmp_path / "app" / "fine.py").write_text("from lookalike.metric.weights import weights_paths\n"
                                              "from lookalike.app._own import x\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    with pytest.raises(AssertionError) as e:
        test_rooms_import_public_names_only()
    msg = str(e.value)
    assert "judge/bad.py:1: judge imports lookalike.metric._base" in msg
    assert "app/worse.py:2: app imports lookalike.metric._precision" in msg
    assert "fine.py" not in msg
