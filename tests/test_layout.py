"""The package layout holds: imports run one way and in no circle, argparse only in the command line, small
functions and modules.

model <- recordings <- training <- service <- clients <- cli: a module may import its own package and the ones
before it, never one after it (every ``import``, at the top or inside a function, counts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("model", "recordings", "training", "service", "bench", "clients", "cli")
OLD_TOP_LEVEL = {"model", "recordings", "training", "service", "clients", "cli"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # outside argparse declarations


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a module, relative imports resolved to nothing (none are used)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from alignnet import service` names a package too
            if node.module == "alignnet":
                out += [(node.lineno, f"alignnet.{a.name}") for a in node.names]
    return out


def sources(root: Path) -> list[tuple[Path, Path]]:
    """(file, its place in the ``alignnet`` namespace) for every module under ``root``: ``root/alignnet/*.py`` and
    the package folders of ORDER at the root (the design card's layout; pyproject.toml maps each folder to
    ``alignnet.<folder>``)."""
    out = []
    if (root / "alignnet").is_dir():
        out += [(p, p.relative_to(root / "alignnet")) for p in sorted((root / "alignnet").glob("*.py"))]
    for package in ORDER:
        out += [(p, p.relative_to(root)) for p in sorted((root / package).rglob("*.py"))]
    return out


def layout_violations(root: Path) -> list[str]:
    """Every import under ``root`` that runs upward or uses an old top-level name."""
    found = []
    for path, rel in sources(root):
        own = rel.parts[0] if len(rel.parts) > 1 else None  # alignnet/__init__.py, __main__.py: no package
        rank = ORDER.index(own) if own in ORDER else len(ORDER)
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            parts = module.split(".")
            if parts[0] in OLD_TOP_LEVEL:
                found.append(f"{rel}:{line} imports {module!r}: use alignnet.{module}")
            elif parts[0] == "alignnet" and len(parts) > 1 and parts[1] in ORDER and ORDER.index(parts[1]) > rank:
                found.append(f"{rel}:{line} ({own}) imports {module} ({parts[1]} comes after {own})")
    return found


def test_imports_run_one_way():
    assert layout_violations(ROOT) == []


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "service").mkdir()
    (tmp_path / "model" / "bad.py").write_text("def f():\n    from alignnet.service.http.app import create_app\n")
    (tmp_path / "service" / "old.py").write_text("import training.trainer\n")
    (tmp_path / "service" / "ok.py").write_text("from alignnet.model import create_model\nimport numpy\n")
    found = layout_violations(tmp_path)
    assert len(found) == 2
    assert "model/bad.py:2 (model) imports alignnet.service.http.app" in found[0]
    assert "service/old.py:1 imports 'training.trainer'" in found[1]


def test_every_package_is_in_the_order_and_installed():
    """pyproject.toml maps each root folder of ORDER to alignnet.<folder> and lists every package folder, so
    ``pip install .`` leaves none out."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"alignnet": "alignnet", **{f"alignnet.{p}": p for p in ORDER}}
    folders = {"alignnet"} | {".".join(("alignnet", *init.parent.relative_to(ROOT).parts))
                              for p in ORDER for init in (ROOT / p).rglob("__init__.py")}
    assert set(setuptools["packages"]) == folders
    assert not (ROOT / "alignnet" / "model").exists(), "the packages sit at the root, not under alignnet/"


def test_argparse_only_in_the_command_line():
    users = [str(rel) for p, rel in sources(ROOT)
             if "argparse" in {m.split(".")[0] for _, m in imported_modules(ast.parse(p.read_text()))}]
    assert users and all(u.startswith("cli/") for u in users), users


@pytest.mark.parametrize("path", [p for p, _ in sources(ROOT)], ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n} lines (limit {MAX_MODULE_LINES}): split it"


def long_functions(root: Path) -> list[str]:
    """Functions over ``MAX_FUNCTION_LINES`` lines in ``root``, but for argparse declarations (``add_parser`` in
    cli/: one ``add_argument`` per option reads best as one list)."""
    long = []
    for path, rel in sources(root):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and not (rel.parts[0] == "cli" and node.name == "add_parser"):
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return long


def test_functions_are_short():
    assert long_functions(ROOT) == []


def test_the_check_catches_a_long_function(tmp_path):
    for folder in ("cli", "training"):
        (tmp_path / folder).mkdir()
        body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
        (tmp_path / folder / "m.py").write_text(f"def add_parser():\n{body}\n\ndef short():\n    pass\n")
    assert long_functions(tmp_path) == [f"training/m.py:1 add_parser ({MAX_FUNCTION_LINES + 1} lines)"]


def module_graph(root: Path) -> dict[str, set[str]]:
    """Which alignnet modules each module of ``root`` imports (every import, at the top or inside a function;
    ``from alignnet.cli import bench`` counts as importing the module ``alignnet.cli.bench``)."""

    def name(rel: Path) -> str:
        parts = ("alignnet", *rel.with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(rel): p for p, rel in sources(root)}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            edges |= {n for n in names if n in modules and n != mod}
        graph[mod] = edges
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm; no graph library is a
    dependency of the project, and this is twenty lines)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert import_circles(module_graph(ROOT)) == []


def test_the_check_catches_a_circle(tmp_path):
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "__init__.py").write_text("")
    (tmp_path / "clients" / "a.py").write_text("def f():\n    from alignnet.clients.b import g\n")
    (tmp_path / "clients" / "b.py").write_text("from alignnet.clients import c\n")
    (tmp_path / "clients" / "c.py").write_text("import alignnet.clients.a\n")
    (tmp_path / "clients" / "d.py").write_text("from alignnet.clients.a import f\n")
    assert import_circles(module_graph(tmp_path)) == [["alignnet.clients.a", "alignnet.clients.b",
                                                       "alignnet.clients.c"]]
