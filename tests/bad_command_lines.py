"""Bad `train.py` command lines, both stages, and the in-process path they take through train.py's
checks (command line → Hydra composition → `validate_config`), shared by
tests/test_bad_command_lines.py and scripts/report_bad_command_lines.py.

Each case: the arguments (as Hydra receives them, i.e. after the shell's quoting) and the words the
error must contain: the key and the value given (and, where it matters, the fix).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from huggingface_hub import try_to_load_from_cache
from hydra.errors import HydraException

from ldm_train.command_line import command_line_problems, explain_composition_error
from ldm_train.config_check import ConfigError
from ldm_train.config_rules import validate_config
from tests.helpers import compose_config

LDM = ["stage=ldm", "text_encoder=minilm"]
CLIP = "openai/clip-vit-large-patch14"  # text_encoder=clip_vit_l14, phase 2's default
# The phase-1 export the phase-2 cases find with first_stage.ckpt=latest (only its JSON is read).
EXPORT_CONFIG = {"in_channels": 3, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 4,
                 "embed_dim": 4, "resolution": 32}
EXPORT_RUNS = Path("outputs/autoencoder/2026-01-01")
EXPORT_GROUPS = (None, "fashion_mnist", "demo")  # no experiment, and the experiments' `group`
# Two (empty) local shards, for the cases about shards × ranks × workers; `ROOT` is the test's root.
ROOT = "ROOT"
SHARDS = ["data=webdataset", f"data.train_shards={ROOT}/shards", "data.resolution=32"]


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    expected: tuple[str, ...]  # key and value as the message shows them, and the fix where named
    gpu_free: bool = False  # only bad where there is no CUDA GPU
    needs_uncached_clip: bool = False  # only bad offline without a cached CLIP ViT-L/14 (tests run offline)

    @property
    def id(self) -> str:
        return self.name


def case(name: str, args: list[str], *expected: str, gpu_free: bool = False, needs_uncached_clip: bool = False) -> Case:
    return Case(name, tuple(args), tuple(expected), gpu_free, needs_uncached_clip)


def applies_here(bad: Case) -> bool:
    """Whether this machine makes the case bad: no GPU for `gpu_free`, no cached CLIP for the offline one."""
    if bad.gpu_free and torch.cuda.is_available():
        return False
    return not (bad.needs_uncached_clip and isinstance(try_to_load_from_cache(CLIP, "config.json"), str))


CASES = [
    # -- misspelt or `+`-added keys, every depth ---------------------------------------------------
    case("root_added", ["+lrr=1e-3"], "lrr=0.001", "did you mean 'optim.lr'", "+extra.lrr"),
    case("root_added_ldm", [*LDM, "+guidance=3"], "guidance=3", "nothing reads it"),
    case("root_near_extra", ["+extra_note=x"], "extra_note='x'", "did you mean 'extra'"),
    case("group_added", ["+optim.lrr=1e-3"], "optim.lrr=0.001", "did you mean 'optim.lr'"),
    case("group_added_ldm", [*LDM, "+optim.warmup=10"], "optim.warmup=10", "did you mean 'optim.warmup_steps'"),
    case("group_not_added", ["optim.lrr=1e-3"], "optim.lrr", "1e-3"),
    case("target_added", ["+autoencoder.chh=3"], "autoencoder.chh=3", "did you mean 'ch'"),
    case("target_not_added", ["autoencoder.chh=3"], "autoencoder.chh", "3"),
    case("nested_target", ["+module.loss.pixel_los=l2"], "module.loss.pixel_los='l2'", "did you mean 'pixel_loss'"),
    case("discriminator", ["+discriminator.nlayers=2"], "discriminator.nlayers=2", "did you mean 'n_layers'"),
    case("trainer", ["+trainer.max_step=10"], "trainer.max_step=10", "did you mean 'max_steps'"),
    case("data", ["+data.batchsize=8"], "data.batchsize=8", "did you mean 'batch_size'"),
    case("callback", ["+callbacks.last.every_n_step=5"], "callbacks.last.every_n_step=5", "every_n_steps"),
    case("callback_entry", ["+callbacks.foo=1"], "callbacks.foo=1", "_target_"),
    case("paths", ["+paths.data=/x"], "paths.data='/x'", "did you mean 'paths.data_dir'"),
    case("optimizer", ["+optim.optimizer.lrr=1"], "optim.optimizer.lrr=1", "did you mean 'lr'"),
    case("stage_node", ["+stage.x=1"], "stage.x=1", "nothing reads it"),
    case("sampler_ldm", [*LDM, "+module.sampler.guidance=2"], "module.sampler.guidance=2", "guidance_scale"),
    case("schedule_ldm", [*LDM, "+diffusion.schedule.kindd=linear"], "diffusion.schedule.kindd='linear'",
         "did you mean 'kind'"),
    case("text_encoder_ldm", [*LDM, "+text_encoder.max_len=16"], "text_encoder.max_len=16", "max_length"),
    case("unet_ldm", [*LDM, "+unet.heads=4"], "unet.heads=4", "did you mean 'num_heads'"),
    case("first_stage_ldm", [*LDM, "+first_stage.path=/x"], "first_stage.path='/x'", "Valid keys"),
    case("module_ldm", [*LDM, "+module.cond_drop=0.2"], "module.cond_drop=0.2", "did you mean 'cond_drop_prob'"),
    # -- wrong types -------------------------------------------------------------------------------
    case("type_int", ["autoencoder.ch=wide"], "autoencoder.ch", "'wide'", "expected int"),
    case("type_float_interp", ["optim.lr=fast"], "optim.lr", "'fast'", "expected float"),
    case("type_batch", ["data.batch_size=big"], "data.batch_size", "'big'", "expected int"),
    case("type_steps", ["trainer.max_steps=1.5"], "trainer.max_steps", "1.5", "expected int"),
    case("type_list_item", ["autoencoder.ch_mult=[1,a]"], "autoencoder.ch_mult", "'a'", "expected Sequence[int]"),
    case("type_bool", ["data.hflip=maybe"], "data.hflip", "'maybe'", "expected bool"),
    case("type_root", ["seed=abc"], "seed", "'abc'", "expected int"),
    case("type_loss", ["module.loss.kl_weight=tiny"], "module.loss.kl_weight", "'tiny'", "expected float"),
    case("type_ldm_prob", [*LDM, "module.cond_drop_prob=often"], "module.cond_drop_prob", "'often'"),
    case("type_ldm_list", [*LDM, "unet.channel_mult=4"], "unet.channel_mult", "got 4"),
    # -- out of range ------------------------------------------------------------------------------
    case("warmup_negative", ["optim.warmup_steps=-10"], "optim.warmup_steps", "-10", ">= 0"),
    case("z_channels_zero", ["autoencoder.z_channels=0"], "autoencoder.z_channels", "got 0", ">= 1"),
    case("accumulate_zero", ["optim.accumulate_grad_batches=0"], "optim.accumulate_grad_batches", "got 0", ">= 1"),
    case("accumulate_zero_ldm", [*LDM, "optim.accumulate_grad_batches=0"], "optim.accumulate_grad_batches",
         "got 0"),
    case("batch_zero", ["data.batch_size=0"], "data.batch_size", "got 0", ">= 1"),
    case("batch_zero_ldm", [*LDM, "data.batch_size=0"], "data.batch_size", "got 0"),
    case("resolution_negative", ["data.resolution=-32"], "data.resolution", "-32", ">= 1"),
    case("lr_negative", ["optim.lr=-1e-3"], "optim.lr", "-0.001", ">= 0"),
    case("lr_negative_ldm", [*LDM, "optim.lr=-1e-3"], "optim.lr", "-0.001"),
    case("max_steps_negative", ["trainer.max_steps=-5"], "trainer.max_steps", "-5", ">= -1"),
    case("val_interval_zero", ["trainer.val_check_interval=0"], "trainer.val_check_interval", "got 0", "> 0"),
    case("ema_decay_ae", ["module.ema_decay=1.5"], "module.ema_decay", "1.5", "< 1"),
    case("cond_drop_ldm", [*LDM, "module.cond_drop_prob=2.0"], "module.cond_drop_prob", "2.0", "< 1"),
    case("ema_decay_ldm", [*LDM, "module.ema_decay=1.5"], "module.ema_decay", "1.5"),
    case("workers_negative", ["data.num_workers=-1"], "data.num_workers", "-1", ">= 0"),
    case("prefetch_zero", ["data.prefetch_factor=0"], "data.prefetch_factor", "got 0", ">= 1"),
    case("disc_weight_negative", ["module.loss.disc_weight=-0.5"], "module.loss.disc_weight", "-0.5"),
    case("dropout_one", ["autoencoder.dropout=1.0"], "autoencoder.dropout", "1.0", "< 1"),
    case("unet_width_zero", [*LDM, "unet.model_channels=0"], "unet.model_channels", "got 0"),
    case("tokens_zero", [*LDM, "text_encoder.max_length=0"], "text_encoder.max_length", "got 0"),
    case("seed_negative", ["seed=-1"], "seed", "-1", ">= 0"),
    case("n_layers_zero", ["discriminator.n_layers=0"], "discriminator.n_layers", "got 0"),
    case("betas_ldm", [*LDM, "optim.betas=[0.9,1.5]"], "optim.betas", "1.5", "< 1"),
    # -- unknown choices -----------------------------------------------------------------------------
    case("pixel_loss", ["module.loss.pixel_loss=l3"], "module.loss.pixel_loss", "'l3'", "'l1', 'l2'"),
    case("lpips_net", ["perceptual.net=squeeze"], "perceptual.net", "'squeeze'", "'vgg', 'alex'"),
    case("accelerator", ["trainer.accelerator=tpuu"], "trainer.accelerator", "'tpuu'", "'cpu'"),
    case("disc_norm", ["discriminator.norm=instance"], "discriminator.norm", "'instance'", "'batch', 'group'"),
    case("precision", ["trainer.precision=17"], "trainer.precision", "17", "'bf16-mixed'"),
    case("disc_loss", ["module.loss.disc_loss=wgan"], "module.loss.disc_loss", "'wgan'", "'hinge', 'vanilla'"),
    case("check_mode", ["check=maybe"], "check", "'maybe'", "'train', 'only'"),
    case("prediction_ldm", [*LDM, "diffusion.prediction=score"], "diffusion.prediction", "'score'", "'eps'"),
    case("sampler_name_ldm", [*LDM, "module.sampler.sampler=dpm_fast"], "module.sampler.sampler", "'dpm_fast'",
         "'dpmpp_2m'"),
    case("schedule_kind_ldm", [*LDM, "diffusion.schedule.kind=quadratic"], "diffusion.schedule.kind",
         "'quadratic'", "'cosine'"),
    case("clip_offline_ldm", ["stage=ldm"], "text_encoder.pretrained='openai/clip-vit-large-patch14'",
         "text_encoder=minilm", needs_uncached_clip=True),
    case("clip_folder_missing_ldm", ["stage=ldm", "text_encoder=clip_tiny"], "text_encoder.pretrained=",
         "clip_tiny' does not exist"),
    case("clip_layer_ldm", ["stage=ldm", "text_encoder=clip_tiny", "text_encoder.layer=middle"],
         "text_encoder.layer", "'middle'", "'penultimate'"),
    case("group_option", ["trainer=gpux"], "trainer/gpux", "ddp_cpu"),
    case("group_option_ldm", [*LDM, "unet=huge"], "unet/huge", "sd15"),
    # -- paths that must exist -------------------------------------------------------------------------
    case("init_from", ["module.init_from=/nonexistent/vae.safetensors"], "module.init_from",
         "'/nonexistent/vae.safetensors'", "existing file"),
    case("first_stage_ckpt", [*LDM, "first_stage.ckpt=/nonexistent"], "first_stage.ckpt", "'/nonexistent'"),
    case("first_stage_latest", [*LDM, "first_stage.search_dirs=[/nope]"], "first_stage.ckpt=latest",
         "stage=autoencoder"),
    case("resume_path", ["resume=/nope/run"], "resume", "'/nope/run'", "'auto', 'never'"),
    case("shards_missing", ["data=webdataset", 'data.train_shards="/nope/{000..009}.tar"', "data.resolution=32"],
         "data.train_shards='/nope/{000..009}.tar'", "do not exist"),
    case("shards_unquoted", ["data=webdataset", "data.train_shards=/nope/{000..009}.tar"],
         "data.train_shards=/nope/{000..009}.tar", """'data.train_shards="/nope/{000..009}.tar"'"""),
    case("shards_brace_expanded", ["data=webdataset", "data.train_shards=/nope/000.tar", "data.train_shards=/nope/001.tar"],
         "data.train_shards is given 2 times", "data.train_shards=/nope/000.tar"),
    case("shards_not_given", ["data=webdataset"], "data.train_shards", "???"),
    case("required_argument_removed", ["~module.loss.discriminator"], "module.loss", "'discriminator' has no default",
         "set module.loss.discriminator=<value>"),
    case("bad_reference", ["data.resolution=${nope}"], "data.resolution", "${nope}"),
    case("dry_run_flag", ["--dry-run"], "--dry-run", "check=only"),
    # -- pieces that do not fit together ---------------------------------------------------------------
    case("unet_in_channels", [*LDM, "unet.in_channels=3"], "unet.in_channels=3", "4 latent channels"),
    case("unet_out_channels", [*LDM, "unet.out_channels=3"], "unet.out_channels=3", "unet.out_channels=4"),
    case("unet_context", [*LDM, "unet.context_dim=128"], "unet.context_dim=128", "384"),
    case("unet_heads_both", [*LDM, "unet.num_heads=5"], "unet.num_heads=5", "exactly one"),
    case("unet_head_width", [*LDM, "unet.num_head_channels=48"], "unet.num_head_channels=48", "divisible"),
    case("ae_resolution", ["data.resolution=30"], "data.resolution=30", "multiple of 4"),
    case("ldm_resolution", [*LDM, "data.resolution=36"], "data.resolution=36", "multiple of 16"),
    case("schedule_length", ["trainer.max_steps=-1", "trainer.max_time=00:00:10:00"], "trainer.max_steps=-1",
         "set trainer.max_steps"),
    case("schedule_length_ldm", [*LDM, "trainer.max_steps=-1", "trainer.max_time=00:00:10:00"],
         "trainer.max_steps=-1", "00:00:10:00"),
    case("norm_groups", ["autoencoder.norm_groups=12"], "autoencoder.norm_groups=12", "divide"),
    case("lpips_size", ["perceptual=lpips_alex", "data.resolution=16"], "data.resolution=16", "31 px"),
    # -- hardware this machine does not have -----------------------------------------------------------
    case("ddp_no_gpu", ["trainer=ddp"], "trainer.accelerator='gpu'", "trainer=ddp", "trainer=ddp_cpu",
         gpu_free=True),
    case("gpu_no_gpu", ["trainer=gpu"], "trainer.accelerator='gpu'", "trainer=cpu", gpu_free=True),
    case("fsdp_no_gpu_ldm", [*LDM, "trainer=fsdp"], "trainer.accelerator='gpu'", "trainer=fsdp", gpu_free=True),
    case("ddp_no_gpu_ldm", [*LDM, "trainer=ddp", "trainer.devices=2"], "trainer.accelerator='gpu'",
         gpu_free=True),
    case("cuda_no_gpu", ["trainer.accelerator=cuda"], "trainer.accelerator='cuda'", "trainer=ddp_cpu", gpu_free=True),
    case("fp16_on_cpu", ["trainer.precision=16-mixed"], "trainer.precision='16-mixed'", "32-true", gpu_free=True),
    case("fp16_on_cpu_ldm", [*LDM, "trainer=cpu", "trainer.precision=16-mixed"], "trainer.precision='16-mixed'",
         gpu_free=True),
    # -- shards × ranks × workers (webdataset) ---------------------------------------------------------
    case("ranks_without_epoch", [*SHARDS, "trainer=ddp_cpu"], "data.samples_per_epoch=None",
         "trainer.devices=2", "set data.samples_per_epoch"),
    case("shards_fewer_than_readers", [*SHARDS, "trainer=ddp_cpu", "data.samples_per_epoch=1000"],
         "data.num_workers=4", "2 shards", "8 readers", "data.resampled=true"),
    case("epoch_under_one_batch", [*SHARDS, "trainer=ddp_cpu", "data.samples_per_epoch=10", "data.num_workers=0"],
         "data.samples_per_epoch=10", "less than one batch per rank"),
    case("resampled_without_epoch", [*SHARDS, "data.resampled=true"], "data.resampled=True",
         "also set data.samples_per_epoch"),
    case("devices_zero", ["trainer.devices=0"], "trainer.devices=0", "count >= 1"),
    case("devices_zero_ldm", [*LDM, "trainer=ddp_cpu", "trainer.devices=0"], "trainer.devices=0", "trainer=ddp_cpu"),
    case("nccl_on_cpu", ["trainer=ddp_cpu", "trainer.strategy.process_group_backend=nccl"],
         "process_group_backend='nccl'", "gloo", gpu_free=True),
]


def prepare_root(root: Path) -> None:
    """The phase-1 export and the two shards the cases refer to."""
    write_export(root)
    (root / "shards").mkdir(exist_ok=True)
    for index in range(2):
        (root / "shards" / f"s-{index:06d}.tar").write_bytes(b"")


def args_for(bad: Case, root: Path) -> list[str]:
    return [arg.replace(ROOT, str(root)) for arg in bad.args]


def write_export(root: Path) -> None:
    """Finished phase-1 runs with an export's JSON, one per experiment group, where
    `first_stage.ckpt=latest` looks (weights are never read)."""
    for minute, group in enumerate(EXPORT_GROUPS):
        export = root / EXPORT_RUNS / f"00-{minute:02d}-00" / "export"
        export.mkdir(parents=True, exist_ok=True)
        (export / "autoencoder.safetensors").write_bytes(b"")
        (export / "autoencoder.json").write_text(json.dumps({"format_version": 1, "config": EXPORT_CONFIG}))
        (export.parent / "config_resolved.yaml").write_text(json.dumps({"group": group}))
        (export.parent / "FINISHED").touch()


def warm_up(root: Path) -> None:
    """Import every constructor's module once, outside any BuildCounter: transformers creates its
    activation modules at import time, which is not building a network."""
    for args in ([], LDM):
        check_in_process(list(args), root)


def check_in_process(args: list[str], root: Path, machine: bool = True, files: bool = True) -> str | None:
    """What train.py's checks say about `args` (None: nothing wrong), without building anything;
    `machine`/`files` as in `validate_config`."""
    problems = command_line_problems(args)
    if problems:
        return "\n".join(problems)
    try:
        cfg = compose_config(args, root)
    except (HydraException, ValueError) as err:  # omegaconf's errors are ValueErrors
        return explain_composition_error(err, args)
    try:
        validate_config(cfg, machine=machine, files=files)
    except ConfigError as err:
        return str(err)
    return None


class BuildCounter:
    """Counts networks, data modules and Trainers constructed while it is installed."""

    def __init__(self) -> None:
        self.built: list[str] = []
        self._saved: list[tuple[type, object]] = []

    def install(self) -> BuildCounter:
        for cls in (torch.nn.Module, L.LightningDataModule, L.Trainer):
            original = cls.__init__
            self._saved.append((cls, original))
            cls.__init__ = self._counting(cls.__name__, original)
        return self

    def remove(self) -> None:
        for cls, original in self._saved:
            cls.__init__ = original

    def _counting(self, name: str, original):
        @functools.wraps(original)  # signatures stay readable: the check inspects these constructors
        def init(instance, *args, **kwargs):
            self.built.append(f"{name}: {type(instance).__name__}")
            original(instance, *args, **kwargs)
        return init


def timed(args: list[str], root: Path) -> tuple[str | None, float]:
    start = time.perf_counter()
    message = check_in_process(args, root)
    return message, time.perf_counter() - start
