"""
The house keeps its shape: the allowed import directions of docs/architecture.md, no import
cycle, plugins on the public surface only, and no long module without a reason.

Read from the source with :mod:`ast` (nothing is imported), every ``import`` counted, those
inside functions too (a cycle hidden in a function is still a cycle); only the imports under
``if TYPE_CHECKING:`` are left out, since they never run (the typed runtime names the types of
its fields that way).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mediaproxy"
PLUGINS = ROOT / "plugins"

#: The rooms below the plugin glue; they never import ``mediaproxy.builtin``.
PARTS = ("mediaproxy.http", "mediaproxy.cache", "mediaproxy.imaging", "mediaproxy.monitoring")
#: What the parts may import from the core: the values, the config schema, logging and the
#: hook marker. Never the composition (runtime, tap, resource, manager, cli...).
FOUNDATION = {"mediaproxy", "mediaproxy.models", "mediaproxy.config", "mediaproxy.configload",
              "mediaproxy.tomlpos", "mediaproxy.logs",
              "mediaproxy.hookspecs", "mediaproxy.parsing", "mediaproxy.runtime",
              "mediaproxy.admission", "mediaproxy.inflight", "mediaproxy.memo",
              "mediaproxy.jobs", "mediaproxy.threadpool"}
#: What a separately packaged plugin may import.
PUBLIC = {"mediaproxy", "mediaproxy.testing"}
LONG = 600


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The mediaproxy modules ``path`` (module ``name``) imports, resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            node.body = []   # never run: not an import of the running code
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from mediaproxy import imaging``: the name may be a module itself
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if f"{target}.{alias.name}" in known)
    return {m for m in found if m == "mediaproxy" or m.startswith("mediaproxy.")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) & known for name, path in mods.items()}


def within(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_nothing_below_the_plugin_glue_imports_it():
    wrong = sorted((m, target) for m, targets in graph().items() for target in targets
                   if within(target, "mediaproxy.builtin")
                   and not within(m, "mediaproxy.builtin"))
    assert wrong == []


def test_nothing_in_the_package_imports_the_test_kit():
    wrong = sorted((m, t) for m, targets in graph().items()
                   if not within(m, "mediaproxy.testing")
                   for t in targets if within(t, "mediaproxy.testing"))
    assert wrong == []


def test_the_foundation_imports_only_itself():
    wrong = sorted((m, t) for m, targets in graph().items() if m in FOUNDATION
                   for t in targets if t not in FOUNDATION)
    assert wrong == []


def test_the_parts_import_only_each_other_and_the_foundation():
    wrong = sorted(
        (m, target) for m, targets in graph().items() if any(within(m, r) for r in PARTS)
        for target in targets
        if target not in FOUNDATION and not any(within(target, r) for r in PARTS))
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-imports."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            if len(component) > 1 or v in edges.get(v, ()):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycles_are_found_when_there_are_some():
    # the checker itself: a -> b -> c -> a is one cycle, d -> d another, e alone none
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["d"]]


def test_there_is_no_import_cycle_in_the_package():
    # A package's __init__ importing its own submodules (to re-export them) is not a cycle of
    # rooms; only edges between different modules count, minus "parent imports child".
    edges = {m: {t for t in targets if t != m and not within(t, m)}
             for m, targets in graph().items()}
    assert cycles(edges) == []


def plugin_sources() -> list[Path]:
    """The plugins' own source files (not what a local build or install left beside them)."""
    return sorted(p for p in PLUGINS.rglob("*.py")
                  if not {"build", "dist"} & set(p.parts) and not any(
                      part.endswith(".egg-info") for part in p.parts))


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugins_import_only_the_public_surface(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            used.add(node.module or "")
    assert {m for m in used if within(m, "mediaproxy")} <= PUBLIC


def test_a_long_module_says_why_at_its_top():
    unexplained = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why one module" not in doc:
                unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert unexplained == []


def room(module: str) -> str:
    """The room of a module: its sub-package under mediaproxy (http, cache, ...), else the
    foundation or the composition (see docs/architecture.md)."""
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "foundation" if module in FOUNDATION else "composition"


def main() -> None:
    """Print the rooms, their size, and the import arrows between them (with the modules
    behind each arrow): ``python tests/test_architecture.py``."""
    edges: dict[tuple[str, str], set[str]] = {}
    sizes: dict[str, int] = {}
    for name, path in modules().items():
        sizes[room(name)] = sizes.get(room(name), 0) + path.read_text().count("\n")
    for m, targets in graph().items():
        for t in targets:
            if room(m) != room(t) and t != "mediaproxy":
                edges.setdefault((room(m), room(t)), set()).add(f"{m} -> {t}")
    print("rooms (lines):", ", ".join(f"{r} {n}" for r, n in sorted(sizes.items())))
    for (a, b), why in sorted(edges.items()):
        print(f"{a:11} -> {b:11} {len(why):3} import(s), e.g. {sorted(why)[0]}")
    found = cycles({m: {t for t in ts if t != m and not within(t, m)}
                    for m, ts in graph().items()})
    print("cycles:", found or "none")


if __name__ == "__main__":
    main()
