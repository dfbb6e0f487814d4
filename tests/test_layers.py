"""The layout is the architecture: every import inside qsync points down the layers (docs/ARCHITECTURE.md), imports
inside functions included; no import circle; nothing of the runtime imports the test emulator; only the notebook
layer imports ipywidgets or matplotlib; and each module stays small enough to read in one sitting."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qsync"

# Lowest first. A module may import modules of its own package and of lower layers only.
LAYERS: list[set[str]] = [
    {"errors"},
    {"clock", "formatting", "sql", "disk"},
    {"catalog"},
    {"spec"},
    {"embedders"},
    {"sink"},
    {"ledger"},
    {"input"},
    {"engine"},
    {"stages"},
    {"money", "ops"},
    {"app"},
    {"cli", "notebook"},
    {"api", "__main__"},
    {"__init__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
TESTING = "testing"  # beside the layers: may use the runtime, which never uses it
MAX_LINES = 400


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        yield ".".join(("qsync", *relative.parts)).removesuffix(".__init__"), path


def _part(module: str) -> str:
    """The layer part of a qsync module: its top-level package or module under qsync."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of path, at any depth (inside functions and TYPE_CHECKING blocks too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import (qsync imports are absolute)"
            module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from qsync.ledger import batches` imports the module qsync.ledger.batches
                yield node.lineno, f"{module}.{alias.name}"


def _known(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_every_import_points_down_the_layers() -> None:
    modules = {name for name, _ in _modules()}
    wrong = []
    for name, path in _modules():
        own = _part(name)
        for line, imported in _imports(path):
            if not imported.startswith("qsync"):
                continue
            target = _known(imported, modules)
            if target is None:
                continue
            theirs = _part(target)
            if theirs == own or (own == TESTING and theirs != TESTING and RANK[theirs] < RANK["app"]):
                continue
            if theirs == TESTING or RANK[theirs] >= RANK.get(own, -1):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} ({own}) imports {target} ({theirs})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_module_imports_itself_in_a_circle() -> None:
    modules = {name for name, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in _modules():
        targets = {_known(i, modules) for _, i in _imports(path) if i.startswith("qsync")}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".") and t != "qsync"}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("library", ["ipywidgets", "matplotlib", "IPython"])
def test_only_the_notebook_layer_and_the_api_on_top_import_the_notebook_libraries(library: str) -> None:
    users = [
        f"{name}:{line}"
        for name, path in _modules()
        for line, imported in _imports(path)
        if imported.split(".")[0] == library and _part(name) not in ("notebook", "api")
    ]
    assert not users, users


def test_every_module_is_readable_in_one_sitting() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for _, path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_public_api_is_small_and_documented() -> None:
    import qsync

    assert len(qsync.__all__) <= 17  # run, start, resume, status, …, compare: what a notebook calls
    for name in qsync.__all__:
        assert getattr(qsync, name).__doc__, f"qsync.{name} has no docstring"


def test_only_the_ledger_speaks_sql_to_the_checkpoint_file() -> None:
    """Everything read or written in the checkpoint file goes through qsync.ledger; the input layer's SQL is its
    own (normalizing and checking a source, within the planning transaction)."""
    speaking = []
    for name, path in _modules():
        if _part(name) in ("ledger", "input", "sql", "testing"):
            continue
        text = path.read_text()
        for word in ("query_rows(", "query_df(", ".execute(", "FROM jobs", "FROM batches", "FROM manifest"):
            if word in text:
                speaking.append(f"{name}: {word}")
    assert not speaking, speaking
