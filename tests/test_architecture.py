"""The rules of the code's layout: no import cycle between sqqueue's modules, and no
module reading another object's private attribute."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "sqqueue"

# A named tuple's own methods start with an underscore so as not to collide with field
# names; they are its public API.
NAMED_TUPLE_API = {"_replace", "_fields", "_asdict", "_make", "_field_defaults"}


def module_name(path: Path) -> str:
    parts = ["sqqueue", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


def imported(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The sqqueue modules ``name`` imports, at load time or inside a function (an import
    put off into a function to dodge a cycle is still a cycle); those under ``if
    TYPE_CHECKING`` only serve the type checker and are left out."""
    package = name if name in known and any(k.startswith(name + ".") for k in known) else ""
    base = (package or name.rsplit(".", 1)[0]).split(".")
    found: set[str] = set()
    checked_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in checked_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - node.level + 1]
                target = ".".join(prefix + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_no_import_cycle() -> None:
    trees = modules()
    known = set(trees)
    graph = {name: imported(name, tree, known) for name, tree in trees.items()}
    # A package's __init__ re-exports its modules: importing a submodule loads it, which
    # is not a cycle of the code itself.
    for name, targets in graph.items():
        graph[name] = {m for m in targets if not name.startswith(m + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def private_reads(tree: ast.Module) -> list[tuple[int, str]]:
    """``something._name`` where ``something`` is not ``self`` or ``cls``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in NAMED_TUPLE_API:
            continue
        owner = node.value
        # other: the second operand of a comparison method, of the class itself
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls", "other"):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


# Reads of private attributes that stay, each with why (none today).
ALLOWED: set[str] = set()


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_private_attribute_of_another_object(name: str) -> None:
    tree = modules()[name]
    reads = [(line, text) for line, text in private_reads(tree) if text not in ALLOWED]
    assert reads == []


def test_objects_every_call_reads_keep_the_fast_attribute_layout(tmp_path: Path) -> None:
    """CPython keeps an object's attributes in a layout shared by its class, which every
    attribute read uses at full speed, for up to 29 names; a 30th moves them to a dict of
    the object's own and slows every read (on the SQLite backend, 2.5% of an enqueue:
    bench/profile-notes.md). The objects each call goes through stay within it."""
    import sqqueue

    queue = sqqueue.SQLiteQueue(str(tmp_path / "q.db"))
    try:
        queue.enqueue("x").unwrap()
        parts = queue.parts
        hot = [queue, parts, parts.backend, parts.upkeep, parts.signal, parts.commits]
        crowded = {type(o).__name__: len(vars(o)) for o in hot if len(vars(o)) > 29}
        assert not crowded, f"more than 29 attributes: {crowded}"
        # Workers hold more than that, every one of them in a slot.
        workers = [sqqueue.Worker(queue, print), sqqueue.AsyncWorker(queue, _handle)]
        unslotted = {type(w).__name__: sorted(vars(w)) for w in workers if vars(w)}
        assert not unslotted, f"attributes outside __slots__: {unslotted}"
    finally:
        queue.close()


async def _handle(message: object) -> None:
    """A coroutine handler (for an AsyncWorker that never runs)."""
