"""Optuna's private API is used in one place: ``tuner/storage/_optuna.py``. Every other module of
tuner keeps to Optuna's public names, so that a new Optuna release breaks at most that one file.

"Private" is what Optuna itself names with a leading underscore: a module (``optuna.storages._rdb``),
a function or class (``_create_scoped_session``), a method or attribute of its objects
(``trial._trial_id``, ``study._storage``, ``storage._get_stale_trial_ids``), and the private methods
of an Optuna class that a tuner class overrides (``def _create_new_trial`` in a subclass of
``RDBStorage``). ``tuner/_fanova.py`` needs no exception: it reimplements fANOVA on scikit-learn's
forest and only names Optuna's private ``_FanovaTree`` in its docstring (the tests compare with it).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
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
