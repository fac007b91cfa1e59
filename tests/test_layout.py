"""Optuna's private API is used in one place: ``tuner/storage/_optuna.py``. Every other module of
tuner keeps to Optuna's public names, so that a new Optuna release breaks at most that one file.

"Private" is what Optuna itself names with a leading underscore: a module (``optuna.storages._rdb``),
a function or class (``_create_scoped_session``), a method or attribute of its objects
(``trial._trial_id``, ``study._storage``, ``storage._get_stale_trial_ids``), and the private methods
of an Optuna class that a tuner class overrides (``def _create_new_trial`` in a subclass of
``RDBStorage``). ``tuner/analysis/fanova.py`` needs no exception: it reimplements fANOVA on scikit-learn's
forest and only names Optuna's private ``_FanovaTree`` in its docstring (the tests compare with it).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import tuner

TUNER = Path(tuner.__file__).parent
OPTUNA = Path(optuna.__file__).parent
THE_ONE_PLACE = "storage/_optuna.py"
# Modules being rewritten by others to call tuner.storage._optuna (trial_id, cached_trials) instead.
PENDING: dict[str, str] = {}  # module -> why it may still touch private Optuna API (none left)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.cache
def optuna_private_names() -> frozenset[str]:
    """Every private name Optuna defines: functions, classes, methods, and attributes it assigns."""
    names: set[str] = set()
    for path in OPTUNA.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
                names.add(node.attr)
    return frozenset(names)


def _private_names_of(cls: type) -> set[str]:
    """The private names an Optuna class has (inherited too), methods and attributes its code assigns."""
    names = {name for name in dir(cls) if _private(name)}
    for base in cls.__mro__:
        if base.__module__.startswith("optuna"):
            try:
                source = inspect.getsource(base)
            except (OSError, TypeError):
                continue
            names |= {node.attr for node in ast.walk(ast.parse(source.lstrip()))
                      if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr)}
    return names


def private_optuna_uses(source: str, classes: dict[str, type] | None = None) -> list[str]:
    """The lines of ``source`` that touch Optuna's private API, as ``line: what``.

    ``classes``: the module's classes by name, to find those that inherit from an Optuna class.
    """
    tree = ast.parse(source)
    known = optuna_private_names()
    found: list[tuple[int, str]] = []
    optuna_private_in_class: dict[ast.ClassDef, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and classes and node.name in classes:
            cls = classes[node.name]
            if any(base.__module__.startswith("optuna") for base in cls.__mro__[1:]):
                optuna_private_in_class[node] = _private_names_of(
                    next(base for base in cls.__mro__[1:] if base.__module__.startswith("optuna")))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "optuna":
            if any(_private(part) for part in node.module.split(".")):
                found.append((node.lineno, f"imports from {node.module}"))
            found += [(node.lineno, f"imports {alias.name} from {node.module}") for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"imports {alias.name}") for alias in node.names
                      if alias.name.split(".")[0] == "optuna" and any(_private(p) for p in alias.name.split("."))]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not on_self and node.attr in known:
                found.append((node.lineno, f".{node.attr}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and node.args[1].value in known):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))

    for class_node, inherited in optuna_private_in_class.items():
        for node in ast.walk(class_node):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in inherited:
                found.append((node.lineno, f"overrides {class_node.name}.{node.name}"))
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                  and node.attr in inherited):
                found.append((node.lineno, f"self.{node.attr} of an Optuna class"))
    return [f"{line}: {what}" for line, what in sorted(set(found))]


def _modules() -> list[str]:
    return sorted(str(path.relative_to(TUNER)) for path in TUNER.rglob("*.py") if str(path.relative_to(TUNER)) != THE_ONE_PLACE)


@pytest.mark.parametrize("module", [
    pytest.param(module, marks=pytest.mark.xfail(strict=False, reason=PENDING[module])) if module in PENDING else module
    for module in _modules()
])
def test_no_module_but_storage_optuna_touches_private_optuna_api(module: str) -> None:
    dotted = "tuner." + module.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    imported = importlib.import_module(dotted)
    classes = {name: value for name, value in vars(imported).items()
               if inspect.isclass(value) and value.__module__ == imported.__name__}
    uses = private_optuna_uses((TUNER / module).read_text(encoding="utf-8"), classes)
    assert uses == [], f"tuner/{module} uses Optuna's private API (move it into tuner/{THE_ONE_PLACE}): {uses}"


def test_the_check_finds_each_kind_of_private_use_and_passes_public_code() -> None:
    risky = (
        "import optuna.storages._heartbeat\n"
        "from optuna.storages._rdb import models\n"
        "from optuna.storages import _CachedStorage\n"
        "trial_id = trial._trial_id\n"
        "storage = getattr(study, '_storage')\n"
        "stale = storage._get_stale_trial_ids(1)\n"
    )
    assert [line.split(":")[0] for line in private_optuna_uses(risky)] == ["1", "2", "3", "4", "5", "6"]

    class Hooked(optuna.storages.RDBStorage):
        pass

    overriding = (
        "class Hooked(RDBStorage):\n"
        "    def _create_new_trial(self, study_id, template_trial=None):\n"
        "        return self._get_prepared_new_trial(study_id, template_trial, None)\n"
    )
    assert private_optuna_uses(overriding, {"Hooked": Hooked}) == [
        "2: overrides Hooked._create_new_trial", "3: self._get_prepared_new_trial of an Optuna class"]

    public = (
        "import optuna\n"
        "class Mine:\n"
        "    def __init__(self, study):\n"
        "        self._storage = study\n"  # a tuner object's own attribute, whatever its name
        "        self._trials = study.get_trials(deepcopy=False)\n"
        "number = study.trials[0].number\n"
    )
    assert private_optuna_uses(public, {"Mine": type("Mine", (), {})}) == []


def test_the_one_place_is_the_module_that_holds_the_private_uses() -> None:
    source = (TUNER / THE_ONE_PLACE).read_text(encoding="utf-8")
    assert len(private_optuna_uses(source)) >= 5  # the check sees what it should move there


# ---- the package layout: imports run one way, modules stay readable ------------------------------

MAX_MODULE_LINES = 450
REPO = TUNER.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> list[tuple[str, str, int]]:
    """(module imported, name imported or "", line) of every import in ``path`` that runs, inside
    functions too; ``if TYPE_CHECKING:`` blocks never run and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for inner in ast.walk(node)}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, "", node.lineno) if submodule in modules else (base, alias.name, node.lineno))
    return found


def _tuner_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in TUNER.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """tuner module -> the tuner modules it imports (a package's own submodules importing it aside)."""
    modules = _tuner_modules()
    return {name: {imported for imported, _, _ in _runtime_imports(path, set(modules))
                   if imported in modules and imported != name and not name.startswith(imported + ".")}
            for name, path in modules.items()}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_import_circle_among_tuner_modules_counting_imports_inside_functions() -> None:
    assert import_circles(import_graph()) == []


def test_the_circle_check_finds_a_circle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(_tuner_modules()))
def test_no_module_is_longer_than_the_limit(module: str) -> None:
    lines = len(_tuner_modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines; split it where its parts have a seam of their own"


def _package_of(module: str) -> str:
    """``tuner.study`` for ``tuner.study.runner``; a top-level module (``tuner.cli``) is its own package."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _private_imports(path: Path, own_package: str | None) -> list[str]:
    """Private ``tuner`` names (or private modules) ``path`` imports from outside ``own_package``."""
    modules = set(_tuner_modules())
    found = []
    for imported, name, line in _runtime_imports(path, modules):
        if not imported.startswith("tuner"):
            continue
        if own_package is not None and _package_of(imported) == own_package:
            continue
        private_module = any(_private(part) for part in imported.split("."))
        if private_module or _private(name):
            found.append(f"{line}: {imported}{'.' + name if name else ''}")
    return found


@pytest.mark.parametrize("module", sorted(_tuner_modules()))
def test_no_private_tuner_name_is_imported_across_packages(module: str) -> None:
    path = _tuner_modules()[module]
    assert _private_imports(path, _package_of(module)) == []


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_scripts_use_public_tuner_api_only(script: str) -> None:
    assert _private_imports(REPO / "scripts" / script, None) == []


@pytest.mark.parametrize("module", ["tuner.inputs.spec", "tuner.analysis.export", "tuner.analysis.importance", "tuner.cli", "tuner.report"])
def test_reading_a_spec_and_the_analyses_import_no_torch(module: str) -> None:
    script = (f"import sys, {module}\n"
              f"from tuner.inputs.spec import load_spec\n"
              f"load_spec({str(REPO / 'studies' / 'quickstart.toml')!r})\n"
              f"print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "False", done.stderr
