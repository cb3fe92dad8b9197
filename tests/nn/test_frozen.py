"""nn/frozen.py: one mechanism for every frozen part (VAE, text encoder, LPIPS)."""

import copy

import pytest
import torch
from torch import nn

from ldm_train.nn.frozen import Frozen, freeze, trainable_parameters


class Owner(nn.Module):
    def __init__(self, frozen: nn.Module):
        super().__init__()
        self.part = frozen
        self.head = nn.Linear(4, 4)


def _pretrained() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))


def test_freeze_keeps_the_class_and_stays_in_eval_without_gradients():
    part = freeze(_pretrained())
    assert isinstance(part, nn.Sequential) and isinstance(part, Frozen)
    assert type(freeze(_pretrained())) is type(part)  # one derived class per class
    owner = Owner(part).train()
    assert owner.head.training and not part.training and not any(m.training for m in part.modules())
    assert all(not p.requires_grad for p in part.parameters())
    assert {id(p) for p in trainable_parameters(owner)} == {id(p) for p in owner.head.parameters()}
    x = torch.randn(3, 4)
    torch.testing.assert_close(part(x), part(x))  # dropout off, running statistics used


def test_owner_state_leaves_the_frozen_part_out_and_loads_strictly():
    part = freeze(_pretrained())
    reference = nn.Module.state_dict(part)
    assert set(part.state_dict()) == set(reference) == {"0.weight", "0.bias", "2.weight", "2.bias",
                                                         "2.running_mean", "2.running_var", "2.num_batches_tracked"}
    owner = Owner(part)
    state = owner.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    fresh = Owner(freeze(_pretrained()))
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.head.weight, owner.head.weight)
    for key, value in nn.Module.state_dict(fresh.part).items():
        assert torch.equal(value, reference[key]), key
    with pytest.raises(RuntimeError, match="head.bias"):
        fresh.load_state_dict({"head.weight": state["head.weight"]}, strict=True)


def test_a_deep_copy_stays_frozen():
    copied = copy.deepcopy(Owner(freeze(_pretrained())))
    assert isinstance(copied.part, Frozen) and set(copied.state_dict()) == {"head.weight", "head.bias"}
    assert not copied.train().part.training


class WrittenFrozen(Frozen):
    """A class written to be frozen (subclasses Frozen itself): pickled by name."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.freeze()


@pytest.mark.parametrize("make", [lambda: freeze(_pretrained()), WrittenFrozen], ids=["freeze()", "subclass"])
def test_a_frozen_module_pickles_whole_and_stays_frozen(make):
    """ddp_spawn and torch.save(module) pickle the owner: a class made by freeze() is not importable by name."""
    import pickle

    owner = Owner(make())
    restored = pickle.loads(pickle.dumps(owner))
    assert type(restored.part) is type(owner.part) and isinstance(restored.part, Frozen)
    for key, value in nn.Module.state_dict(owner.part).items():
        assert torch.equal(nn.Module.state_dict(restored.part)[key], value), key
    assert set(restored.state_dict()) == {"head.weight", "head.bias"}
    assert not restored.train().part.training and not any(p.requires_grad for p in restored.part.parameters())
