"""Side-by-side speed and memory of ours vs diffusers at one configuration, same weights (scripts/bench_models.py).

Outputs are checked to agree first; then each row alternates ours/theirs after warm-up and reports medians
over repetitions. Rows: (a) UNet training step with a text context, (b) VAE training step (the plain
reconstruction step on both sides; ours also with the full phase-1 loss), (c) 25-step DPM-Solver++ sampling
with CFG, (d) peak memory (RSS of a child process on CPU, max_memory_allocated on GPU) and the activation
memory autograd saves in one forward (exact, both devices), and our speed switches
on vs off. fp32 everywhere, bf16 autocast rows on GPU (`--dtypes fp32 bf16` on a CPU with bf16 units);
`--compile` adds rows with both sides compiled.
Writes outputs/bench/bench.json: [{"name", "device", "dtype", "mode", "ours", "theirs", "unit", "ratio"}],
ratio > 1 meaning we are better (faster or smaller). A measurement, not a test: numbers depend on the load.

    python scripts/bench.py [--size small|sd] [--reps 7] [--compile] [--dtypes fp32 bf16]      (make bench)
                            [--parts timing memory switches]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import bench_models as models
import bench_phase2 as phase2
import torch
from bench_table import format_table

from ldm_train.files import atomic_write
from ldm_train.speed import SpeedSettings, default_device, prepare_module

log = logging.getLogger("bench")
OUTPUT = Path("outputs/bench/bench.json")
MIB = 2**20
KIB = 2**10
MEMORY_STEPS = 3  # steps run by a memory child process (after one warm-up step)
# Dense bf16 tensor-core peak FLOP/s (vendor data sheets; SXM parts), matched against the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "RTX 4090": 165e12, "A10G": 70e12}  # fmt: skip
MINILM_DIM = 384  # MiniLM's context width
CLIP_L = dict(hidden_size=768, num_layers=12, num_heads=12)  # CLIP ViT-L/14's text tower (SD 1.x's context)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MFU_DTYPE = "bf16"  # the dtype of the peaks in PEAK_BF16_FLOPS: MFU is reported for its rows
PARTS = ("timing", "memory", "switches")  # --parts: which groups of rows


def default_speed(device: torch.device) -> SpeedSettings:
    """Our defaults as the configs set them (README "Speed switches"): fused AdamW; channels-last and compile
    off (their rows are the switch rows and --compile)."""
    return SpeedSettings(adamw="fused")


def compile_theirs(speed: SpeedSettings, *nets: torch.nn.Module) -> None:
    """Their networks compiled as ours are when `speed.compile` is on (prepare_module: in place, dynamic=False,
    the same mode), so a compiled row compares compiled with compiled; eager: nothing."""
    for net in nets:
        prepare_module(net, SpeedSettings(compile=speed.compile, compile_mode=speed.compile_mode))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(ours: Callable, theirs: Callable | None, device: torch.device, args) -> tuple[float, float | None]:
    """Median seconds per call of each side; sides alternate (and swap who goes first) every repetition."""
    sides = [("ours", ours)] + ([("theirs", theirs)] if theirs is not None else [])
    for _, fn in sides:
        for _ in range(args.warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for rep in range(args.reps):
        for name, fn in sides if rep % 2 == 0 else sides[::-1]:
            start = time.perf_counter()
            for _ in range(args.iters):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / args.iters)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return medians["ours"], medians.get("theirs")


def row(name, device, dtype, mode, ours, theirs, unit, higher_is_better: bool = False) -> dict:
    ratio = None
    if theirs is not None and ours:
        ratio = ours / theirs if higher_is_better else theirs / ours
    return {"name": name, "device": device.type, "dtype": dtype, "mode": mode, "ours": ours, "theirs": theirs,
            "unit": unit, "ratio": ratio}  # fmt: skip


def timing_rows(size: models.BenchSize, device: torch.device, dtype_name: str, mode: str, args) -> Iterator[dict]:
    """The timed rows of one dtype and mode, each yielded as soon as it is measured."""
    dtype = DTYPES[dtype_name]
    speed = default_speed(device)
    if mode == "compiled":
        speed = replace(speed, compile=True)
    pair = models.build_pair(size, device)
    models.check_unets(pair)
    models.check_vaes(pair)
    ours_sample, their_sample = models.sampling_runs(pair, dtype)
    if dtype == torch.float32:  # bf16 trajectories drift apart by design; fp32 must agree
        models._assert_close("sampled images", ours_sample(), their_sample(), args.sample_atol)
    # MFU's FLOPs counted on our eager UNet, before compilation (a compiled graph hides its ops from the counter).
    flops = unet_step_flops(pair, dtype) if device.type == "cuda" and dtype_name == MFU_DTYPE else None
    compile_theirs(speed, pair.their_unet, pair.their_vae)
    ours, theirs = models.unet_steps(pair, speed, dtype)
    t_ours, t_theirs = time_alternating(ours, theirs, device, args)
    yield row("unet_train_step", device, dtype_name, mode, 1e3 * t_ours, 1e3 * t_theirs, "ms/step")
    if device.type == "cuda":
        ips = size.unet_batch / t_ours, size.unet_batch / t_theirs
        yield row("unet_train_images_per_s", device, dtype_name, mode, *ips, "images/s", True)
        yield from mfu_rows(flops, device, dtype_name, mode, t_ours, t_theirs) if flops is not None else ()
    ours, theirs = models.vae_plain_steps(pair, speed, dtype)
    t_ours, t_theirs = time_alternating(ours, theirs, device, args)
    yield row("vae_train_step_plain", device, dtype_name, mode, 1e3 * t_ours, 1e3 * t_theirs, "ms/step")
    perceptual, lpips_net = perceptual_module()
    full = models.vae_full_step(pair, speed, dtype, perceptual)
    t_full, _ = time_alternating(full, None, device, args)
    name = "vae_train_step_full_phase1" + {"vgg": "", None: "_without_lpips"}.get(lpips_net, f"_lpips_{lpips_net}")
    yield row(name, device, dtype_name, mode, 1e3 * t_full, None, "ms/step")
    yield from phase2_rows(size, device, dtype_name, mode, speed, args)
    sample_args = argparse.Namespace(**{**vars(args), "iters": 1})
    t_ours, t_theirs = time_alternating(ours_sample, their_sample, device, sample_args)
    per_image = size.sample_batch
    yield row("sample_dpmpp2m_25_cfg", device, dtype_name, mode, t_ours / per_image, t_theirs / per_image,
              "s/image")  # fmt: skip


def phase2_rows(size, device, dtype_name, mode, speed, args) -> Iterator[dict]:
    """(d) whole phase-2 steps, each side in its own mixed precision for bf16: ours vs theirs on the fly, and
    ours from the latent cache vs ours on the fly (the cache's gain), with Fashion-MNIST's ten repeated class
    captions and with a new caption per image. Needs a text encoder of the UNet's width. Compiled mode compiles
    both UNets; both VAE encoders stay eager (phase 2 compiles only the UNet)."""
    text_encoder = text_encoder_for(size)
    if text_encoder is None:
        return
    for fresh, captions in ((False, "10 class captions"), (True, "a new caption per image")):
        pair = models.build_pair(size, device)
        compile_theirs(speed, pair.their_unet)  # ours: by phase2_steps, as LatentDiffusionModule runs it
        ours_fly, theirs_fly, ours_cache = phase2.phase2_steps(pair, speed, text_encoder.to(device), fresh,
                                                               DTYPES[dtype_name])  # fmt: skip
        t_ours, t_theirs = time_alternating(ours_fly, theirs_fly, device, args)
        t_cache, t_fly = time_alternating(ours_cache, ours_fly, device, args)
        yield row(f"phase2_step_on_the_fly [{captions}]", device, dtype_name, mode, 1e3 * t_ours, 1e3 * t_theirs,
                  "ms/step")  # fmt: skip
        yield row(f"phase2_step_cache [{captions}] (theirs = ours on the fly)", device, dtype_name, mode,
                  1e3 * t_cache, 1e3 * t_fly, "ms/step")  # fmt: skip


def text_encoder_for(size: models.BenchSize) -> torch.nn.Module | None:
    """The text encoder of the UNet's context width: MiniLM (384-d, 32 tokens: the small UNet's) when installed;
    for SD's 768-d context a CLIP ViT-L/14-shaped text tower (12 layers, 12 heads, 77 tokens) with random
    weights and CLIP's real tokenizer (the real weights are not reachable offline; the cost is the same).
    None (rows left out) when neither fits or is installed."""
    try:
        if size.unet["context_dim"] == MINILM_DIM:
            from ldm_train.conditioning.hf_text import MiniLMTextEncoder

            return MiniLMTextEncoder(max_length=size.context_tokens)
        if size.unet["context_dim"] == CLIP_L["hidden_size"]:
            from ldm_train.conditioning import CLIPTextEncoder, write_tiny_clip

            with tempfile.TemporaryDirectory(prefix="bench_clip_l_") as folder:  # 0.5 GB, loaded into memory
                return CLIPTextEncoder(pretrained=str(write_tiny_clip(folder, **CLIP_L)), max_length=size.context_tokens)
    except (ImportError, OSError) as err:
        log.warning("phase-2 rows left out: %s", err)
    return None


def perceptual_module() -> tuple[torch.nn.Module | None, str | None]:
    """(LPIPS, its backbone): VGG as phase 1 uses it by default; AlexNet (the Fashion-MNIST recipe's) when only its
    weights are installed (scripts/gpu_prepare.sh stages only AlexNet's); (None, None) when neither is. The row's
    name says which."""
    from ldm_train.autoencoder.lpips import LPIPS

    for net in ("vgg", "alex"):
        try:
            return LPIPS(net=net), net
        except (FileNotFoundError, OSError) as err:
            log.warning("LPIPS-%s weights not found (%s)", net, err)
    log.warning("the full phase-1 row runs without LPIPS")
    return None, None


def mfu_rows(flops, device, dtype_name, mode, t_ours, t_theirs) -> list[dict]:
    """Model FLOP utilisation of the UNet step: `flops` of forward + backward (`unet_step_flops`, the optimizer's
    few FLOPs left out), divided by time and the device's peak."""
    name = torch.cuda.get_device_name(device)
    peak = next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)
    if peak is None or dtype_name != MFU_DTYPE:
        log.info("MFU: no bf16 peak for %r in PEAK_BF16_FLOPS (or not a bf16 row); not reported", name)
        return []
    log.info("MFU against %s's dense bf16 peak %.0f TFLOP/s; %.3g FLOP per step", name, peak / 1e12, flops)
    return [row(f"unet_train_mfu[{name}]", device, dtype_name, mode, flops / t_ours / peak,
                flops / t_theirs / peak, "fraction of peak", True)]  # fmt: skip


def unet_step_flops(pair: models.Pair, dtype: torch.dtype) -> int:
    """FLOPs of one forward + backward of our UNet on the benchmark batch (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t, ctx = pair.inputs["z"], pair.inputs["t"], pair.inputs["context"]
    with FlopCounterMode(display=False) as counter, models.autocast(pair.device, dtype):
        pair.unet(x, t, ctx).float().square().mean().backward()
    pair.unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def switch_rows(size: models.BenchSize, device: torch.device, args) -> list[dict]:
    """Each of our switches on ("ours") vs off ("theirs" = ours with the switch off), UNet step, fp32."""
    base = SpeedSettings()
    switches = {"channels_last": replace(base, channels_last=True), "adamw_fused": replace(base, adamw="fused"),
                "adamw_foreach": replace(base, adamw="foreach")}  # fmt: skip
    rows = []
    for switch, speed in switches.items():
        on, off = models.build_ours(size, device), models.build_ours(size, device)
        step_on, _ = models.unet_steps(on, speed, torch.float32)
        step_off, _ = models.unet_steps(off, base, torch.float32)
        t_on, t_off = time_alternating(step_on, step_off, device, args)
        rows.append(row(f"switch:{switch} (theirs = ours, switch off)", device, "fp32", "eager",
                        1e3 * t_on, 1e3 * t_off, "ms/step"))  # fmt: skip
    checkpointed = replace(size, unet={**size.unet, "gradient_checkpointing": True})
    step_on, _ = models.unet_steps(models.build_ours(checkpointed, device), base, torch.float32)
    step_off, _ = models.unet_steps(models.build_ours(size, device), base, torch.float32)
    t_on, t_off = time_alternating(step_on, step_off, device, args)
    rows.append(row("switch:gradient_checkpointing (theirs = ours, switch off)", device, "fp32", "eager",
                    1e3 * t_on, 1e3 * t_off, "ms/step"))  # fmt: skip
    saved_on, _ = models.unet_saved_activations(models.build_ours(checkpointed, device), torch.float32)
    saved_off, _ = models.unet_saved_activations(models.build_ours(size, device), torch.float32)
    rows.append(row("switch:gradient_checkpointing, saved activations (theirs = ours, switch off)", device, "fp32",
                    "eager", saved_on / MIB, saved_off / MIB, "MiB"))  # fmt: skip
    return rows


# -- peak memory: one child process per side, so each measures only its own networks -------------------------
def memory_child(case: str, side: str, size: models.BenchSize, device: torch.device, dtype_name: str) -> float:
    """Peak bytes of `case` for one side above the process's state before its networks were built: RSS high-water
    mark (VmHWM, reset after building) on CPU; max_memory_allocated on GPU."""
    base_rss = _proc_status("VmRSS")
    pair = models.build_pair(size, device, side)
    dtype = DTYPES[dtype_name]
    speed = default_speed(device)
    steps = {"unet_train_step": lambda: models.unet_steps(pair, speed, dtype),
             "vae_train_step_plain": lambda: models.vae_plain_steps(pair, speed, dtype),
             "sample_dpmpp2m_25_cfg": lambda: models.sampling_runs(pair, dtype)}[case]()  # fmt: skip
    fn = steps[0] if side == "ours" else steps[1]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(1 + MEMORY_STEPS):
            fn()
        return float(torch.cuda.max_memory_allocated(device))
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux ≥ 4.0)
    for _ in range(1 + MEMORY_STEPS):
        fn()
    return float(_proc_status("VmHWM") - base_rss)


def _proc_status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * KIB


def memory_rows(size: models.BenchSize, device: torch.device, dtype_name: str) -> list[dict]:
    rows = []
    for case in ("unet_train_step", "vae_train_step_plain", "sample_dpmpp2m_25_cfg"):
        peaks = {}
        for side in ("ours", "theirs"):
            cmd = [sys.executable, __file__, "--device", str(device), "--memory-child", case, side, dtype_name,
                   size.name]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            peaks[side] = json.loads(out.strip().splitlines()[-1])["peak_bytes"] / MIB
        rows.append(row(f"peak_memory:{case}", device, dtype_name, "eager", peaks["ours"], peaks["theirs"], "MiB"))
    return rows


def saved_activation_rows(size: models.BenchSize, device: torch.device, dtype_name: str) -> list[dict]:
    """Activation memory, exact: bytes autograd saves in one forward of the UNet and of the VAE (the part of
    peak memory that the network's code decides; weights, gradients and AdamW's moments are equal on both sides)."""
    pair, dtype = models.build_pair(size, device), DTYPES[dtype_name]
    unet = models.unet_saved_activations(pair, dtype)
    vae = models.vae_saved_activations(pair, dtype)
    return [row(f"saved_activations:{case}", device, dtype_name, "eager", ours / MIB, theirs / MIB, "MiB")
            for case, (ours, theirs) in (("unet_train_step", unet), ("vae_train_step_plain", vae))]  # fmt: skip


def sizes_for(args) -> list[models.BenchSize]:
    if args.tiny:
        return [models.TINY]
    if args.size == "small":
        return [models.SIZES["small"]]
    return [models.SIZES[f"sd{r}"] for r in args.resolutions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "sd"), default="small")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], choices=(256, 512),
                        help="--size sd: image sizes (SD 1.x UNet, kl-f8 VAE)")
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per side (median reported)")
    parser.add_argument("--iters", type=int, default=3, help="calls per repetition (sampling: 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per side first")
    parser.add_argument("--compile", action="store_true", help="add rows with both sides torch.compile'd")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None,
                        help="default: fp32 and bf16 autocast on CUDA, fp32 on CPU (bf16 there: CPUs with bf16 units)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which rows: ours vs theirs timings, peak memory (child processes), switches on vs off")
    parser.add_argument("--sample-atol", type=float, default=1e-3, help="image agreement required (fp32)")
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration (tests/test_bench.py)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--memory-child", nargs=4, metavar=("CASE", "SIDE", "DTYPE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if args.memory_child:
        case, side, dtype_name, size_name = args.memory_child
        size = models.TINY if size_name == models.TINY.name else models.SIZES[size_name]
        print(json.dumps({"peak_bytes": memory_child(case, side, size, device, dtype_name)}))
        return
    parts = set(args.parts)
    dtypes = args.dtypes or ["fp32"] + (["bf16"] if device.type == "cuda" else [])
    modes = ["eager"] + (["compiled"] if args.compile else [])
    rows = []

    def add(size: models.BenchSize, new_rows: list[dict]) -> None:  # written at once: a time limit keeps them
        rows.extend(dict(r, name=f"{size.name}/{r['name']}") for r in new_rows)
        atomic_write(args.output, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))

    for size in sizes_for(args):
        log.info("size %s on %s: %s", size.name, device, size)
        for dtype_name in dtypes:
            for mode in modes if "timing" in parts else []:
                for timed in timing_rows(size, device, dtype_name, mode, args):
                    add(size, [timed])
            if "memory" in parts:
                add(size, memory_rows(size, device, dtype_name) + saved_activation_rows(size, device, dtype_name))
        if "switches" in parts:
            add(size, switch_rows(size, device, args))
    print(format_table(rows))
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
