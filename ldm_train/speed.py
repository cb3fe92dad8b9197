"""Speed switches shared by both phases and scripts/bench.py: memory format, torch.compile, the AdamW
implementation, and keeping the frozen VAE in fp32 under autocast; the device the commands pick by default; and
the activation memory of a forward pass (what gradient checkpointing saves; scripts/bench.py's exact memory rows).

Each switch is a config flag (README "Speed switches"); tests/test_speed_switches.py checks that the loss
after a few steps with and without it agrees within a stated tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import torch
from torch import nn

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
AdamWImplementation = Literal["auto", "fused", "foreach", "for_loop"]
COMPILE_MODES = get_args(CompileMode)
ADAMW_IMPLEMENTATIONS = get_args(AdamWImplementation)
T = TypeVar("T")


@dataclass(frozen=True)
class SpeedSettings:
    """How a network is run; the defaults are what `ldm-train` does unless told otherwise."""

    channels_last: bool = False  # NHWC activations and conv weights (faster convolutions on tensor cores)
    compile: bool = False  # torch.compile the module in place (state-dict keys unchanged), static shapes
    compile_mode: CompileMode = "default"  # torch.compile's mode
    adamw: AdamWImplementation = "auto"  # see `adamw_options`

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {self.compile_mode!r}: use one of {', '.join(COMPILE_MODES)}")
        if self.adamw not in ADAMW_IMPLEMENTATIONS:
            raise ValueError(f"adamw {self.adamw!r}: use one of {', '.join(ADAMW_IMPLEMENTATIONS)}")


def prepare_module(module: nn.Module, settings: SpeedSettings) -> nn.Module:
    """Apply the memory format and compilation in place; returns `module` (same object, same parameters).

    `nn.Module.compile` wraps only `forward`, so the state dict, the optimizer's parameters and the EMA copy
    are untouched. `dynamic=False`: one graph per input shape, compiled at its first call and reused after
    (steps of one shape never recompile: tests/test_speed_switches.py). The data keeps shapes fixed with a fixed
    resolution and fixed-length epochs (`data.samples_per_epoch`: every training batch is full); a single exact
    pass (no `samples_per_epoch`) ends with up to one partial batch per loader worker, and each new batch size
    compiles once more.
    """
    if settings.channels_last:
        module.to(memory_format=torch.channels_last)
    if settings.compile:
        module.compile(mode=settings.compile_mode, dynamic=False)
    return module


def adamw_options(implementation: AdamWImplementation) -> dict[str, bool | None]:
    """torch.optim.AdamW's `foreach` / `fused` arguments for one implementation.

    fused: one kernel for all parameters (CUDA and CPU); foreach: one kernel per operation over lists of
    tensors; for_loop: one parameter at a time; auto: torch's own choice (foreach on CUDA, for_loop on CPU).
    All give the same update up to floating-point summation order.
    """
    return {
        "auto": {"foreach": None, "fused": None},
        "fused": {"foreach": None, "fused": True},
        "foreach": {"foreach": True, "fused": None},
        "for_loop": {"foreach": False, "fused": None},
    }[implementation]


def build_adamw(
    params: Iterable[nn.Parameter], lr: float, settings: SpeedSettings, **kwargs
) -> torch.optim.AdamW:
    """AdamW with `settings.adamw`'s implementation (the configs set `fused` on torch.optim.AdamW directly)."""
    return torch.optim.AdamW(list(params), lr=lr, **adamw_options(settings.adamw), **kwargs)


def full_precision(device_type: str):
    """A context that turns autocast off, for networks that must run in fp32 (the frozen VAE: fp16/bf16
    VAEs are known to produce NaNs and banding). Inputs must be cast to fp32 by the caller."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def default_device(local_rank: int = 0) -> torch.device:
    """The machine's accelerator when there is one (CUDA or ROCm, MPS, XPU: `torch.accelerator`), else the CPU;
    on a node of several devices the one of this process's `local_rank` (torchrun's LOCAL_RANK). What
    `--device auto` means for sampling, evaluation, the latent cache and the bench."""
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return torch.device("cpu")
    count = torch.accelerator.device_count()
    if not 0 <= local_rank < count:  # two ranks on one device would run, slowly, or run out of memory
        raise ValueError(f"local rank {local_rank} but this node has {count} {accelerator.type} device(s): start at "
                         f"most {count} processes per node (torchrun --nproc-per-node), or pass --device")
    return torch.device(accelerator.type, local_rank)


def saved_activation_bytes(forward: Callable[[], T], parameters: Iterable[torch.Tensor] = ()) -> tuple[int, T]:
    """(bytes autograd saves for backward while `forward()` runs, its output): the activation memory of a training
    step, exact and independent of the allocator (torch.autograd.graph.saved_tensors_hooks sees every saved tensor;
    a storage saved twice counts once; `parameters`, the network's, are left out; under autocast their bf16
    copies count). A checkpointed block's own tensors go to torch.utils.checkpoint's hooks and do not count."""
    excluded = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()  # returned: the saved tensors live as long as its graph
    return sum(storages.values()), output
