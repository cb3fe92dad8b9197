"""Frozen modules: the one mechanism for pretrained parts that are never trained and never checkpointed
(phase 2's VAE and text encoder, phase 1's LPIPS).

A frozen module is conditioning or a fixed metric, not model: training it would change what the trained
network sees, and storing its public or exported weights in every checkpoint is waste — its owner rebuilds
it from its own source. A frozen module

- has `requires_grad` off and stays in eval mode (dropout off, norms fixed), whatever its owner's `train()` asks;
- contributes nothing to an owner's `state_dict()`, and an owner's strict `load_state_dict` keeps its current
  weights, so an owning LightningModule's checkpoint holds only trainable state and still loads strictly;
- still returns its own weights from its own `state_dict()` (exports, comparisons).

Classes written to be frozen subclass `Frozen` and call `self.freeze()` at the end of `__init__`; any other
module instance (a loaded VAE) becomes frozen in place with `freeze(module)`.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Frozen(nn.Module):
    """Base class (or mixin, first in the bases) of modules that are never trained and never checkpointed."""

    frozen = True  # marker for owners that treat frozen children specially (model summaries, FSDP)

    def freeze(self) -> None:
        self.requires_grad_(False)
        nn.Module.train(self, False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        if destination is None and not args:  # asked directly: the module's own weights
            return super().state_dict(prefix=prefix, keep_vars=keep_vars)
        # nn.Module.state_dict recurses by calling each child's state_dict(destination=..., prefix=...):
        # returning the destination untouched leaves this subtree out of the owner's state dict.
        return destination if destination is not None else OrderedDict()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Children are loaded from the same dict after this call: fill in our own (current) tensors for
        # every key the checkpoint lacks, so a strict load neither reports them missing nor changes them.
        for key, tensor in nn.Module.state_dict(self, prefix=prefix, keep_vars=True).items():
            state_dict.setdefault(key, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(nn.Module.parameters(self)).device

    def __reduce_ex__(self, protocol: int):
        # A class made by `freeze` is not importable by name, which pickle needs (ddp_spawn, torch.save of a
        # whole module): rebuild it from the class it froze, then restore the instance's state as usual.
        base = type(self).__dict__.get("_frozen_base")
        if base is None:  # a class written to be frozen: pickled by name like any other
            return super().__reduce_ex__(protocol)
        return _new_frozen, (base,), self.__getstate__()


@functools.cache
def _frozen_class(cls: type[nn.Module]) -> type[nn.Module]:
    """`cls` with `Frozen`'s behaviour first in its method order; one class per `cls`."""
    namespace = {"__module__": cls.__module__, "__doc__": cls.__doc__, "_frozen_base": cls}
    return type(f"Frozen{cls.__name__}", (Frozen, cls), namespace)


def _new_frozen(cls: type[nn.Module]) -> nn.Module:
    """An empty instance of `cls`'s frozen class, for unpickling (its state is set by pickle afterwards)."""
    return object.__new__(_frozen_class(cls))


def freeze(module: ModuleT) -> ModuleT:
    """Make `module` frozen in place (see the module docstring) and return it. It stays an instance of its
    own class (isinstance checks, attributes and methods unchanged); frozen modules are returned as they are."""
    if not isinstance(module, Frozen):
        module.__class__ = _frozen_class(type(module))
    module.freeze()
    return module


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters an optimizer should see: frozen parts (requires_grad False) are left out."""
    return (p for p in module.parameters() if p.requires_grad)
