"""The package layout's import rules, read from the source with ``ast`` (nothing is imported).

- no import cycles among the modules of ``adapt/``, ``streamer/`` and ``crowdwatch/``;
- the command modules (``adapt.commands.*``, ``crowdwatch.commands.*``, ``streamer.cli``) are imported by
  ``streamer/cli.py`` alone: no library module depends on a command;
- ``adapt/`` imports nothing from ``streamer/``.

Function-level imports count as much as module-level ones, and so do literal
``importlib.import_module("...")`` calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adapt", "streamer", "crowdwatch")
COMMAND_PREFIXES = ("adapt.commands", "crowdwatch.commands", "streamer.cli")
DISPATCHER = "streamer.cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` (a module or module.attribute) lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    # imports only a type checker runs make no cycle at run time
    typing_only = {id(n) for guard in ast.walk(tree) if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
                   for stmt in guard.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
            targets = [t for t in targets[:-1] if t in modules] or [origin]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            hit = resolve(target, modules)
            if hit is not None and hit != module:
                found.add(hit)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def is_command(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in COMMAND_PREFIXES)


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "adapt.synth.camera" in graph["adapt.synth.render"]           # from .camera import Camera
    assert "adapt.store.registry" in graph["streamer.infer"]             # inside a method


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_only_the_dispatcher_imports_command_modules():
    offenders = {
        module: sorted(t for t in targets if is_command(t))
        for module, targets in import_graph().items()
        if module != DISPATCHER and any(is_command(t) for t in targets)
    }
    assert offenders == {}


def test_adapt_imports_nothing_from_streamer():
    offenders = {
        module: sorted(t for t in targets if t.split(".")[0] == "streamer")
        for module, targets in import_graph().items()
        if module.split(".")[0] == "adapt" and any(t.split(".")[0] == "streamer" for t in targets)
    }
    assert offenders == {}


def test_every_learning_command_is_a_command_module():
    source = (ROOT / "streamer" / "cli.py").read_text()
    table = next(
        node.value for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "COMMANDS"
    )
    targets = [ast.literal_eval(v)[0] for v in table.values]
    learning = [t for t in targets if t.startswith("adapt.")]
    assert learning and all(t.startswith("adapt.commands.") for t in learning), learning
    modules = project_modules()
    assert all(t in modules for t in targets), [t for t in targets if t not in modules]
