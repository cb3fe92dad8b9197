"""Fail at composition, before any model is built, when a `_target_` node has a key or a value
its constructor does not take.

Hydra itself rejects unknown config groups/options and command-line keys that do not exist; this
check covers what Hydra cannot see: keys inside a `_target_` node that the target's signature
does not accept (a misspelt `num_res_block`), and values of the wrong type for an annotated
parameter (`ch: "wide"`), with the config path, the valid keys and the closest match.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """A config node does not match the signature of its `_target_`."""


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every bad key/value under any `_target_` in `cfg`."""
    problems: list[str] = []
    _walk(cfg, "", problems)
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_target(node, path, problems)
        for key in node.keys():
            child = node._get_node(key)
            if child is not None and _is_interpolation_to_other_node(child):
                continue  # the referenced node is checked where it lives
            _walk(node[key] if not OmegaConf.is_missing(node, key) else None, _join(path, key), problems)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", problems)


def _is_interpolation_to_other_node(child: Any) -> bool:
    # `${model.autoencoder}` appears twice in the tree; report problems once, at the source.
    return OmegaConf.is_interpolation(child) and str(child._value()).count("${") == 1 and str(
        child._value()
    ).startswith("${") and str(child._value()).endswith("}") and ":" not in str(child._value())


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_target(node: DictConfig, path: str, problems: list[str]) -> None:
    target = node["_target_"]
    try:
        obj = get_object(target)
    except Exception as err:  # ImportError, AttributeError: both mean "no such target"
        problems.append(f"{path or '<root>'}._target_: cannot import '{target}' ({err})")
        return
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check
    params = signature.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(obj if inspect.isfunction(obj) else obj.__init__)
    except Exception:  # forward references to optional packages: skip the type check
        hints = {}
    for key in node.keys():
        if key in _HYDRA_KEYS:
            continue
        where = f"{_join(path, key)} (for {target})"
        if key not in params:
            if not takes_kwargs:
                valid = [p for p in params if p not in ("self", "args", "kwargs")]
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                problems.append(f"{where}: unknown key '{key}'{hint} Valid keys: {', '.join(valid)}")
            continue
        if key not in hints or OmegaConf.is_missing(node, key):
            continue
        try:
            value = node[key]  # resolves `${...}`, so `optim.lr=abc` is caught where it is used
        except Exception:  # an interpolation that only resolves at run time
            continue
        if isinstance(value, DictConfig):
            continue  # nested objects are checked by their own `_target_`
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if not _matches(value, hints[key]):
            problems.append(f"{where}: expected {_type_name(hints[key])}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    """Best-effort structural check for the types configs hold; unknown types pass."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
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
            return all(_matches(v, inner) for v in value)
        if origin is tuple:
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if origin is Callable or hint is Callable:
        return not isinstance(value, (int, float, str, bool, list))
    if isinstance(hint, type) and value is not None and isinstance(value, (int, float, str, bool)):
        return isinstance(value, hint) or (hint is float and isinstance(value, int))
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
