"""The package's layout rules, each checker shown failing on a package built to break it.

- The import contracts of pyproject's `[tool.importlinter]` (run with `lint-imports`): the
  app side imports nothing of `sidecar/`, `brokers/` or `secretstores/` but the lazy imports
  listed there; the families import nothing of `sidecar/`.
- No import circles among the package's modules, counting the imports in functions too
  (not those under `if TYPE_CHECKING:`).
- No module over 500 lines.
- No private attribute of a `Dapr` instance used outside `_dapr.py`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastapi_dapr

try:
    import tomllib
except ImportError:  # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib  # type: ignore[no-redef]

PACKAGE_DIR = Path(fastapi_dapr.__file__).parent
ROOT = PACKAGE_DIR.parent
MAX_LINES = 500
FAMILIES = ("sidecar", "brokers", "secretstores")


# -- the checkers -----------------------------------------------------------------------------------


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package in `package_dir`, by dotted name (a package by its own)."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str], *, type_checking: bool = False) -> set[str]:
    """The package's modules that module `name` imports, anywhere in it but under
    `if TYPE_CHECKING:` (unless `type_checking`)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                if f"{module}.{alias.name}" in known:  # `from . import delivery`
                    found.add(f"{module}.{alias.name}")
                elif module in known:
                    found.add(module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = package_modules(package_dir)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph`: its strongly connected components of more than one
    module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def long_modules(package_dir: Path, limit: int = MAX_LINES) -> dict[str, int]:
    lengths = {
        name: len(path.read_text().splitlines()) for name, path in package_modules(package_dir).items()
    }
    return {name: length for name, length in lengths.items() if length > limit}


def private_uses(package_dir: Path, home: str = "_dapr", cls: str = "Dapr") -> list[str]:
    """Where a private attribute of `cls` (defined in `home`) is used outside `home`: any
    `something._name` but `self._name`, `_name` one of the class's own private names."""
    tree = ast.parse((package_dir / f"{home}.py").read_text())
    (klass,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls]
    private: set[str] = set()
    for node in ast.walk(klass):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            private.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            private.add(node.attr)
    private = {name for name in private if name.startswith("_") and not name.endswith("__")}
    uses: list[tuple[str, int, str]] = []
    for name, path in package_modules(package_dir).items():
        if path == package_dir / f"{home}.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                uses.append((name, node.lineno, node.attr))
    return [f"{name}:{line}: .{attr}" for name, line, attr in sorted(uses)]


def lint_imports(config: Path | None, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    # `lint-imports`, run by the interpreter running the tests.
    entry = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    command = [sys.executable, "-c", entry]
    if config is not None:
        command += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def make_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / next(iter(files)).split("/")[0]


# -- the rules, on fastapi_dapr ---------------------------------------------------------------------


@pytest.mark.process  # lint-imports
def test_the_import_contracts_hold() -> None:
    done = lint_imports(None, ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_app_side_contract_names_every_module_of_the_app_side() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    app_side = config["contracts"][0]
    top_level = {name for name in package_modules(PACKAGE_DIR) if name.count(".") <= 1}
    assert set(app_side["source_modules"]) == top_level - {f"fastapi_dapr.{family}" for family in FAMILIES}
    assert set(app_side["forbidden_modules"]) == {f"fastapi_dapr.{family}" for family in FAMILIES}


def test_the_sidecar_side_never_imports_dapr_not_even_for_types() -> None:
    # A backend is given settings, never the Dapr instance.
    modules = package_modules(PACKAGE_DIR)
    importers = [
        name
        for name, path in modules.items()
        if name.split(".")[1:2]
        and name.split(".")[1] in FAMILIES
        and "fastapi_dapr._dapr" in imports_of(name, path, set(modules), type_checking=True)
    ]
    assert importers == []


def test_no_import_circles() -> None:
    assert circles(import_graph(PACKAGE_DIR)) == []


def test_no_module_over_500_lines() -> None:
    assert long_modules(PACKAGE_DIR) == {}


def test_no_private_attribute_of_dapr_is_used_outside_it() -> None:
    assert private_uses(PACKAGE_DIR) == []


# -- each checker fails on a package that breaks its rule -----------------------------------------


@pytest.mark.process  # lint-imports
def test_a_function_level_import_of_the_sidecar_side_breaks_the_contract(tmp_path: Path) -> None:
    make_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/_app.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from .sidecar.api import API  # not counted
                def lazy():
                    from .sidecar import runtime  # counted
            """,
            "pkg/sidecar/__init__.py": "",
            "pkg/sidecar/api.py": "API = 1\n",
            "pkg/sidecar/runtime.py": "",
        },
    )
    config = tmp_path / "contracts.toml"
    config.write_text(
        textwrap.dedent("""
            [tool.importlinter]
            root_package = "pkg"
            exclude_type_checking_imports = true

            [[tool.importlinter.contracts]]
            name = "app side"
            type = "forbidden"
            source_modules = ["pkg._app"]
            forbidden_modules = ["pkg.sidecar"]
        """)
    )
    broken = lint_imports(config, tmp_path, tmp_path)
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout
    assert "pkg._app -> pkg.sidecar.runtime" in broken.stdout
    assert "pkg.sidecar.api" not in broken.stdout
    # Listed as a lazy way in, it is allowed.
    config.write_text(config.read_text() + 'ignore_imports = ["pkg._app -> pkg.sidecar.runtime"]\n')
    kept = lint_imports(config, tmp_path, tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr


def test_circles_are_found_through_function_level_imports_not_type_checking_ones(tmp_path: Path) -> None:
    package = make_package(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import f\n",
            "pkg/a.py": """
                from typing import TYPE_CHECKING
                from .c import g
                if TYPE_CHECKING:
                    from .sub.d import D
                def f():
                    from . import b
            """,
            "pkg/b.py": "from .a import f\n",
            "pkg/c.py": "def g(): ...\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "from ..a import f\nD = 1\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b", "pkg.c"}
    assert graph["pkg.sub.d"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b"]]
    # For the rule that the sidecar side never imports Dapr, even for types, they count.
    known = set(package_modules(package))
    assert "pkg.sub.d" in imports_of("pkg.a", package / "a.py", known, type_checking=True)


def test_modules_over_500_lines_are_found(tmp_path: Path) -> None:
    package = make_package(
        tmp_path, {"pkg/__init__.py": "", "pkg/long.py": "x = 1\n" * 501, "pkg/fine.py": "x = 1\n" * 500}
    )
    assert long_modules(package) == {"pkg.long": 501}


def test_private_attributes_of_dapr_used_elsewhere_are_found(tmp_path: Path) -> None:
    package = make_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/_dapr.py": """
                class Dapr:
                    def __init__(self):
                        self._runtime = None
                        self.public = 1
                    def _running(self):
                        return self._runtime
            """,
            "pkg/testing.py": """
                class Helper:
                    def __init__(self, dapr):
                        self._runtime = dapr.public  # its own attribute: fine
                    def attach(self, dapr):
                        return dapr._running(), dapr.public
            """,
        },
    )
    assert private_uses(package) == ["pkg.testing:6: ._running"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_families_are_packages_of_fastapi_dapr(family: str) -> None:
    assert f"fastapi_dapr.{family}" in package_modules(PACKAGE_DIR)
