"""Fail at composition, before anything is built, on a key nothing reads or a value its reader
does not accept. Every message names the key (the one the user sets, when the value reaches its
reader through `${...}`), the value, and the fix.

What is checked, node by node:
- `_target_` nodes against the target's signature: unknown keys, types, and the bounds and
  choices declared once in its hints (`ldm_train.constraints`: `PositiveInt`, `Literal[...]`);
  third-party targets (torch optimizers, Lightning's Trainer) get their bounds from
  `THIRD_PARTY_HINTS`.
- every other key must be read by something: a top-level setting (`root_settings`), a path
  (`paths_settings`), a config group's node, a `callbacks`/`logger` entry, or a `${...}`
  reference somewhere in the config. Anything else is a typo (`+optim.lrr`, `+lrr`) unless it
  lives under `extra:`, the namespace for a user's own values.
Cross-piece checks (channels, widths, hardware, files) are in `ldm_train.config_rules`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from ldm_train.config_types import matches, type_name
from ldm_train.constraints import (
    Ge,
    Gt,
    Le,
    NonNegativeFloat,
    OpenUnitInterval,
    PathExists,
    PositiveFloat,
    PositiveInt,
    parameter_hints,
    violation,
)

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXTRA = "extra"  # the user's own values: never checked, free to reference with ${extra.x}
COLLECTIONS = ("callbacks", "logger")  # named entries, each a `_target_` node or null
# Root nodes read by train.py itself (config groups are known from configs/ as well).
ROOT_NODES = ("module", "data", "trainer")
_MAX_LISTED_KEYS = 12


def root_settings(
    name: str,
    group: str | None,
    tags: Sequence[str],
    seed: Annotated[int, Ge(0), Le(2**32 - 1)],
    deterministic: bool,
    resume: Annotated[str, PathExists(sentinels=("auto", "never"))],
    optimized_metric: str,
    check_config: bool,
    check: Literal["train", "only"],
    stage_name: str,
    context_dim: PositiveInt,
    ddp_find_unused_parameters: bool,
) -> None:
    """The top-level settings train.py and the configs read (configs/train.yaml, stage files,
    text_encoder files); their hints are checked like a constructor's."""


def paths_settings(root_dir: str, data_dir: str, log_dir: str, sweep_dir: str, output_dir: str) -> None:
    """configs/paths: where data, runs and sweeps live."""


SETTINGS_NODES: dict[str, Callable] = {"": root_settings, "paths": paths_settings}

_BETAS = Sequence[OpenUnitInterval]
_OPTIMIZER_HINTS = {"lr": NonNegativeFloat, "betas": _BETAS, "weight_decay": NonNegativeFloat, "eps": PositiveFloat}
# Bounds and choices of parameters whose signatures we do not own, by the target's full name.
THIRD_PARTY_HINTS: dict[str, dict[str, Any]] = {
    "torch.optim.adam.Adam": _OPTIMIZER_HINTS,
    "torch.optim.adamw.AdamW": _OPTIMIZER_HINTS,
    "lightning.pytorch.trainer.trainer.Trainer": {
        "accelerator": Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"],
        "num_nodes": PositiveInt,
        "max_steps": Annotated[int, Ge(-1)],
        "max_epochs": Annotated[int, Ge(-1)] | None,
        "val_check_interval": Annotated[int | float, Gt(0)] | None,
        "check_val_every_n_epoch": PositiveInt | None,
        "limit_val_batches": Annotated[int | float, Ge(0)] | None,
        "log_every_n_steps": PositiveInt | None,
        "accumulate_grad_batches": PositiveInt,
        "gradient_clip_val": Annotated[int | float, Gt(0)] | None,
    },
    "lightning.pytorch.strategies.ddp.DDPStrategy": {"process_group_backend": Literal["nccl", "gloo", "mpi"] | None},
}


class ConfigError(ValueError):
    """The composed config has keys nothing reads or values their readers reject."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"Invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  - "
                         + "\n  - ".join(problems))


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every unknown key and every bad value in `cfg`."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)


def config_problems(cfg: DictConfig) -> list[str]:
    walk = _Walk(cfg)
    walk.root()
    return list(dict.fromkeys(walk.problems))


# -- where keys are read ---------------------------------------------------------------------------
_REFERENCE = re.compile(r"\$\{\s*(?:oc\.select:\s*)?([A-Za-z_][\w.]*)\s*[,}]")


def _references(cfg: DictConfig) -> set[str]:
    """Every dotted path a `${...}` names, with all its prefixes (a path whose child is read is read)."""
    found: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str) and "${" in value:
            for ref in _REFERENCE.findall(value):
                parts = ref.split(".")
                found.update(".".join(parts[: i + 1]) for i in range(len(parts)))

    visit(OmegaConf.to_container(cfg, resolve=False))
    return found


@functools.cache
def config_group_nodes() -> frozenset[str]:
    """Config group names: a root node of that name is the group's (`text_encoder` is written by
    its `@package _global_` options too); its keys are still checked."""
    return frozenset(folder.name for folder in CONFIG_DIR.iterdir() if folder.is_dir())


def _group_choice(group: str) -> str:
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return str(choices.get(group)) if choices.get(group) is not None else "null"


def _group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    return repr(OmegaConf.to_container(value, resolve=False) if isinstance(value, (DictConfig, ListConfig)) else value)


# -- the walk --------------------------------------------------------------------------------------
@dataclass
class _Walk:
    cfg: DictConfig

    def __post_init__(self) -> None:
        self.problems: list[str] = []
        self.reported: set[tuple[str, str]] = set()
        self.read = _references(self.cfg)
        self.known_leaves = self._known_leaves()

    def root(self) -> None:
        known = set(parameter_hints(root_settings)) | set(ROOT_NODES) | set(COLLECTIONS) | {EXTRA, "paths", "hydra"}
        known |= config_group_nodes()
        self._settings(self.cfg, "", known)
        for key in self.cfg.keys():
            if key in ("hydra", EXTRA) or key in parameter_hints(root_settings) or self._is_alias(self.cfg, key):
                continue
            child = self._value(self.cfg, key, str(key))
            if key in COLLECTIONS:
                self._collection(child, str(key))
            elif key in SETTINGS_NODES and isinstance(child, DictConfig):
                self._settings(child, str(key), set(parameter_hints(SETTINGS_NODES[key])))
            elif key in known or key in self.read:
                self.node(child, str(key), schema=True)

    def node(self, node: Any, path: str, schema: bool) -> None:
        """`schema`: every key must be read by something (False inside free-form values)."""
        if isinstance(node, ListConfig):
            for i in range(len(node)):
                self.node(self._value(node, i, f"{path}[{i}]"), f"{path}[{i}]", schema=False)
            return
        if not isinstance(node, DictConfig):
            return
        if "_target_" in node:
            self.target(node, path)
            for key in node.keys():
                if key not in _HYDRA_KEYS and not self._is_alias(node, key):
                    self.node(self._value(node, key, _join(path, key)), _join(path, key), schema=False)
            return
        whole = path in self.read and not any(r.startswith(path + ".") for r in self.read)
        for key in node.keys():
            full = _join(path, key)
            if self._is_alias(node, key):
                continue
            if schema and not whole and full not in self.read:
                self._unknown(node, key, full, sorted(k for k in map(str, node.keys()) if _join(path, k) in self.read))
                continue
            self.node(self._value(node, key, full), full, schema=schema and not whole)

    def target(self, node: DictConfig, path: str) -> None:
        name = node["_target_"]
        try:
            obj = get_object(name)
        except Exception as err:  # ImportError, AttributeError: both mean "no such target"
            self.problems.append(f"{_join(path, '_target_')}={name!r}: cannot import it ({err}); check the spelling "
                                 "of the module and class")
            return
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return  # builtins without a signature: nothing to check
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        hints = {**parameter_hints(obj), **THIRD_PARTY_HINTS.get(_full_name(obj), {})}
        valid = [p for p, v in params.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        if not node.get("_partial_", False):  # a partial node gets the rest of its arguments when it is called
            given = len(node.get("_args_", ()))
            for i, (param, spec) in enumerate((p, v) for p, v in params.items() if p != "self"):
                required = spec.default is inspect.Parameter.empty and spec.kind not in (spec.VAR_POSITIONAL,
                                                                                           spec.VAR_KEYWORD)
                if required and i >= given and param not in node:
                    self.problems.append(f"{path or 'the config'} ({name}): '{param}' has no default and no value; "
                                         f"set {_join(path, param)}=<value>")
        for key in node.keys():
            if key in _HYDRA_KEYS:
                continue
            if key not in params and not takes_kwargs:
                self._unknown(node, key, _join(path, key), valid, reader=name)
            elif key in hints:
                self._value_problem(node, key, _join(path, key), hints[key], reader=name)

    # -- pieces ------------------------------------------------------------------------------------
    def _settings(self, node: DictConfig, path: str, known: set[str]) -> None:
        hints = parameter_hints(SETTINGS_NODES[path])
        for key in node.keys():
            full = _join(path, key)
            if key in hints:
                self._value_problem(node, key, full, hints[key], reader="train.py")
            elif key not in known and full not in self.read and not self._is_alias(node, key):
                siblings = sorted(set(hints) | (known if not path else set()))
                self._unknown(node, key, full, siblings)

    def _collection(self, node: Any, path: str) -> None:
        if not isinstance(node, DictConfig):
            return
        for key in node.keys():
            child = self._value(node, key, _join(path, key))
            if isinstance(child, DictConfig) and "_target_" in child:
                self.node(child, _join(path, key), schema=True)
            elif child is not None:
                self.problems.append(
                    f"{_join(path, key)}={_show(child)}: every {path} entry is a `_target_` node (or null to drop "
                    f"one); give it a _target_, or put your own values under {EXTRA}:")

    def _value_problem(self, node: DictConfig, key: Any, path: str, hint: Any, reader: str) -> None:
        source = self._source(node, key, path)
        where = f"{path} (for {reader})" if source == path else f"{source} (read as {path} by {reader})"
        if OmegaConf.is_missing(node, key):
            self.problems.append(f"{where}: no value given (???); set {source}=<value>")
            return
        value = self._value(node, key, path)
        if isinstance(value, DictConfig) or value is _UNRESOLVED:
            return  # nested objects are checked by their own `_target_`
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        problem = f"expected {type_name(hint)}, got {value!r}" if not matches(value, hint) else None
        if problem is None and violation(value, hint):
            problem = f"got {value!r}, {violation(value, hint)}"
        if problem and (source, problem) not in self.reported:  # one report for a value several readers take
            self.reported.add((source, problem))
            self.problems.append(f"{where}: {problem}")

    def _unknown(self, node: DictConfig, key: Any, path: str, valid: list[str], reader: str | None = None) -> None:
        raw = node._get_node(key)
        value = raw if isinstance(raw, (DictConfig, ListConfig)) else getattr(raw, "_value", lambda: None)()
        close = difflib.get_close_matches(str(key), valid, n=1)
        if close:
            guess = _join(path.rsplit(".", 1)[0], close[0]) if "." in path else close[0]
            hint = f"did you mean '{close[0]}'?" if reader else f"did you mean '{guess}'?"
        else:  # maybe the right name at the wrong depth: `+lrr` for `optim.lr`
            anywhere = difflib.get_close_matches(str(key), list(self.known_leaves), n=1)
            hint = f"did you mean '{self.known_leaves[anywhere[0]]}'?" if anywhere else "nothing by that name is read."
        listed = ", ".join(valid[:_MAX_LISTED_KEYS]) + (", ..." if len(valid) > _MAX_LISTED_KEYS else "")
        group = path.split(".", 1)[0]
        if reader:
            self.problems.append(f"{path}={_show(value)} (for {reader}): unknown key '{key}'; {hint} Valid keys: {listed}")
        elif not valid and group in config_group_nodes() and "." in path:
            # Values for a piece whose chosen option builds nothing (evaluation=none with an experiment's presets).
            self.problems.append(
                f"{path}={_show(value)}: {group}={_group_choice(group)} reads no keys, so nothing reads it; "
                f"choose another {group} option ({', '.join(_group_options(group))}) or drop the value")
        else:
            self.problems.append(
                f"{path}={_show(value)}: unknown key '{key}' (nothing reads it); {hint} Keys here: {listed}. "
                f"Keep values of your own under {EXTRA}: (+{EXTRA}.{key}=...)")

    def _known_leaves(self) -> dict[str, str]:
        """Last path component → a full path that is read, for "did you mean" across depths."""
        leaves: dict[str, str] = {}
        for path in sorted(self.read, key=len):
            leaves.setdefault(path.rsplit(".", 1)[-1], path)
        return leaves

    def _source(self, node: DictConfig, key: Any, path: str) -> str:
        """The key the user sets: follows `${a.b}` (a plain reference) back to where the value lives."""
        seen = {path}
        child = node._get_node(key)
        while child is not None and OmegaConf.is_interpolation(child):
            match = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", str(child._value()))
            if not match or match.group(1) in seen:
                break
            path = match.group(1)
            seen.add(path)
            parent, _, last = path.rpartition(".")
            holder = OmegaConf.select(self.cfg, parent, throw_on_resolution_failure=False) if parent else self.cfg
            child = holder._get_node(last) if isinstance(holder, DictConfig) and last in holder else None
        return path

    def _value(self, node: DictConfig | ListConfig, key: Any, path: str) -> Any:
        try:
            return node[key]  # resolves `${...}`: `optim.lr=abc` is caught where it is used
        except InterpolationKeyError as err:
            raw = node._get_node(key)._value()
            self.problems.append(f"{path}={raw!r}: {str(err).splitlines()[0]}; "
                                 f"reference an existing key, or quote a literal '${{'")
        except Exception:  # resolvers that only work inside a run (${hydra:...}): checked there
            pass
        return _UNRESOLVED

    @staticmethod
    def _is_alias(node: DictConfig | ListConfig, key: Any) -> bool:
        """`module.autoencoder: ${autoencoder}`: the same node twice; checked once, where it lives."""
        child = node._get_node(key)
        return child is not None and OmegaConf.is_interpolation(child) and bool(
            re.fullmatch(r"\$\{[A-Za-z_][\w.]*\}", str(child._value()))
        ) and isinstance(_try(lambda: node[key]), DictConfig)


_UNRESOLVED = object()


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return _UNRESOLVED


def _full_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
