"""The composition-time check names bad keys, types, ranges and choices before anything is built,
with bounds declared once in the constructor's hints."""

from collections.abc import Sequence
from typing import Literal

import pytest
from omegaconf import OmegaConf

from ldm_train.command_line import command_line_problems, explain_composition_error
from ldm_train.config_check import ConfigError, check_config
from ldm_train.constraints import OpenUnitInterval, PositiveInt, check_arguments


class Net:
    def __init__(self, channels: PositiveInt, mult: Sequence[PositiveInt], mode: Literal["a", "b"] = "a",
                 scale: float = 1.0, name: str | None = None, drop: OpenUnitInterval | None = None) -> None:
        check_arguments(Net.__init__, locals())


TARGET = f"{__name__}.Net"


def net(**values):
    return {"_target_": TARGET, "channels": 8, "mult": [1], **values}


def problems_of(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        check_config(OmegaConf.create(cfg))
    return str(err.value)


def test_valid_config_passes():
    check_config(OmegaConf.create({"module": net(mult=[1, 2], scale=2, drop=None)}))


def test_misspelt_key_is_named_with_suggestion():
    msg = problems_of({"module": net(), "data": net(chanels=3)})
    assert "data.chanels=3" in msg and "did you mean 'channels'" in msg and "Valid keys" in msg


@pytest.mark.parametrize(
    "key,value,expected",
    [("channels", "wide", "expected int, got 'wide'"), ("mult", [1, "x"], "expected Sequence[int]"),
     ("mode", "c", "got 'c', must be one of 'a', 'b'"), ("scale", "big", "expected float, got 'big'"),
     ("channels", 0, "got 0, must be >= 1"), ("mult", [1, 0], "item 1 (0) must be >= 1"),
     ("drop", 1.0, "got 1.0, must be >= 0 and < 1")],
)
def test_wrong_value_is_named_with_what_is_valid(key, value, expected):
    msg = problems_of({"module": net(**{key: value})})
    assert f"module.{key}" in msg and expected in msg


def test_constructor_enforces_the_same_bounds():
    with pytest.raises(ValueError, match=r"Net: drop=1.5 must be >= 0 and < 1"):
        Net(channels=1, mult=[1], drop=1.5)
    with pytest.raises(ValueError, match=r"mode='c' must be one of 'a', 'b'"):
        Net(channels=1, mult=[1], mode="c")


def test_interpolated_values_are_named_by_the_key_the_user_sets():
    msg = problems_of({"optim": {"lr": "fast"}, "module": net(scale="${optim.lr}")})
    assert "optim.lr (read as module.scale by tests.test_config_check.Net): expected float, got 'fast'" in msg


@pytest.mark.parametrize("cfg,key,guess", [
    ({"optim": {"lr": 1.0, "lrr": 2.0}, "module": net(scale="${optim.lr}")}, "optim.lrr=2.0", "did you mean 'optim.lr'"),
    ({"optim": {"lr": 1.0}, "lrr": 2.0, "module": net(scale="${optim.lr}")}, "lrr=2.0", "did you mean 'optim.lr'"),
    ({"optim": {"lr": 1.0, "deep": {"lrr": 2}}, "module": net(scale="${optim.lr}")}, "optim.deep=", "+extra.deep"),
])
def test_keys_nothing_reads_are_errors_at_every_depth(cfg, key, guess):
    msg = problems_of(cfg)
    assert key in msg and guess in msg and "nothing reads it" in msg


def test_extra_namespace_and_referenced_keys_are_accepted():
    cfg = {"extra": {"note": "baseline", "base": 2.0}, "optim": {"lr": "${extra.base}"}, "module": net(scale="${optim.lr}")}
    check_config(OmegaConf.create(cfg))


def test_unknown_target_is_named():
    assert "cannot import it" in problems_of({"module": {"_target_": "ldm_train.nope.Net"}})


def test_missing_value_names_the_key():
    assert "module.channels (for tests.test_config_check.Net): no value given (???)" in problems_of(
        {"module": net(channels="???")})


def test_a_required_argument_left_out_is_named_unless_the_node_is_partial_or_positional():
    cfg = {"module": {"_target_": TARGET, "mult": [1]}}  # `channels` has no default
    assert "module (tests.test_config_check.Net): 'channels' has no default and no value; set module.channels=<value>" \
        in problems_of(cfg)  # fmt: skip
    check_config(OmegaConf.create({"module": {**cfg["module"], "_partial_": True}}))  # given when it is called
    check_config(OmegaConf.create({"module": {"_target_": TARGET, "_args_": [8, [1]]}}))  # given by position


def test_command_line_brace_pattern_and_repeated_key_are_named():
    (grammar,) = command_line_problems(["data.train_shards=/d/s-{000..009}.tar"])
    assert "`data.train_shards=/d/s-{000..009}.tar`" in grammar and """'data.train_shards="/d/s-{000..009}.tar"'""" in grammar
    (repeated,) = command_line_problems(["stage=ldm", "data.train_shards=/d/0.tar", "data.train_shards=/d/1.tar"])
    assert "data.train_shards is given 2 times" in repeated
    (flag,) = command_line_problems(["--dry-run", "-m", "--cfg", "job", 'data.train_shards="/d/s-{0..9}.tar"'])
    assert "check=only" in flag


def test_composition_error_names_the_override():
    cause = KeyError("Interpolation key 'nope' not found\n    full_key: hydra.run.dir")
    err = RuntimeError("resolving the run directory")
    err.__cause__ = cause
    msg = explain_composition_error(err, ["stage=ldm", "data.resolution=${nope}"])
    assert msg.startswith("data.resolution=${nope}: refers to ${nope}")
