"""A user's own code named in a spec as ``"module:function"``, and its identity.

A spec may name its model factory (``[model] family``), data loader (``[data] loader``), training
loop (``[train] loop``), loss and metric (``[train] loss``, ``[train] metric``) as
``"module:function"``. The module is imported from the spec's folder first, then from
``sys.path``. From Python, :func:`tuner.run_study` takes the same things as callables.
Each command that trains resolves them once (:func:`resolve_code`) into one :class:`UserCode`
that it hands down; nothing is registered in a module-level table, and reading a spec imports
none of them.

A changed function must not resume into trials its old version made: the identity of each named
function (module, function, and a hash of its module file, or of its compiled code when it has no
file: :mod:`tuner.inputs.code_hash`) and of a CSV file's content joins the stored settings, so a
changed one is a changed study, named by the file that changed (:func:`code_changes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import error_line
from tuner.inputs.code_hash import CODE_SCHEME, PYTHON, code_sha256
from tuner.inputs.families import ModelFamily
from tuner.inputs.spec import SpecError, StudySpec, load_spec, spec_from_dict

# Spec fields that may name a function, and what the function is for (in messages).
CODE_FIELDS = {
    "model.family": "the model factory",
    "data.loader": "the data loader",
    "train.loop": "the training loop",
    "train.loss": "the loss",
    "train.metric": "the metric",
}

_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # a cache of file hashes, not a registry


def is_reference(value: object) -> bool:
    """Whether a spec value names a function (``"module:function"``) rather than a built-in."""
    return isinstance(value, str) and ":" in value


def reference_of(function: Callable[..., Any]) -> str:
    """The ``module:function`` name a callable handed over from Python is stored under."""
    module = getattr(function, "__module__", None) or "__main__"
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or type(function).__name__
    return f"{module}:{name}"


def with_callables(spec: StudySpec, **functions: Callable[..., Any] | None) -> StudySpec:
    """``spec`` naming the given callables (model, loader, loop, loss, metric) by their references.

    The callables themselves go to :func:`resolve_code` (``given``): the spec only names them.
    """
    given = {name: function for name, function in functions.items() if function is not None}
    for function in given.values():
        if not callable(function):
            raise TypeError(f"{function!r} is not callable")
    if not given:
        return spec
    model_spec, data_spec, train_spec = spec.model, spec.data, spec.train
    if "model" in given:
        model_spec = dataclasses.replace(model_spec, family=reference_of(given["model"]))
    if "loader" in given:
        data_spec = dataclasses.replace(data_spec, name="python", loader=reference_of(given["loader"]))
    train_spec = dataclasses.replace(train_spec, **{k: reference_of(given[k]) for k in ("loop", "loss", "metric") if k in given})
    return dataclasses.replace(spec, model=model_spec, data=data_spec, train=train_spec)


def spec_with_callables(spec: StudySpec | Mapping[str, Any] | str | Path,
                        **functions: Callable[..., Any] | None) -> StudySpec:
    """The spec to run with the given callables: a :class:`StudySpec`, a study file, or a dict (the parsed TOML).

    A dict needs nothing for what a callable gives: with ``loader=``, ``[data]`` is your loader's
    (``name = "python"``, written or not); with ``model=``, ``[model] family`` is your factory. A dict
    that names something else there is refused (:class:`SpecError` naming the field).

    Example:
        >>> spec = spec_with_callables({"name": "mine", "model": {"width": 8}}, loader=load, model=make_net)  # doctest: +SKIP
    """
    if isinstance(spec, Mapping):
        table = {key: dict(value) if isinstance(value, Mapping) else value for key, value in spec.items()}
        for section, key, function, own in (("data", "name", functions.get("loader"), "python"),
                                             ("model", "family", functions.get("model"), None)):
            if function is None:
                continue
            part = table.setdefault(section, {})
            if not isinstance(part, dict):
                continue  # not a table: validation names it
            written = part.get(key, own)
            if written not in (own, reference_of(function)):
                kind = "loader" if section == "data" else "model"
                raise SpecError("", f"{section}.{key}", written, f"{kind}= gives it ({reference_of(function)}); "
                                f"leave {section}.{key} out of the dict, or drop {kind}=")
            part[key] = own if own is not None else reference_of(function)
            if section == "data":
                part["loader"] = reference_of(function)
        spec = spec_from_dict(table)
    elif not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    return with_callables(spec, **functions)


@dataclass(frozen=True)
class UserCode:
    """The spec's own code, resolved once per command that trains, and handed down from there.

    ``family`` is what :func:`tuner.inputs.models.build_model` gets: the spec's built-in (or
    registered) family name, or the user's factory as a :class:`ModelFamily`. The rest are the
    user's callables, None where the spec names none. Kept out of :class:`StudySpec`, whose fields
    are the stored settings.
    """

    family: str | ModelFamily
    loader: Callable[..., Any] | None = None
    loop: Callable[..., Any] | None = None
    loss: Callable[..., Any] | None = None
    metric: Callable[..., Any] | None = None

    def callable_of(self, field: str) -> Callable[..., Any] | None:
        """The callable the spec's ``field`` (e.g. ``"train.loop"``) names, or None."""
        if field == "model.family":
            return self.family.factory if isinstance(self.family, ModelFamily) else None
        return getattr(self, field.partition(".")[2])


def resolve_code(spec: StudySpec, given: Mapping[str, Callable[..., Any] | None] | None = None) -> UserCode:
    """Turn the spec's ``module:function`` names into callables, once (SpecError naming a field that fails).

    ``given``: callables handed over from Python by field name (``model``, ``loader``, ``loop``,
    ``loss``, ``metric``), used as they are; the spec names them by :func:`reference_of`
    (:func:`with_callables`).
    """
    given = {name: function for name, function in (given or {}).items() if function is not None}
    found: dict[str, Callable[..., Any] | None] = {}
    for field, reference in code_references(spec).items():
        short = "model" if field == "model.family" else field.partition(".")[2]
        found[short] = given[short] if short in given else load_callable(reference, field, spec.source)
    model = found.pop("model", None)
    family: str | ModelFamily = ModelFamily(spec.model.family, model) if model is not None else spec.model.family
    return UserCode(family=family, **found)


def spec_folder(source: str) -> Path | None:
    """The folder of the spec file ``source`` (None for a spec made in Python)."""
    return Path(source).resolve().parent if source else None


def load_callable(reference: str, field: str, source: str = "") -> Callable[..., Any]:
    """Import ``module:function`` (from the folder of spec file ``source`` first, then ``sys.path``).

    Raises :class:`SpecError` naming the field, the module and the fix when that fails.
    """
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise SpecError(source, field, reference, 'write it as "module:function", e.g. "mynet:make_model"')
    if module_name == "__main__":
        return _from_main(function_name, field, reference, source)
    module = _import(module_name, field, reference, source)
    target: Any = module
    for part in function_name.split("."):
        if not hasattr(target, part):
            found = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise SpecError(source, field, reference, f"module '{module_name}' has no '{function_name}'; "
                            f"its functions: {', '.join(found[:10]) or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError(source, field, reference, f"'{function_name}' in module '{module_name}' is not callable; "
                        f"name a function that returns {CODE_FIELDS.get(field, 'the result')}")
    return target


def from_main_fix(field: str, reference: str) -> str:
    """Why a function of a script's or notebook's ``__main__`` cannot be found again, and what to do instead."""
    function = reference.partition(":")[2]
    keyword = "model" if field == "model.family" else field.partition(".")[2]
    return (f"{function} was defined in the script or notebook that ran the study from Python (its __main__), "
            f"which the command line cannot import; resume it from that script or notebook, passing the function "
            f"again (tuner.run_study(..., {keyword}={function}); tuner.write_best(..., {keyword}={function}) for "
            f"`tuner best`{f'; tuner.load_model(folder, model={function}) for its winner' if keyword == 'model' else ''}), or move {function} into a module (e.g. mycode.py beside the spec), name it "
            f"\"mycode:{function}\" and run under a new study name")


def _from_main(function_name: str, field: str, reference: str, source: str) -> Callable[..., Any]:
    """A function the running ``__main__`` defines (a notebook's, a script's), else SpecError saying what to do.

    tuner's own command line is ``__main__`` when it runs: nothing of it is the user's, whatever the name.
    """
    main = sys.modules.get("__main__")
    ours = (getattr(getattr(main, "__spec__", None), "name", None) or "").startswith("tuner")
    target: Any = None if ours or main is None else main
    for part in function_name.split("."):
        target = getattr(target, part, None)
    if target is None or not callable(target) or getattr(target, "__module__", None) != "__main__":
        raise SpecError(source, field, reference, from_main_fix(field, reference))
    return target


def _import(module_name: str, field: str, reference: str, source: str) -> Any:
    folder = spec_folder(source)
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name.split(".")[0] and error.name != module_name:
            raise SpecError(source, field, reference,
                            f"importing module '{module_name}' failed: {error}; install what it needs") from None
        where = f"beside the spec ({folder})" if folder else "in the working folder"
        raise SpecError(source, field, reference,
                        f"no module '{module_name}' {where} or on sys.path; put {module_name.replace('.', '/')}.py there, or make it importable") from None
    except Exception as error:  # noqa: BLE001 -- the user's module raised while being imported
        raise SpecError(source, field, reference,
                        f"importing module '{module_name}' raised {error_line(error)}; fix the module") from None
    finally:
        if added:
            sys.path.remove(str(folder))


def function_identity(reference: str, source: str = "", function: Callable[..., Any] | None = None,
                      field: str = "", stored: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Module, function and a hash of the file that defines it (else of the function's compiled code).

    With ``function`` at hand (the code as resolved), the file of the module that defines it
    (``function.__module__``: for a function a package re-exports, the module it was written in);
    without, the file of the named module, found without running it (already imported, else where
    the import would find it: the spec's folder first, as :func:`load_callable`). The whole file,
    on purpose: a helper or a constant edited beside the function changes its results too.

    A function whose module has no file (a notebook's, ``python -``) is known by its code
    (:func:`code_sha256`), marked ``scheme`` (with the Python version, whose compiler made that
    code). ``stored``: the identity stored for it, if any; one stored before schemes existed (no
    ``scheme``) is computed as it was then, from the function's source, else its name, so that
    the study resumes as before.
    """
    module_name, _, function_name = reference.partition(":")
    identity = {"module": module_name, "function": function_name}
    defined_in = getattr(function, "__module__", None) if function is not None else None
    path = _module_file(defined_in or module_name, source)
    if path is not None:
        identity["sha256"] = file_sha256(path)
        return identity
    if function is None:
        function = load_callable(reference, field, source)
    if stored is not None and "sha256" in stored and "scheme" not in stored:
        try:
            text = inspect.getsource(function)
        except (OSError, TypeError):
            text = reference  # no source to be had (a builtin, a REPL lambda): the name alone
        identity["sha256"] = hashlib.sha256(text.encode()).hexdigest()
        return identity
    identity.update(sha256=code_sha256(function), scheme=CODE_SCHEME, python=PYTHON)
    return identity


def _module_file(module_name: str, source: str) -> Path | None:
    """The file module ``module_name`` is (or would be) imported from, without importing it; None if none."""
    module = sys.modules.get(module_name)
    if module is not None:
        path = getattr(module, "__file__", None)
        return Path(path) if path and Path(path).is_file() else None
    folder = spec_folder(source)
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    finally:
        if added:
            sys.path.remove(str(folder))
    origin = found.origin if found is not None else None
    return Path(origin) if origin and Path(origin).is_file() else None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, computed once per process for a file that did not change."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def files_beside_spec(spec: StudySpec) -> dict[str, Path]:
    """The files of the spec's own modules that are imported from beside the spec: path there -> file.

    What :func:`load_callable` imports from the spec's folder (``mynet.py``, or a package
    ``mynet/`` with every ``.py`` file in it), so that a copy of these files beside a copy of the
    spec imports the same code. A module found elsewhere on ``sys.path`` (installed) is left out:
    it imports as well from anywhere; so is a function with no file (a notebook's).
    """
    folder = spec_folder(spec.source)
    found: dict[str, Path] = {}
    if folder is None:
        return found
    for reference in code_references(spec).values():
        top = reference.partition(":")[0].split(".")[0]
        if (folder / top / "__init__.py").is_file():
            for path in sorted((folder / top).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    found[path.relative_to(folder).as_posix()] = path
        elif (folder / f"{top}.py").is_file():
            found[f"{top}.py"] = folder / f"{top}.py"
    return found


def code_references(spec: StudySpec) -> dict[str, str]:
    """The spec's fields that name a function: field -> ``module:function``."""
    values = {
        "model.family": spec.model.family,
        "data.loader": getattr(spec.data, "loader", None),
        "train.loop": getattr(spec.train, "loop", None),
        "train.loss": getattr(spec.train, "loss", None),
        "train.metric": getattr(spec.train, "metric", None),
    }
    return {field: value for field, value in values.items() if is_reference(value)}


def identity(spec: StudySpec, code: UserCode | None = None, stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the spec's own code and data files are: joins the stored settings (empty: nothing of the user's).

    Read from the files, without running the user's modules; ``code``, where at hand, knows the
    code of a function whose module has no file. ``stored``: the identity a study stored, to be
    compared with this one: each function is identified by the scheme it was stored with.
    """
    found: dict[str, Any] = {}
    for field, reference in code_references(spec).items():
        function = code.callable_of(field) if code is not None else None
        found[field] = function_identity(reference, spec.source, function, field, (stored or {}).get(field))
    if spec.data.name == "csv" and spec.data.path:
        from tuner.inputs.csv_file import csv_path

        path = csv_path(spec.data, spec.source)
        if path.is_file():
            found["data.path"] = {"sha256": file_sha256(path)}
    return found


def code_changes(stored: Mapping[str, Any], found: Mapping[str, Any], spec: StudySpec,
                 code: UserCode | None = None) -> list[str]:
    """What changed of the user's own code and data files since ``stored`` (:func:`identity`), in words.

    One clause per changed file, naming the spec fields whose functions it holds (a module that
    holds the factory and the loader changed: both, in one); one per changed function without a
    file. Empty: nothing changed.
    """
    changes: list[str] = []
    files: dict[str, list[str]] = {}  # a changed module file -> the fields it holds, in CODE_FIELDS' order
    fields = [*CODE_FIELDS, *sorted((set(stored) | set(found)) - set(CODE_FIELDS))]
    for field in fields:
        old, new = stored.get(field), found.get(field)
        if old == new:
            continue
        if field == "data.path":
            changes.append(f"the content of data.path ({spec.data.path}) changed since its trials ran")
        elif old is None or new is None:
            changes.append(f"{field} {'now names' if old is None else 'no longer names'} your own code")
        elif (old.get("module"), old.get("function")) != (new.get("module"), new.get("function")):
            changes.append(f"{field}: {old.get('module')}:{old.get('function')} -> {new.get('module')}:{new.get('function')}")
        elif new.get("scheme") is not None or old.get("scheme") is not None:
            named = f"{field} ({new['module']}:{new['function']}, which has no source file)"
            if old.get("python") not in (None, new.get("python")):
                changes.append(f"{named} was stored by Python {old['python']}, whose compiled code this Python "
                               f"({new.get('python')}) cannot compare with its own")
            else:
                changes.append(f"{named}: its code, defaults, closure or the globals it reads changed since its trials ran")
        else:
            files.setdefault(_file_shown(field, new["module"], spec, code), []).append(f"{field} ({new['module']}:{new['function']})")
    return [f"{shown} changed since its trials ran; it holds {' and '.join(held)}" for shown, held in files.items()] + changes


def _file_shown(field: str, module_name: str, spec: StudySpec, code: UserCode | None) -> str:
    """The file a field's function is hashed from, as the user knows it (beside the spec: its name there)."""
    function = code.callable_of(field) if code is not None else None
    path = _module_file(getattr(function, "__module__", None) or module_name, spec.source)
    if path is None:
        return f"module {module_name}"
    folder = spec_folder(spec.source)
    resolved = path.resolve()
    return str(resolved.relative_to(folder)) if folder is not None and resolved.is_relative_to(folder) else str(path)
