"""The package as a library: importing it changes nothing, and its modules import each other without a cycle."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import sr2lora

PKG = Path(sr2lora.__file__).resolve().parent


def test_import_leaves_the_environment_alone():
    # torch itself sets TORCHINDUCTOR_CACHE_DIR on import: compare with the environment after the stack's import
    code = ("import json, os, torch, torchvision, timm; before = dict(os.environ); import sr2lora, sr2lora.train.engine, "
            "sr2lora.config, sr2lora.report.build; "
            "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """The sr2lora modules ``path`` imports, at any depth of the file (lazy imports inside functions count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports never run: annotations only
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "sr2lora")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sr2lora":
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}"
                out.add(sub if (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (PKG.parent / Path(*sub.split(".")) / "__init__.py").exists() else target)
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    names = {module_name(f) for f in files}
    graph = {}
    for f in files:
        deps = set()
        for dep in imports_of(f):
            while dep not in names and "." in dep:  # `from sr2lora.x import y` where y is not a module
                dep = dep.rpartition(".")[0]
            if dep in names and dep != module_name(f):
                deps.add(dep)
        graph[module_name(f)] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last), or None. Packages' ``__init__`` that
    re-export their own submodules are edges too: a submodule importing its package's ``__init__`` which
    imports it back is a cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 20 and "sr2lora.train.engine" in graph["sr2lora.cli"] | {"sr2lora.train.engine"}
    # a package's __init__ importing its own submodules is how registries fill; a submodule importing the
    # package __init__ back would close a cycle through it
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_pip_call_in_library_code():
    for f in PKG.rglob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip() in ("pip",):
                raise AssertionError(f"{f}: a string literal 'pip' (a subprocess call of pip?) at line {node.lineno}")
