"""Distributed training on the CPU over gloo: DDP arithmetic (one step on 2 ranks × B equals one step
on 2B), reductions over ranks (latent scale, torchmetrics), both phases through `python train.py
trainer=ddp_cpu` (Lightning's own launcher), the shared run stamp under torchrun, FSDP's config."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.strategy import _ForwardRedirection
from torch.distributed import TCPStore
from torch.distributed.fsdp import ShardingStrategy
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ldm_train import distributed
from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.conditioning import write_tiny_clip
from ldm_train.conditioning.clip_text import CLIPTextEncoder
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.diffusion.schedules import build_schedule
from ldm_train.evaluate_cli import main as evaluate_main
from ldm_train.lit.latent_diffusion import LatentDiffusionModule
from ldm_train.lit.latent_stats import estimate_latent_std
from ldm_train.unet import UNet
from tests.helpers import compose_config, free_port, read_metrics, run_dirs, run_train, series

WORLD, B = 2, 3  # ranks, per-rank batch
LR, CLIP = 1e-4, 1.0  # phase 2's AdamW and gradient clipping


def _unet() -> UNet:
    return UNet(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_levels=(1,), num_heads=2, context_dim=8, norm_groups=4, dropout=0.0)


def _inputs() -> dict[str, torch.Tensor]:
    """A combined batch of 2B: latents, text context, timesteps, noise, images; rank r takes rows r·B..."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * B
    return {"z": torch.randn(n, 4, 8, 8, generator=g), "context": torch.randn(n, 5, 8, generator=g),
            "t": torch.randint(0, 1000, (n,), generator=g), "noise": torch.randn(n, 4, 8, 8, generator=g),
            "images": torch.rand(n, 3, 16, 16, generator=g) * 2 - 1}


def _train_step(unet: torch.nn.Module, params, rows: slice, data: dict) -> None:
    """Phase 2's optimisation step: loss mean over the batch, clip, AdamW."""
    objective = DiffusionObjective(build_schedule())
    optimizer = torch.optim.AdamW(params, lr=LR)
    loss = objective.loss_at(unet, data["z"][rows], data["context"][rows], data["t"][rows], data["noise"][rows])
    loss.mean().backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    optimizer.step()


def _rank_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    unet, data, rows = _unet(), _inputs(), slice(rank * B, (rank + 1) * B)
    ddp = torch.nn.parallel.DistributedDataParallel(unet)  # what Lightning's DDPStrategy wraps
    _train_step(ddp, list(ddp.parameters()), rows, data)
    # Reductions as the LightningModules do them: Lightning's strategy.reduce and torchmetrics.
    torch.manual_seed(1)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16,
                        attn_resolutions=(), norm_groups=4)
    torch.manual_seed(100 + rank)  # posterior samples differ per rank, as they would
    loader = [{"image": data["images"][rows][i : i + 1]} for i in range(B)]
    std = estimate_latent_std(vae, loader, B, torch.device("cpu"), DDPStrategy(process_group_backend="gloo"))
    metrics = [MeanMetric(), PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)]
    x01, y01 = (data["images"][rows] + 1) / 2, (data["images"][rows].flip(-1) + 1) / 2
    metrics[0].update((x01 - y01).abs().flatten(1).mean(1))
    for metric in metrics[1:]:
        metric.update(x01, y01)
    torch.save({"params": [p.detach() for p in unet.parameters()], "std": std,
                "metrics": [float(m.compute()) for m in metrics]}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    # fork: the ranks inherit the imported modules (spawn would re-import torch, lightning, ... twice).
    mp.start_processes(_rank_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_ddp_step_on_two_ranks_equals_one_step_on_the_combined_batch(ranks):
    torch.manual_seed(0)
    unet = _unet()
    _train_step(unet, list(unet.parameters()), slice(0, WORLD * B), _inputs())
    for rank in ranks:
        for got, want in zip(rank["params"], unet.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=0)


def test_latent_scale_and_validation_metrics_are_pooled_over_ranks(ranks):
    assert ranks[0]["std"] == ranks[1]["std"] and ranks[0]["metrics"] == ranks[1]["metrics"]
    torch.manual_seed(1)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16,
                        attn_resolutions=(), norm_groups=4)
    images = _inputs()["images"]
    z = []
    for rank in range(WORLD):
        torch.manual_seed(100 + rank)
        z += [vae.encode(images[rank * B + i : rank * B + i + 1]).sample() for i in range(B)]
    assert ranks[0]["std"] == pytest.approx(torch.cat(z).double().std(unbiased=False).item(), rel=1e-6)
    x01, y01 = (images + 1) / 2, (images.flip(-1) + 1) / 2
    whole = [(x01 - y01).abs().mean().item(), PeakSignalNoiseRatio(data_range=1.0)(x01, y01).item(),
             StructuralSimilarityIndexMeasure(data_range=1.0)(x01, y01).item()]
    assert ranks[0]["metrics"] == pytest.approx(whole, rel=1e-5)


def test_torchrun_ranks_agree_on_one_run_stamp(monkeypatch):
    """Each torchrun rank proposes its own clock through the rendezvous store; the first one wins."""
    port = free_port()
    agent_store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)  # torchrun's agent
    monkeypatch.delenv(distributed.RUN_STAMP_ENV, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test-run")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("WORLD_SIZE", "2")
    stamps = []
    for rank, clock in ((1, datetime(2026, 1, 2, 3, 4, 5)), (0, datetime(2026, 1, 2, 3, 4, 9))):
        monkeypatch.setenv("RANK", str(rank))
        stamps.append(distributed._exchange_through_rendezvous_store(clock))
        assert distributed.is_launch_rank_zero() == (rank == 0)
    assert stamps == [datetime(2026, 1, 2, 3, 4, 5)] * 2
    del agent_store
    monkeypatch.setenv(distributed.RUN_STAMP_ENV, "2026-05-06_07-08-09")
    assert distributed.shared_launch_time() == datetime(2026, 5, 6, 7, 8, 9)
    monkeypatch.setenv(distributed.RUN_STAMP_ENV, "yesterday")
    with pytest.raises(ValueError, match="date"):
        distributed.shared_launch_time()


@pytest.mark.parametrize("env,writes", [({"RANK": "0"}, True), ({"RANK": "1"}, False),  # torchrun
                                        ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1"}, False)])  # Lightning
def test_only_global_rank_zero_writes_the_log_file(env, writes, tmp_path, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    handler = distributed.RankZeroFileHandler(str(tmp_path / "train.log"))
    handler.emit(logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO}))
    handler.close()
    assert (tmp_path / "train.log").is_file() == writes
    assert not writes or "hello" in (tmp_path / "train.log").read_text()


# -- both phases through `python train.py trainer=ddp_cpu`: 2 processes started by Lightning ------------
BATCH, STEPS = 8, 4
COMMON = ["trainer=ddp_cpu", "logger=csv", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
          "trainer.limit_val_batches=2", f"callbacks.images.every_n_steps={STEPS}",
          "+callbacks.probe._target_=tests.ddp_probe.RankProbe", "data.max_train_samples=256",
          "+data.samples_per_shard=64", "data.max_val_samples=128", "data.num_workers=0",
          f"data.batch_size={BATCH}", "data.hflip=false",
          # ≤ a rank's share (2 shards × 64): a larger buffer is filled by cycling the share, which
          # repeats samples within an epoch.
          "data.shuffle_buffer=16"]


# The in-loop evaluation, sharded over the two ranks: one sample per class prompt, 10 reference images.
EVALUATION = ["evaluation=fashion_mnist_ldm", "evaluation.evaluator.per_prompt=1", "evaluation.evaluator.reference.n=10",
              "evaluation.every_n_steps=null"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def phase1(root: Path) -> Path:
    result = run_train(["stage=autoencoder", "autoencoder=tiny", "module.loss.perceptual=null",
                        "module.loss.perceptual_weight=0", "discriminator.ndf=8", "discriminator.n_layers=2",
                        "module.loss.disc_start=2", "module.latent_scale_batches=2", *COMMON], root)
    assert result.returncode == 0, result.stderr[-4000:]
    (run,) = run_dirs(root, "autoencoder")  # rank 1 wrote into rank 0's directory, made no other
    return run


@pytest.fixture(scope="module")
def phase2(root: Path, phase1: Path) -> Path:
    write_tiny_clip(root / "data" / "clip_tiny")
    result = run_train(["stage=ldm", "text_encoder=clip_tiny", "unet=tiny", "optim.warmup_steps=1",
                        "module.ema_decay=0.9", "module.sampler.num_steps=2", *COMMON, *EVALUATION], root)
    assert result.returncode == 0, result.stderr[-4000:]
    (run,) = run_dirs(root, "ldm")
    return run


def _probes(run: Path) -> list[dict]:
    return [json.loads((run / f"probe_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_ddp_run_shares_one_directory_splits_data_and_reduces_metrics(phase, request):
    run: Path = request.getfixturevalue(phase)
    probes = _probes(run)
    assert [p["rank"] for p in probes] == [0, 1] and {p["world_size"] for p in probes} == {2}
    seen = [set(p["samples"]) for p in probes]
    assert all(len(p["samples"]) == len(s) == STEPS * BATCH for p, s in zip(probes, seen)), "a rank saw a sample twice"
    assert not seen[0] & seen[1], "the two ranks trained on the same samples"
    # Validation data differ per rank, so equal values on both ranks mean they were reduced.
    assert probes[0]["val"] and probes[0]["val"] == probes[1]["val"]
    log = (run / "train.log").read_text()
    assert f"Global batch = {BATCH} per device × 2 devices × 1 nodes × 1 accumulation = {2 * BATCH}" in log
    # Rank 1 logs to the console only: one log file in the run directory (no train_ddp_process_1.log).
    assert [p.name for p in run.rglob("*.log")] == ["train.log"]
    # Rank 0 alone wrote the config, metrics, checkpoints and images.
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "config_resolved.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "FINISHED").is_file()
    logged = [int(r["step"]) for r in read_metrics(run) if not r.get("val/fid@10")]  # the evaluation logs step 4
    assert max(logged) == STEPS - 1
    assert series(read_metrics(run), "val/loss" if phase == "phase2" else "val/rec_loss")
    assert list((run / "images").glob("*.png"))


@pytest.mark.slow
def test_ddp_evaluation_is_sharded_and_equals_the_single_process_script(phase2: Path, tmp_path: Path):
    in_loop = json.loads((phase2 / "evaluation" / f"step{STEPS:07d}.json").read_text())
    assert in_loop["work_per_rank"] == [5, 5], "both ranks must sample their half"
    assert series(read_metrics(phase2), "val/fid@10") and series(read_metrics(phase2), "val/class_accuracy")
    out = evaluate_main([f"ckpt={phase2}", "n=10", "reference_n=10", "steps=2", "guidance=3.0", "save_samples=false",
                         f"out_dir={tmp_path}"])
    offline = json.loads((out / "evaluation.json").read_text())
    assert offline["work_per_rank"] == [10]
    assert offline["metrics"]["class_accuracy"] == in_loop["metrics"]["class_accuracy"]
    for name, value in in_loop["metrics"].items():
        assert offline["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.slow
def test_ddp_latent_scale_is_the_same_on_every_rank_and_exported(phase1: Path):
    probes = _probes(phase1)
    assert probes[0]["latent_scale"] == probes[1]["latent_scale"] != [1.0] * 4
    meta = json.loads((phase1 / "export" / "autoencoder.json").read_text())
    assert probes[0]["latent_scale"] == pytest.approx(meta["latent_scale"], rel=1e-6)


def _fsdp_strategy(tmp_path: Path) -> distributed.FrozenAwareFSDP:
    cfg = compose_config(["stage=ldm", "text_encoder=minilm", "trainer=fsdp"], tmp_path)
    return distributed.FrozenAwareFSDP(**{k: v for k, v in cfg.trainer.strategy.items() if k != "_target_"})


def test_fsdp_config_wraps_the_unet_and_its_blocks(tmp_path):
    strategy = _fsdp_strategy(tmp_path)
    wrapped = {cls.__name__ for cls in strategy.kwargs["auto_wrap_policy"]._module_classes}
    assert wrapped == {"UNet", "ResBlock", "SpatialTransformer"}
    assert strategy.kwargs["use_orig_params"] is True


def _fsdp_worker(rank: int, port: int, clip_dir: str, kwargs: dict, out_dir: str) -> None:
    """Phase 2's module under FSDP with the strategy's own kwargs, on the CPU: one step, EMA update,
    full state dict. (Lightning passes no device to FSDP on a CPU, and FSDP then refuses it.)"""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=16, norm_groups=4, mid_attention=False)
    unet = UNet(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                context_dim=32, norm_groups=4)
    module = LatentDiffusionModule(unet, vae.requires_grad_(False), CLIPTextEncoder(clip_dir),
                                   DiffusionObjective(build_schedule()), torch.optim.AdamW, ema_decay=0.5)
    cpu = torch.device("cpu")
    model = FSDP(module, device_id=cpu, ignored_modules=distributed.frozen_modules(module, cpu), **kwargs)
    optimizer = torch.optim.AdamW([p for p in module.unet.parameters() if p.requires_grad], lr=1e-2)
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1, "caption": ["a bag", "a shoe"]}
    _ForwardRedirection()(model, module, "training_step", batch, 0).backward()
    optimizer.step()
    module.ema.update(module.unet)  # shard for shard: the UNet and its EMA copy are wrapped alike
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
        state = model.state_dict()
    if rank == 0:
        torch.save(state, Path(out_dir) / "state.pt")
    dist.destroy_process_group()


def test_fsdp_shards_the_unet_and_its_ema_alike_and_leaves_frozen_modules_out(tmp_path):
    write_tiny_clip(tmp_path / "clip")
    kwargs = dict(_fsdp_strategy(tmp_path).kwargs, sharding_strategy=ShardingStrategy.FULL_SHARD)
    mp.start_processes(_fsdp_worker, args=(free_port(), str(tmp_path / "clip"), kwargs, str(tmp_path)),
                       nprocs=WORLD, start_method="fork")
    state = torch.load(tmp_path / "state.pt")
    assert not any(k.startswith(("first_stage.", "text_encoder.")) for k in state), "frozen modules saved"
    unet = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    ema = {k.removeprefix("ema.shadow."): v for k, v in state.items() if k.startswith("ema.shadow.")}
    assert unet.keys() == ema.keys() and all(unet[k].shape == ema[k].shape for k in unet)
    torch.manual_seed(0)
    AutoencoderKL(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=16, norm_groups=4, mid_attention=False)
    initial = UNet(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                   context_dim=32, norm_groups=4).state_dict()
    # The EMA's first update (decay 0.5, warm-up min(0.5, 1/10)) moves 90 % of the way to the stepped
    # weights, element for element, whichever rank held which shard.
    keep = min(0.5, 1 / 10)
    for key, value in initial.items():
        torch.testing.assert_close(ema[key], keep * value + (1 - keep) * unet[key], atol=1e-6, rtol=0)
    assert not torch.allclose(unet["conv_out.weight"], initial["conv_out.weight"]), "the step changed nothing"
