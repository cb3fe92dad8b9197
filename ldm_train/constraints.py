"""Value constraints declared once, in constructor type hints, and read by two checkers.

A parameter says what it accepts next to its type::

    def __init__(self, z_channels: PositiveInt = 4, norm: Literal["batch", "group"] = "batch"): ...
        check_arguments(MyNet.__init__, locals())   # Python callers get the same bounds

`ldm_train.config_check` reads the same hints from the config's `_target_` before anything is
built, so a bound lives in one place and both paths report it with the same words. Kept free of
torch, so the config check can use it before any network code is imported.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal


@dataclass(frozen=True)
class Bound:
    """A one-sided numeric bound; `Ge(1)` reads "must be >= 1"."""

    limit: float
    op: str

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # a type error, reported by the type check
        return {">=": value >= self.limit, ">": value > self.limit,
                "<=": value <= self.limit, "<": value < self.limit}[self.op]

    def describe(self) -> str:
        return f"{self.op} {self.limit:g}"


def Ge(limit: float) -> Bound:  # noqa: N802 - reads like a type: Annotated[int, Ge(1)]
    return Bound(limit, ">=")


def Gt(limit: float) -> Bound:  # noqa: N802
    return Bound(limit, ">")


def Le(limit: float) -> Bound:  # noqa: N802
    return Bound(limit, "<=")


def Lt(limit: float) -> Bound:  # noqa: N802
    return Bound(limit, "<")


@dataclass(frozen=True)
class PathExists:
    """A local file or folder that must exist; `sentinels` are words with a meaning of their own
    (`first_stage.ckpt=latest`)."""

    sentinels: tuple[str, ...] = ()

    def holds(self, value: Any) -> bool:
        return not isinstance(value, str) or value in self.sentinels or os.path.exists(value)

    def describe(self) -> str:
        words = f" or one of {', '.join(map(repr, self.sentinels))}" if self.sentinels else ""
        return f"an existing file or folder{words}"


Constraint = Bound | PathExists

# The vocabulary constructors use. `None` always passes a constraint: write `PositiveInt | None`.
PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
UnitInterval = Annotated[float, Ge(0), Le(1)]
# Probabilities and decays that must leave something: 1.0 would drop every caption, freeze an EMA.
OpenUnitInterval = Annotated[float, Ge(0), Lt(1)]
ExistingPath = Annotated[str, PathExists()]


def constraints_of(hint: Any) -> tuple[Any, list[Constraint]]:
    """(bare type, constraints) of `Annotated[T, c1, c2]`; (hint, []) for anything else."""
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        return base, [c for c in extras if isinstance(c, (Bound, PathExists))]
    return hint, []


def describe_constraints(constraints: list[Constraint]) -> str:
    return " and ".join(c.describe() for c in constraints)


def choices_of(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]`, or of a union of Literals (None passes too);
    None when the hint also admits values outside a Literal."""
    hint, _ = constraints_of(hint)
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) not in (typing.Union, _UnionType):
        return None
    choices: list[Any] = []
    for arg in typing.get_args(hint):
        if arg is type(None):
            continue
        found = choices_of(arg)
        if found is None:
            return None
        choices += [c for c in found if c not in choices]
    return tuple(choices)


_UnionType = type(int | str)


@functools.cache
def parameter_hints(func: Callable) -> dict[str, Any]:
    """Each parameter's evaluated hint, `Annotated` extras kept. Evaluated one by one, so a
    forward reference to an optional package or a TYPE_CHECKING-only name drops only that
    parameter (`typing.get_type_hints` would drop them all)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    # Annotation text is evaluated where it was written: the module of the __init__ that declares it.
    module = getattr(func.__init__ if inspect.isclass(func) else func, "__module__", None) or func.__module__
    namespace = dict(vars(sys.modules[module])) if module in sys.modules else {}
    hints: dict[str, Any] = {}
    for name, param in params.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - the module's own annotation text
            except Exception:  # a name only imported for type checkers: leave this parameter unchecked
                continue
        hints[name] = annotation
    return hints


def violation(value: Any, hint: Any) -> str | None:
    """What `value` breaks among the constraints and choices of `hint` (None when it is fine).
    Types are the config check's business; this only reads the declared bounds and choices."""
    if value is None:
        return None
    choices = choices_of(hint)
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(repr, choices))}"
    base, constraints = constraints_of(hint)
    failed = [c for c in constraints if not c.holds(value)]
    if failed:
        return f"must be {describe_constraints(constraints)}"
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (typing.Union, _UnionType):
        # Fine when one arm accepts it (`bool | Literal["warn"]` takes False); else the first arm's words.
        problems = [violation(value, arg) for arg in args if arg is not type(None)]
        return None if None in problems else problems[0]
    elif isinstance(value, (list, tuple)) and args and origin in _SEQUENCES:
        for index, item in enumerate(value):
            problem = violation(item, args[0] if len(args) == 1 or args[1] is Ellipsis else args[index % len(args)])
            if problem:
                return f"item {index} ({item!r}) {problem}"
    return None


_SEQUENCES = (list, tuple, collections.abc.Sequence)


def check_arguments(func: Callable, arguments: dict[str, Any]) -> None:
    """Raise ValueError for the first argument outside its declared bounds or choices. Constructors
    call it with `locals()`, so Python callers meet the bounds the config check reports."""
    hints = parameter_hints(func)
    owner = getattr(func, "__qualname__", str(func)).removesuffix(".__init__")
    for name, hint in hints.items():
        if name in arguments:
            problem = violation(arguments[name], hint)
            if problem:
                raise ValueError(f"{owner}: {name}={arguments[name]!r} {problem}.")
