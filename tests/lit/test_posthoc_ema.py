"""Post-hoc EMA (EDM2): power-function tracking, snapshots, least-squares reconstruction, the CLI."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ldm_train.lit.posthoc_ema import (
    PostHocEMA,
    gamma_to_sigma_rel,
    read_snapshots,
    reconstruct,
    sigma_rel_to_gamma,
    solve_coefficients,
)
from ldm_train.posthoc_ema_cli import main as posthoc_main


class Holder(nn.Module):
    """A 'network' whose weights the test sets: a matrix, a vector and an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 3))
        self.bias = nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def _drive(callback: PostHocEMA, trajectory, steps: range, module: SimpleNamespace | None = None):
    """Call the callback after each 'optimizer step' t with the weights set to trajectory(t)."""
    module = module or SimpleNamespace(unet=Holder())
    for t in steps:
        weight, bias = trajectory(t)
        with torch.no_grad():
            module.unet.weight.copy_(weight)
            module.unet.bias.copy_(bias)
            module.unet.count.fill_(t)
        callback.on_train_batch_end(SimpleNamespace(global_step=t, is_global_zero=True), module)
    return module


def _random_walk(seed: int = 0, length: int = 3000):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(length + 1, 4, 3, generator=g).cumsum(0) * 0.1
    biases = torch.randn(length + 1, 3, generator=g).cumsum(0) * 0.1
    return lambda t: (weights[t], biases[t])


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.10, 0.2])
def test_sigma_rel_and_gamma_are_inverse(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma > 0 and gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-9)
    # σ_rel is the std of p(τ) ∝ τ^γ on [0, 1], measured numerically.
    tau = np.linspace(0, 1, 200_001)
    p = (gamma + 1) * tau**gamma
    mean = np.trapezoid(tau * p, tau)
    assert np.sqrt(np.trapezoid((tau - mean) ** 2 * p, tau)) == pytest.approx(sigma_rel, rel=1e-4)


def test_a_linear_trajectory_gives_the_closed_form_ema(tmp_path):
    """θ(τ) = τ: the discrete update is the power-function average of the step function θ(⌈τ⌉), in closed form
    Σ_τ τ·(τ^(γ+1) − (τ−1)^(γ+1))/t^(γ+1) ≈ (γ+1)/(γ+2)·t + 1/2 (EDM2 §3.1); reconstructing another length from
    the snapshots gives that length's closed form too."""
    total = 2000
    callback = PostHocEMA((0.05, 0.10), every_n_steps=100, dirpath=str(tmp_path))
    _drive(callback, lambda t: (torch.full((4, 3), float(t)), torch.full((3,), float(t))), range(1, total + 1))
    tau = np.arange(1, total + 1, dtype=np.float64)
    for gamma, average in zip(callback.gammas, callback.averages):
        exact = float(np.sum(tau * ((tau / total) ** (gamma + 1) - ((tau - 1) / total) ** (gamma + 1))))
        assert float(average["weight"][0, 0]) == pytest.approx(exact, rel=1e-5)
        assert exact == pytest.approx((gamma + 1) / (gamma + 2) * total + 0.5, rel=1e-3)
    targets = [0.03, 0.07, 0.15]
    step, states = reconstruct(tmp_path, targets)
    assert step == total
    for sigma_rel, state in zip(targets, states):
        gamma = sigma_rel_to_gamma(sigma_rel)
        closed_form = (gamma + 1) / (gamma + 2) * total + 0.5
        assert float(state["weight"][0, 0]) == pytest.approx(closed_form, rel=2e-3), sigma_rel


def test_reconstructing_a_tracked_profile_returns_its_snapshot(tmp_path):
    callback = PostHocEMA((0.05, 0.10), every_n_steps=250, dirpath=str(tmp_path))
    _drive(callback, _random_walk(), range(1, 1501))
    assert [(s, r) for s, r, _ in read_snapshots(tmp_path)][-2:] == [(1500, 0.05), (1500, 0.10)]
    for step in (1000, 1500):
        _, states = reconstruct(tmp_path, [0.05, 0.10], step)
        snapshot = PostHocEMA.load_snapshot(tmp_path / f"step-{step:09d}.safetensors")
        for sigma_rel, state in zip((0.05, 0.10), states):
            for name in ("weight", "bias"):
                torch.testing.assert_close(state[name], snapshot[sigma_rel][name], rtol=1e-5, atol=1e-5)
            assert int(state["count"]) == step


def test_coefficients_of_a_tracked_profile_are_one_hot():
    x = solve_coefficients([100, 100, 200, 200], [0.05, 0.1, 0.05, 0.1], 200, [0.1])
    np.testing.assert_allclose(x[:, 0], [0, 0, 0, 1], atol=1e-8)


def test_a_resumed_callback_continues_exactly(tmp_path):
    trajectory = _random_walk(1)
    straight = PostHocEMA(every_n_steps=50, dirpath=str(tmp_path / "a"))
    _drive(straight, trajectory, range(1, 201))
    first = PostHocEMA(every_n_steps=50, dirpath=str(tmp_path / "b"))
    _drive(first, trajectory, range(1, 121))
    resumed = PostHocEMA(every_n_steps=50, dirpath=str(tmp_path / "b"))
    resumed.load_state_dict(first.state_dict())
    _drive(resumed, trajectory, range(121, 201))
    for a, b in zip(straight.averages, resumed.averages):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="sigma_rels"):
        PostHocEMA((0.05, 0.2)).load_state_dict(first.state_dict())


def test_off_by_default_and_bad_options():
    callback = PostHocEMA()
    _drive(callback, _random_walk(), range(1, 10))
    assert callback.averages is None
    with pytest.raises(ValueError, match="sigma_rel"):
        PostHocEMA((0.5,))
    with pytest.raises(ValueError, match="every_n_steps"):
        PostHocEMA(every_n_steps=0, dirpath="x")


class _TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.unet = nn.Linear(3, 3)

    def training_step(self, batch, batch_idx):
        return (self.unet(batch) - 1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_in_a_lightning_run_snapshots_and_checkpoint_state(tmp_path):
    """Hooks as Lightning calls them; the state rides in the checkpoint and loads with weights_only=True."""
    callback = PostHocEMA(every_n_steps=4, dirpath=str(tmp_path / "posthoc_ema"))
    trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=tmp_path)
    trainer.fit(_TinyModule(), DataLoader(torch.randn(40, 3), batch_size=4))
    assert [p.name for p in sorted((tmp_path / "posthoc_ema").iterdir())] == [
        "step-000000004.safetensors", "step-000000008.safetensors"]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("PostHocEMA")]
    assert saved["step"] == 10 and len(saved["averages"]) == 2


def test_cli_writes_a_checkpoint_per_length(tmp_path):
    run = tmp_path / "run"
    callback = PostHocEMA(every_n_steps=100, dirpath=str(run / "posthoc_ema"))
    module = _drive(callback, _random_walk(2), range(1, 601))
    unet_state = {f"unet.{k}": v.clone() for k, v in module.unet.state_dict().items()}
    ema_state = {f"ema.shadow.{k}": torch.zeros_like(v) for k, v in module.unet.state_dict().items()}
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {**unet_state, **ema_state}, "latent_shape": [4, 8, 8]}, run / "checkpoints" / "last.ckpt")

    written = posthoc_main([f"run={run}", "sigma_rel=0.06,0.12"])
    assert [p.name for _, p in written] == ["posthoc-ema-0.060-step600.ckpt", "posthoc-ema-0.120-step600.ckpt"]
    _, expected = reconstruct(run / "posthoc_ema", [0.06, 0.12])
    for (_, path), state in zip(written, expected):
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["posthoc_ema"]["sigma_rel"] in (0.06, 0.12) and checkpoint["latent_shape"] == [4, 8, 8]
        for name, value in state.items():
            assert torch.equal(checkpoint["state_dict"][f"ema.shadow.{name}"], value)
            assert torch.equal(checkpoint["state_dict"][f"unet.{name}"], unet_state[f"unet.{name}"])
