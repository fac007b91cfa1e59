"""The hash of a function that has no source file (``python -``, a notebook cell): of its compiled code.

A function written in a file is known by the file's hash (:mod:`tuner.inputs.usercode`); one
without has only its code object, its defaults, its closure and the globals it reads, and
:func:`code_sha256` hashes those, the same in every process, blind to where the cell sits.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import types
from typing import Any

# How a function without a source file is identified (its compiled code, defaults, closure values and
# the globals it reads); stored beside its hash, so that a study is compared the way it was stored.
CODE_SCHEME = "code/1"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # its bytecode differs between versions
_PLAIN = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_MAX_ITEMS = 1000  # a longer list, dict or set a function reads is data: known by its size only


def code_sha256(function: Any) -> str:
    """A hash of what a function without a source file computes with, the same in every process.

    Its code object, recursively (``co_code``, ``co_consts`` with nested code objects such as a
    lambda or comprehension inside it, the names it reads, its argument counts and flags; not its
    file name or line numbers, which change when a notebook cell is run again), its defaults, the
    values of its closure, and the globals it reads by name: plain values (and containers of them,
    up to a thousand items; a longer one by its size) by value, functions and classes written beside it recursively, modules and functions or
    classes written elsewhere by name, any other object (an array, a tensor) by its type only.
    """
    home = getattr(function, "__module__", None)
    return hashlib.sha256(_describe(function, home, set()).encode()).hexdigest()


def _describe(value: Any, home: str | None, seen: set[int]) -> str:
    """A canonical text of ``value`` for :func:`code_sha256` (no memory addresses, sets sorted)."""
    def inner(item: Any) -> str:
        return _describe(item, home, seen)

    if isinstance(value, _PLAIN):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, (tuple, list, set, frozenset, dict)):
        if len(value) > _MAX_ITEMS:
            return f"{type(value).__name__}[{len(value)}]"  # data, not code: by its size (as an array by its type)
        if not isinstance(value, (tuple, frozenset)):
            if id(value) in seen:
                return f"again:{type(value).__name__}"  # a container that holds itself
            seen.add(id(value))
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}(" + ",".join(map(inner, value)) + ")"
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}{{" + ",".join(sorted(map(inner, value))) + "}"
    if isinstance(value, dict):
        return "dict{" + ",".join(sorted(f"{inner(k)}:{inner(v)}" for k, v in value.items())) + "}"
    if isinstance(value, types.CodeType):
        return "code(" + ",".join([
            value.co_code.hex(), inner(value.co_consts), inner(value.co_names), inner(value.co_varnames),
            inner(value.co_freevars), inner(value.co_cellvars), inner((value.co_argcount, value.co_posonlyargcount,
                                                                       value.co_kwonlyargcount, value.co_flags)),
        ]) + ")"
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, functools.partial):
        return "partial(" + ",".join([inner(value.func), inner(value.args), inner(value.keywords)]) + ")"
    if isinstance(value, types.MethodType):
        return "method(" + inner(value.__func__) + "," + inner(type(value.__self__)) + ")"
    if isinstance(value, (staticmethod, classmethod)):
        return f"{type(value).__name__}(" + inner(value.__func__) + ")"
    if isinstance(value, property):
        return "property(" + ",".join(map(inner, (value.fget, value.fset, value.fdel))) + ")"
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(value, (types.FunctionType, type)) and module == home:
        if id(value) in seen:
            return f"again:{qualname}"  # a recursive function, a class whose methods name it
        seen.add(id(value))
        if isinstance(value, type):
            own = {key: item for key, item in vars(value).items() if not key.startswith("__") or key in ("__init__", "__call__")}
            return f"class:{qualname}(" + inner(value.__bases__) + "," + inner(own) + ")"
        read = {global_name: value.__globals__[global_name] for global_name in sorted(_names_read(value.__code__))
                if global_name in value.__globals__}
        cells = [cell.cell_contents if _filled(cell) else "<empty cell>" for cell in value.__closure__ or ()]
        return "function(" + ",".join([inner(value.__code__), inner(value.__defaults__), inner(value.__kwdefaults__),
                                        inner(cells), inner(read)]) + ")"
    if isinstance(qualname, str) and isinstance(module, str):
        return f"name:{module}.{qualname}"  # a function or class written elsewhere (torch's, a file's): by name
    if callable(value) and type(value).__module__ == home:
        # A callable object written beside it: its class's code and its attributes.
        return "instance(" + inner(type(value)) + "," + inner(dict(getattr(value, "__dict__", {}))) + ")"
    return f"object:{type(value).__module__}.{type(value).__qualname__}"


def _names_read(code: Any) -> set[str]:
    """The global (and attribute) names a code object and the code objects nested in it read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_read(const)
    return names


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 -- an empty cell raises
    except ValueError:
        return False
    return True
