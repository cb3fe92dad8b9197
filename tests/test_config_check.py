"""The composition-time check names bad keys and types before anything is built."""

from typing import Literal

import pytest
from omegaconf import OmegaConf

from ldm_train.config_check import ConfigError, check_config


class Net:
    def __init__(self, channels: int, mult: list[int], mode: Literal["a", "b"] = "a", scale: float = 1.0,
                 name: str | None = None) -> None:
        pass


TARGET = f"{__name__}.Net"


def test_valid_config_passes():
    check_config(OmegaConf.create({"net": {"_target_": TARGET, "channels": 8, "mult": [1, 2], "scale": 2}}))


def test_misspelt_key_is_named_with_suggestion():
    cfg = OmegaConf.create({"model": {"net": {"_target_": TARGET, "channels": 8, "mult": [1], "chanels": 3}}})
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    msg = str(err.value)
    assert "model.net.chanels" in msg and "did you mean 'channels'" in msg and "Valid keys" in msg


@pytest.mark.parametrize(
    "key,value,expected",
    [("channels", "wide", "expected int"), ("mult", [1, "x"], "list"), ("mode", "c", "Literal"), ("scale", "big", "float")],
)
def test_wrong_type_is_named(key, value, expected):
    node = {"_target_": TARGET, "channels": 8, "mult": [1]}
    node[key] = value
    with pytest.raises(ConfigError) as err:
        check_config(OmegaConf.create({"net": node}))
    assert f"net.{key}" in str(err.value) and expected in str(err.value)


def test_interpolated_values_are_checked_where_used():
    cfg = OmegaConf.create({"optim": {"lr": "fast"}, "opt": {"_target_": TARGET, "channels": 1, "mult": [1],
                                                            "scale": "${optim.lr}"}})
    with pytest.raises(ConfigError, match="opt.scale"):
        check_config(cfg)


def test_unknown_target_is_named():
    with pytest.raises(ConfigError, match="cannot import 'ldm_train.nope.Net'"):
        check_config(OmegaConf.create({"x": {"_target_": "ldm_train.nope.Net"}}))
