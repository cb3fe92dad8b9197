"""Does a config value fit a constructor's type hint, and how to name the hint in a message.

Used by `config_check`; the bounds and choices inside `Annotated` hints are `constraints`' job.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ldm_train.constraints import choices_of, constraints_of


def matches(value: Any, hint: Any) -> bool:
    """Best-effort structural check for the types configs hold; unknown types pass. Choices and
    bounds are `constraints.violation`'s job."""
    hint, _ = constraints_of(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return any(matches(value, type(a)) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            inner = args[0] if args else Any
            return all(matches(v, inner) for v in value)
        if origin is tuple:
            return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value)
    if origin is Callable or hint is Callable:
        return not isinstance(value, (int, float, str, bool, list))
    if isinstance(hint, type) and value is not None and isinstance(value, (int, float, str, bool)):
        return isinstance(value, hint) or (hint is float and isinstance(value, int))
    return True


def type_name(hint: Any) -> str:
    hint, _ = constraints_of(hint)
    choices = choices_of(hint)
    if choices is not None:
        return "one of " + ", ".join(map(repr, choices))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__ if hint.__module__ == "builtins" else f"{hint.__module__.split('.')[0]}.{hint.__name__}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return str(hint).replace("typing.", "").replace("collections.abc.", "")

