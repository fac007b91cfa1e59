"""Old calling conventions that keep working for a while, each with a ``DeprecationWarning``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def keyword_only_since(old_positional: tuple[str, ...], renamed: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Let a function whose arguments after the first became keyword-only take them by position still.

    ``old_positional`` names, in their old order, the keyword arguments that callers used to pass by
    position after the first one; ``renamed`` maps old keyword names to new ones. Either use warns.

    Example:
        >>> @keyword_only_since(("storage", "out"))
        ... def write(name, *, storage=None, out=None): ...
    """
    renamed = dict(renamed or {})

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
            if len(args) > len(old_positional):
                raise TypeError(f"{func.__name__}() takes 1 positional argument but {1 + len(args)} were given")
            old = [f"{new}=" for new in old_positional[: len(args)]]
            for key, value in zip(old_positional, args):
                if key in kwargs:
                    raise TypeError(f"{func.__name__}() got multiple values for argument {key!r}")
                kwargs[key] = value
            for was, now in renamed.items():
                if was in kwargs:
                    if now in kwargs:
                        raise TypeError(f"{func.__name__}() got both {was!r} and {now!r}")
                    kwargs[now] = kwargs.pop(was)
                    old.append(f"{now}= (not {was}=)")
            if old:
                warnings.warn(
                    f"{func.__name__}(name, ...): pass {', '.join(old)} by keyword; the old way will stop working",
                    DeprecationWarning, stacklevel=2,
                )
            return func(first, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
