"""The package keeps its shape: no import cycle, no oversized unit, a summary atop each module.

The layer order itself (imports only go down) is import-linter's contract in
``.importlinter``, run by ``make lint``; these tests check what a contract cannot say:

- no two modules of ``dispatch`` and ``dispatch_workers`` import each other, directly or
  round a loop, counting imports inside functions and under ``TYPE_CHECKING`` (STYLE.md:
  "a TYPE_CHECKING import that exists only to hide a cycle is a cycle");
- no class over 400 lines and no function over 60 (STYLE.md: size is a smell);
- every module opens with a docstring whose first line is one sentence, so a newcomer
  (and ``pydoc``) gets a one-line summary of each module.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dispatch", "dispatch_workers")
SOURCE_DIRS = (ROOT / "dispatch", ROOT / "workers")
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60
# They keep the shapes of the moto functions they replace, so a diff against moto's
# own source stays readable when moto is upgraded (docs/local.md).
SIZE_EXEMPT = {
    ROOT / "dispatch" / "local" / "moto_patches.py",
    ROOT / "dispatch" / "local" / "moto_dynamodb_patches.py",
}
# A sentence ends at ". ", "? " or "! " followed by a capital letter: two of
# them on the first line mean the summary is two sentences.
SENTENCE_BREAK = re.compile(r"[.!?]\s+[A-Z]")


def source_files() -> Iterator[Path]:
    """Every Python file of the two packages (the repository's dispatch/ and workers/)."""
    for directory in SOURCE_DIRS:
        yield from sorted(directory.rglob("*.py"))


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = lowlink[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    imported = sorted(graph.find_modules_directly_imported_by(child))
                    work.append((child, iter(imported)))
                elif child in on_stack:
                    lowlink[module] = min(lowlink[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[module])
            if lowlink[module] == index[module]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return sorted(cycles)


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """One cycle as the import lines that close it, for the failure message."""
    members = set(cycle)
    lines = [" <-> ".join(cycle)]
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"    {importer}:{detail['line_number']}: {detail['line_contents']}")
    return "\n".join(lines)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """Given a graph with a loop a -> b -> c -> a beside a chain d -> a, when its cycles
    are listed, then the loop is the one cycle (the check below could fail)."""
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]:
        graph.add_import(importer=importer, imported=imported)

    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    """Given every import in dispatch and dispatch_workers (module level, inside functions
    and under TYPE_CHECKING alike), when the import graph's strongly connected components
    are found, then none has more than one module.

    The package root ``dispatch`` is in the graph: its ``TYPE_CHECKING`` imports point down
    at the public names' homes, so a module below that imported the root would close a cycle.
    """
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)

    cycles = import_cycles(graph)

    assert cycles == [], "import cycles:\n" + "\n".join(describe(graph, c) for c in cycles)


def oversized(path: Path) -> Iterator[str]:
    """The classes and functions (methods and nested ones too) of one file over the limits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            limit, kind = MAX_CLASS_LINES, "class"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit, kind = MAX_FUNCTION_LINES, "function"
        else:
            continue
        assert node.end_lineno is not None
        lines = node.end_lineno - node.lineno + 1
        if lines > limit:
            yield f"{relative(path)}:{node.lineno}: {kind} {node.name} is {lines} lines (> {limit})"


def test_no_class_or_function_is_too_long() -> None:
    """Given every module of dispatch/ and workers/ (but the moto patches), when its
    classes and functions are measured from the first line to the last, then no class is
    over 400 lines and no function over 60."""
    too_long = [
        problem for path in source_files() if path not in SIZE_EXEMPT for problem in oversized(path)
    ]

    assert too_long == [], "\n".join(too_long)


def docstring_problem(path: Path) -> str | None:
    """Why one module's docstring does not open with a one-sentence line (None if it does)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstring = ast.get_docstring(tree, clean=False)
    if docstring is None:
        return "no module docstring"
    first = docstring.split("\n", 1)[0].strip()
    if not first:
        return "the docstring's first line is empty (the summary goes right after the quotes)"
    if not first.endswith("."):
        return f"the first line is not a whole sentence ending with a period: {first!r}"
    if SENTENCE_BREAK.search(first):
        return f"the first line is more than one sentence: {first!r}"
    return None


def test_every_module_opens_with_a_one_sentence_summary() -> None:
    """Given every module of dispatch/ and workers/dispatch_workers, when its docstring is
    read, then there is one and its first line is one sentence ending on that line."""
    problems = [
        f"{relative(path)}: {problem}"
        for path in source_files()
        if (problem := docstring_problem(path)) is not None
    ]

    assert problems == [], "\n".join(problems)
