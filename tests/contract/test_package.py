"""The package as a library and as a house: importing it changes nothing, its modules import each other without a
cycle and only downwards (reading a finished run never goes through training; only the report draws), the top
of the package holds the entry points alone, and one class spells the run folder's file names."""

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
            "sr2lora.config, sr2lora.report; "
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


# ---------------------------------------------------------------- the layout


ENTRY_POINTS = {"__init__", "__main__", "cli", "launch", "demo"}  # and sweep/, the grid entry point
READERS = ("sr2lora.analysis", "sr2lora.inference", "sr2lora.report")  # read finished runs


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others (lazy imports included)."""
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


FOLDERS = {"core", "config", "data", "models", "methods", "classifiers", "runs", "train", "analysis", "inference",
           "report", "assets", "sweep"}


def test_only_entry_points_at_the_top_of_the_package():
    top = {f.stem for f in PKG.glob("*.py")}
    assert top == ENTRY_POINTS, f"modules at the top of src/sr2lora that are not entry points: {top - ENTRY_POINTS}"
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == FOLDERS, f"folders by concern: {sorted(folders ^ FOLDERS)}"


def test_reading_a_finished_run_never_goes_through_training():
    """analysis/, inference/ and report/ never import the training engine, directly or through anything else."""
    graph = import_graph()
    readers = [m for m in graph if m.startswith(READERS)]
    assert len(readers) > 8
    bad = {m: sorted(reachable(graph, m) & {"sr2lora.train.engine"}) for m in readers}
    assert not any(bad.values()), {m: v for m, v in bad.items() if v}
    # the check can fail: the entry points do reach the engine
    assert "sr2lora.train.engine" in reachable(graph, "sr2lora.cli")


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_the_report_draws():
    """No module outside report/ imports matplotlib (at any depth of the file)."""
    drawing = sorted(module_name(f) for f in PKG.rglob("*.py") if "matplotlib" in _third_party_imports(f))
    assert drawing and all(m.startswith("sr2lora.report") for m in drawing), drawing


# the run folder's file names (sr2lora.runs.folder.RunFolder); manifest.json is also the asset cache's own file
RUN_FILE_NAMES = ("config.yaml", "results.json", "metrics.csv", "drift.json", "robustness.json", "state.json",
                  "manifest.json", "model.safetensors", "stats.safetensors", "method.safetensors",
                  "heads.safetensors", ".sr2lora.lock")
ASSET_CACHES = ("sr2lora.assets", "sr2lora.data")  # their own cache folders, with their own manifest.json


def spelled_file_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every run-folder file name in ``path``'s string literals, docstrings excepted."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, name) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            for name in RUN_FILE_NAMES if name in node.value]


def test_the_run_folder_is_the_only_code_that_spells_its_file_names():
    found = {}
    for f in sorted(PKG.rglob("*.py")):
        name = module_name(f)
        if name == "sr2lora.runs.folder":
            continue
        hits = [(line, n) for line, n in spelled_file_names(f)
                if not (n == "manifest.json" and name.startswith(ASSET_CACHES))]
        if hits:
            found[name] = hits
    assert not found, f"spell these through sr2lora.runs.folder.RunFolder: {found}"
    # the check can fail: the folder module itself spells them all (the tensor groups' files as group names)
    from sr2lora.runs.folder import RunFolder

    spelled = {n for _, n in spelled_file_names(PKG / "runs" / "folder.py")}
    spelled |= {RunFolder(".").group_file(g).name for g in RunFolder.GROUPS}
    assert spelled == set(RUN_FILE_NAMES)


def test_no_pip_call_in_library_code():
    for f in PKG.rglob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip() in ("pip",):
                raise AssertionError(f"{f}: a string literal 'pip' (a subprocess call of pip?) at line {node.lineno}")
