"""The package's import graph (read with ``ast``, nothing imported) has no cycle, and its modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package folder of each top-level hwsearch package (``hwsearch.envs`` lives in ``envs/``)
FOLDERS = {"hwsearch": ROOT / "hwsearch", "hwsearch.envs": ROOT / "envs"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The hwsearch modules ``name`` imports, at module level or inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t in known:
                found.add(t)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = _graph()
    assert "hwsearch.job" in graph["hwsearch.cli_search"]  # an import inside a function counts
    assert "hwsearch.records" in graph["hwsearch.evaluate"]


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_hwsearch() -> None:
    """Counting imports inside functions too: a lazy import that closes a loop is still a layering mistake."""
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("module", "lower"),
    [
        ("hwsearch.report", "hwsearch.workflow"),
        ("hwsearch.evaluate", "hwsearch.envs"),
        ("hwsearch.cli_export", "hwsearch.cli"),
    ],
)
def test_shared_types_live_below_their_users(module: str, lower: str) -> None:
    assert lower not in _graph()[module]


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > 600} == {}
    assert {n: s for n, s in sizes.items() if n.startswith("hwsearch.cli") and s >= 350} == {}
