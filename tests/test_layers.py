"""The import graph keeps its layers: no import goes up, none closes a cycle.

Every import counts, at module level or inside a function (an import tucked into a function
to dodge a cycle is still a cycle). Tests and migrations are left out: tests may use any
app's helpers. Read with the standard library's `ast`; nothing is imported.

    aimos          the project: settings, URLs, system status, upkeep; may import every layer
    workspaces     sessions: long-lived sandboxes with a workspace, and their tasks
    executions     runs, their events, control, batches
    agents         agents, versions, builds
    notifications  the user feed and webhooks, told by the apps above
    accounts       users, API keys, authentication
    core           errors, owned querysets, paging, configuration
    sandbox        plain Python: no Django, no app
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each package and what it may import besides itself (the layers below it).
ALLOWED = {
    "sandbox": set(),
    "core": {"sandbox"},
    "accounts": {"core", "sandbox"},
    "notifications": {"core", "accounts", "sandbox"},
    "agents": {"core", "accounts", "notifications", "sandbox"},
    "executions": {"core", "accounts", "notifications", "agents", "sandbox"},
    "workspaces": {"core", "accounts", "notifications", "agents", "executions", "sandbox"},
    "aimos": {"core", "accounts", "notifications", "agents", "executions", "workspaces", "sandbox"},
}
DJANGO = ("django", "rest_framework", "channels", "django_rq", "drf_spectacular", "daphne")


def modules() -> dict[str, Path]:
    """Every module of our packages (tests and migrations left out), by dotted name."""
    found = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "tests" in parts or "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The names `name` imports: ours resolved to modules, others by their top package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in known else source)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def layer(module: str) -> str:
    return module.split(".")[0]


def test_no_import_goes_up_the_layers():
    wrong = []
    for module, imported in graph().items():
        own = layer(module)
        for target in imported:
            top = layer(target)
            if top in ALLOWED and top != own and top not in ALLOWED[own]:
                wrong.append(f"{module} imports {target}")
    assert wrong == [], "\n".join(sorted(wrong))


def test_sandbox_knows_nothing_of_django():
    wrong = [
        f"{module} imports {target}"
        for module, imported in graph().items()
        if layer(module) == "sandbox"
        for target in imported
        if target.split(".")[0] in DJANGO
    ]
    assert wrong == [], "\n".join(sorted(wrong))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_closes_a_cycle():
    edges = graph()
    # A package's __init__ is imported by each of its modules: only what it imports counts.
    found = cycles({module: targets - {module} for module, targets in edges.items()})
    assert found == [], "\n".join(" ↔ ".join(component) for component in found)


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected


def test_imports_inside_functions_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from executions import services\n")
    assert imports_of("agents.m", module, {"executions.services"}) == {"executions.services"}
