"""Code defaults equal the YAML, or the YAML leaves them out: in each stage's default config, every value a
`_target_` node (nested and `_partial_` ones included) writes literally equals the default of that parameter
in the target's signature; so does every value of a target that only another option builds (data=webdataset,
text_encoder=minilm, trainer=fsdp's strategy). A `${...}` reference is wiring to a setting's one home, not a
restated default, and is not compared; nor are parameters without a default (the YAML is their only home)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.helpers import CONFIG_DIR, STAGES, compose_config, compose_option, config_options

OWN_PACKAGE = "ldm_train"
TARGET_LINE = re.compile(r"^\s*_target_:\s*(\S+)", re.MULTILINE)
# Config groups whose target's constructor defaults are a preset other than the group's default option:
# group -> (the option the code defaults equal, why the default option differs).
PRESET_DEFAULTS = {
    "autoencoder": ("kl_f8", "AutoencoderKL() is the Stable Diffusion VAE; `small` sizes it for 32×32 data"),
    "unet": ("sd15", "UNet() is the Stable Diffusion 1.x UNet; `small` sizes it for 8×8 latents"),
}


def default_config(stage: str, overrides: list[str], root: Path) -> DictConfig:
    # evaluation=<data>_<stage> is the root config's choice; compose_config turns it off unless it is named.
    return compose_config([f"stage={stage}", f"evaluation=fashion_mnist_{stage}", *overrides], root)


def target_nodes(node: DictConfig | ListConfig, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(path, node) of every `_target_` node under `node`, in lists too; a `${node}` alias is not followed
    (the node is visited where it lives)."""
    if isinstance(node, DictConfig) and "_target_" in node:
        yield path, node
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(child):
            yield from target_nodes(child, f"{path}.{key}" if path else str(key))


def signature_owner(obj: Any) -> str:
    """The module whose code defines `obj`'s signature: a class's first `__init__` in its MRO."""
    if inspect.isclass(obj):
        obj = next((k for k in obj.__mro__ if "__init__" in vars(k)), obj)
    return obj.__module__


def plain(value: Any) -> Any:
    """Tuples as lists, containers as Python objects: YAML and code spell sequences differently."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def has_reference(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, list):
        return any(has_reference(v) for v in value)
    return isinstance(value, dict) and any(has_reference(v) for v in value.values())


def mismatches(path: str, node: DictConfig) -> list[str]:
    """`key: YAML value vs code default` for each literal value of `node` that differs from its default."""
    target = get_object(node["_target_"])
    # Signatures we do not own (torch optimizers, Lightning's Trainer, callbacks and loggers, and our
    # subclasses that keep Lightning's __init__): their defaults are not ours to change.
    if signature_owner(target).split(".")[0] != OWN_PACKAGE:
        return []
    found = []
    for name, parameter in inspect.signature(target).parameters.items():
        if name not in node or parameter.default is inspect.Parameter.empty:
            continue
        if OmegaConf.is_interpolation(node._get_node(name)) or OmegaConf.is_missing(node, name):
            continue  # wiring, or a value the user must give (???)
        value = plain(node[name])
        if has_reference(value) or (isinstance(value, dict) and "_target_" in value):
            continue  # wiring inside a list, or a nested object (compared as its own node)
        if value != plain(parameter.default):
            found.append(f"{path}.{name}: YAML {value!r} vs code default {parameter.default!r} ({node['_target_']})")
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_default_config_values_equal_the_code_defaults(stage, tmp_path):
    cfg = default_config(stage, [], tmp_path)
    nodes = list(target_nodes(cfg))
    assert {"module", "module.loss" if stage == "autoencoder" else "module.sampler", "trainer"} <= dict(nodes).keys()
    found = [m for path, node in nodes if path not in PRESET_DEFAULTS for m in mismatches(path, node)]
    assert not found, "code defaults that differ from the default config:\n" + "\n".join(found)


@pytest.mark.parametrize("group", sorted(PRESET_DEFAULTS))
def test_network_defaults_are_the_named_preset(group, tmp_path):
    option, _reason = PRESET_DEFAULTS[group]
    stage = "autoencoder" if group == "autoencoder" else "ldm"
    cfg = default_config(stage, [f"{group}={option}"], tmp_path)
    assert not mismatches(group, cfg[group])
    small = default_config(stage, [], tmp_path)
    assert mismatches(group, small[group]), f"{group}'s default option equals the code defaults: drop it from PRESET_DEFAULTS"


def test_a_differing_default_is_named_with_both_values(tmp_path):
    cfg = default_config("autoencoder", ["module.loss.disc_start=7"], tmp_path)
    assert mismatches("module.loss", cfg.module.loss) == [
        "module.loss.disc_start: YAML 7 vs code default 2001 (ldm_train.autoencoder.losses.AutoencoderLoss)"]


def named_targets(group: str, option: str) -> set[str]:
    """The `_target_`s an option file names (as written: a target with `${...}` in it counts as new)."""
    return set(TARGET_LINE.findall((Path(CONFIG_DIR) / group / f"{option}.yaml").read_text()))


@pytest.mark.parametrize("stage", STAGES)
def test_targets_only_another_option_builds_default_to_its_values(stage, tmp_path):
    built = {node["_target_"] for _, node in target_nodes(default_config(stage, [], tmp_path))}
    checked, found = set(), {}
    for option_stage, group, option in config_options():
        if option_stage != stage or not named_targets(group, option) - built:
            continue
        for path, node in target_nodes(compose_option(stage, group, option, tmp_path)):
            if node["_target_"] not in built:
                checked.add(node["_target_"])
                found.update({m: f"{group}={option}" for m in mismatches(path, node) if m not in found})
    assert {"ldm_train.data.datamodule.WebDatasetDataModule", "ldm_train.distributed.FrozenAwareFSDP"} <= checked
    assert not found, "code defaults that differ from the only options that use them:\n" + "\n".join(
        f"{m} (first in {where})" for m, where in found.items())
