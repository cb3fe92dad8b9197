"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2, §3
and App. C): choose the EMA length after training.

Power-function EMA (§3.1). The average of the weights θ(τ) seen up to step t with the weight profile
p_t(τ) ∝ τ^γ on [0, t],

    θ̂_γ(t) = (γ + 1)/t^(γ+1) · ∫_0^t τ^γ·θ(τ) dτ,      tracked as θ̂ ← β·θ̂ + (1 − β)·θ(t),  β_γ(t) = (1 − 1/t)^(γ+1),

has a length relative to t that does not change during training: σ_rel = √(γ + 1)/((γ + 2)·√(γ + 3)) is the
std of p_t measured in units of t. EDM2 tracks two profiles (σ_rel 0.05 and 0.10) and saves them every N steps.

Reconstruction (App. C.2). Every snapshot i is an average of θ with a known profile p_i (its γ_i, its step t_i).
The profile of any other length and end step, p*, is approximated by Σ_i x_i·p_i with x the least-squares
solution of the Gram system A·x = b, A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p*⟩ (inner products in closed form,
`profile_inner_products`), and the weights are then Σ_i x_i·θ̂_i. The per-step EMA of `lit/ema.py` stays as it is.

Snapshots are `<dirpath>/step-<step>.safetensors`, the tracked state of every profile under `sigma_rel=<σ>/`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from ldm_train.constraints import PositiveInt
from ldm_train.files import save_safetensors_atomic

log = logging.getLogger(__name__)

EDM2_SIGMA_RELS = (0.05, 0.10)  # the two profiles EDM2 tracks (§3.2)
SNAPSHOT_GLOB = "step-*.safetensors"
METADATA_KEY = "posthoc_ema"


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """γ of the power-function profile with relative std σ_rel: the largest real root of
    γ³ + 7γ² + (16 − σ_rel⁻²)·γ + (12 − σ_rel⁻²) = 0 (σ_rel² = (γ + 1)/((γ + 2)²·(γ + 3)), EDM2 App. C.1)."""
    if not 0 < sigma_rel < gamma_to_sigma_rel(0.0):
        raise ValueError(f"sigma_rel must lie in (0, {gamma_to_sigma_rel(0.0):.4f}) (EDM2 uses 0.05-0.2), got {sigma_rel}")
    inv = sigma_rel**-2
    return float(np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv]).real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = √(γ + 1)/((γ + 2)·√(γ + 3)), the std of p(τ) ∝ τ^γ on [0, 1]."""
    return float(np.sqrt(gamma + 1) / ((gamma + 2) * np.sqrt(gamma + 3)))


def power_ema_beta(gamma: float, step: int) -> float:
    """β_γ(t) = (1 − 1/t)^(γ+1), the decay of the update at step t ≥ 1 (0 at t = 1: the average starts at θ(1))."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def profile_inner_products(
    t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray
) -> np.ndarray:  # broadcast shapes -> broadcast shape
    """⟨p_a, p_b⟩ = ∫ p_a·p_b dτ for p_t,γ(τ) = (γ + 1)·τ^γ/t^(γ+1) on [0, t]:
    (γ_a + 1)(γ_b + 1)/(γ_a + γ_b + 1) · (min t)^(γ_a+γ_b+1)/(t_a^(γ_a+1)·t_b^(γ_b+1)), written without overflow."""
    ratio = t_a / t_b
    exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio**exponent / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_coefficients(
    steps: Sequence[float], sigma_rels: Sequence[float], target_step: float, target_sigma_rels: Sequence[float]
) -> np.ndarray:  # -> (snapshots, targets)
    """x with Σ_i x_i·p_i closest (L2) to each target profile: the solution of A·x = b (module docstring)."""
    t = np.asarray(steps, dtype=np.float64).reshape(-1, 1)
    gamma = np.asarray([sigma_rel_to_gamma(s) for s in sigma_rels], dtype=np.float64).reshape(-1, 1)
    target_gamma = np.asarray([sigma_rel_to_gamma(s) for s in target_sigma_rels], dtype=np.float64).reshape(1, -1)
    gram = profile_inner_products(t, gamma, t.T, gamma.T)  # snapshots × snapshots
    rhs = profile_inner_products(t, gamma, np.full_like(target_gamma, float(target_step)), target_gamma)
    return np.linalg.solve(gram, rhs)


class PostHocEMA(L.Callback):
    """Track power-function EMAs of `pl_module.<attribute>` after every optimizer step and save snapshots of them
    every `every_n_steps` steps (rank 0). Off (no tracking, no cost) while `every_n_steps` is None.

    The tracked averages are part of the callback's state, so a resumed run continues them exactly. Under DDP every
    rank tracks the same averages (rank 0 writes); trainer=fsdp is not supported (the UNet's state dict is sharded).
    """

    def __init__(
        self,
        sigma_rels: Sequence[float] = EDM2_SIGMA_RELS,  # relative lengths of the tracked profiles (EDM2: 0.05, 0.10)
        every_n_steps: PositiveInt | None = None,  # snapshot interval in optimizer steps; None: off
        dirpath: str | None = None,  # where snapshots go (the stage config: <run>/posthoc_ema)
        attribute: str = "unet",  # the averaged network, an attribute of the LightningModule
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (or null to turn post-hoc EMA off), got {every_n_steps}")
        if every_n_steps is not None and dirpath is None:
            raise ValueError("post-hoc EMA snapshots need a dirpath")
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.every_n_steps = every_n_steps
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.attribute = attribute
        self.step = 0  # the optimizer step the averages include
        self.saved_step = 0
        self.averages: list[dict[str, Tensor]] | None = None  # one state dict (float32) per profile
        self._source: tuple[L.Trainer, L.LightningModule] | None = None

    def _catch_up(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fold in the weights of every optimizer step not yet averaged (at most one: called after each batch)."""
        step = trainer.global_step
        if step <= self.step:
            return
        state = getattr(pl_module, self.attribute).state_dict()
        if self.averages is None:
            self.averages = [{k: v.detach().float().clone() for k, v in state.items()} for _ in self.gammas]
        for gamma, average in zip(self.gammas, self.averages):
            weight = 1.0 - power_ema_beta(gamma, step)
            for name, value in state.items():
                if value.is_floating_point():
                    average[name].lerp_(value.detach().float(), weight)
                else:
                    average[name].copy_(value)
        self.step = step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps is None:
            return
        self._source = (trainer, pl_module)
        self._catch_up(trainer, pl_module)
        if self.step % self.every_n_steps == 0 and self.step > self.saved_step:
            if trainer.is_global_zero:
                self.save_snapshot()
            self.saved_step = self.step

    def save_snapshot(self) -> Path:
        tensors = {
            f"sigma_rel={sigma_rel:.4f}/{name}": value
            for sigma_rel, average in zip(self.sigma_rels, self.averages)
            for name, value in average.items()
        }
        metadata = {METADATA_KEY: json.dumps({"step": self.step, "sigma_rels": self.sigma_rels})}
        return save_safetensors_atomic(tensors, self.dirpath / f"step-{self.step:09d}.safetensors", metadata)

    @staticmethod
    def load_snapshot(path: str | Path) -> dict[float, dict[str, Tensor]]:
        """σ_rel -> the state dict of that profile, from one snapshot file."""
        states: dict[float, dict[str, Tensor]] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                profile, name = key.split("/", 1)
                states.setdefault(float(profile.removeprefix("sigma_rel=")), {})[name] = f.get_tensor(key)
        return states

    def state_dict(self) -> dict[str, Any]:
        if self._source is not None:  # a checkpoint written earlier in this step's hooks holds this step too
            with torch.no_grad():
                self._catch_up(*self._source)
        return {"step": self.step, "saved_step": self.saved_step, "sigma_rels": self.sigma_rels,
                "averages": self.averages}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if [float(s) for s in state_dict["sigma_rels"]] != self.sigma_rels:
            raise ValueError(
                f"the checkpoint tracks post-hoc EMA profiles {state_dict['sigma_rels']}, this run "
                f"{self.sigma_rels}; resume with the same callbacks.posthoc_ema.sigma_rels"
            )
        self.step, self.saved_step, self.averages = state_dict["step"], state_dict["saved_step"], state_dict["averages"]


def read_snapshots(dirpath: str | Path) -> list[tuple[int, float, Path]]:
    """(step, σ_rel, file) of every profile in every snapshot under `dirpath`, by step."""
    profiles = []
    for path in sorted(Path(dirpath).glob(SNAPSHOT_GLOB)):
        with safe_open(str(path), framework="pt") as f:
            info = json.loads(f.metadata()[METADATA_KEY])
        profiles += [(int(info["step"]), float(s), path) for s in info["sigma_rels"]]
    if not profiles:
        raise FileNotFoundError(
            f"no post-hoc EMA snapshots ({SNAPSHOT_GLOB}) in {dirpath}: train with callbacks.posthoc_ema.every_n_steps=N"
        )
    return sorted(profiles, key=lambda p: (p[0], p[1]))


def reconstruct(
    dirpath: str | Path, target_sigma_rels: Sequence[float], target_step: int | None = None
) -> tuple[int, list[dict[str, Tensor]]]:
    """(target step, one state dict per target σ_rel): the EMA weights of those lengths at `target_step` (default:
    the last snapshot's), from the snapshots taken up to it."""
    profiles = read_snapshots(dirpath)
    target_step = profiles[-1][0] if target_step is None else int(target_step)
    profiles = [p for p in profiles if p[0] <= target_step]
    if not profiles:
        raise ValueError(f"no snapshot at or before step {target_step}")
    coefficients = solve_coefficients([p[0] for p in profiles], [p[1] for p in profiles], target_step,
                                      target_sigma_rels)  # profiles × targets
    outputs: list[dict[str, Tensor]] = [{} for _ in target_sigma_rels]
    dtypes: dict[str, torch.dtype] = {}
    for (_, sigma_rel, path), row in zip(profiles, coefficients):
        prefix = f"sigma_rel={sigma_rel:.4f}/"
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if not key.startswith(prefix):
                    continue
                name, value = key[len(prefix):], f.get_tensor(key)
                dtypes[name] = value.dtype
                for out, x in zip(outputs, row):
                    if value.is_floating_point():
                        out[name] = out.get(name, 0) + float(x) * value.double()
                    else:
                        out[name] = value  # integer buffers (e.g. counters): the latest
    return target_step, [{k: v.to(dtypes[k]) for k, v in out.items()} for out in outputs]
