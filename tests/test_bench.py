"""scripts/bench.py at a tiny size: the JSON rows' format and meaning, the memory measurement of one side, and
both sides compiled alike in compiled mode."""

import dataclasses
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench  # noqa: E402
import bench_models  # noqa: E402
import bench_phase2  # noqa: E402

from ldm_train.speed import saved_activation_bytes  # noqa: E402

KEYS = {"name", "device", "dtype", "mode", "ours", "theirs", "unit", "ratio"}
ADAM_STATES = 2  # exp_avg and exp_avg_sq per parameter


def test_bench_writes_rows_with_ratios_oriented_ours_better_above_one(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--tiny", "--reps", "1", "--iters", "1",
           "--warmup", "0", "--parts", "timing", "switches", "--device", "cpu", "--output", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert all(set(r) == KEYS for r in rows)
    names = {r["name"] for r in rows}
    for expected in ("tiny/unet_train_step", "tiny/vae_train_step_plain", "tiny/sample_dpmpp2m_25_cfg",
                     "tiny/switch:channels_last (theirs = ours, switch off)"):  # fmt: skip
        assert expected in names
    assert any(n.startswith("tiny/vae_train_step_full_phase1") for n in names)
    for r in rows:
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["mode"] == "eager"
        assert r["ours"] > 0
        if r["theirs"] is None:  # our full phase-1 loss: diffusers has none
            assert r["ratio"] is None
        else:  # times and memory: theirs / ours
            assert r["unit"] in ("ms/step", "s/image", "MiB")
            assert r["ratio"] == pytest.approx(r["theirs"] / r["ours"])
    assert "unet_train_step" in result.stdout  # the printed table


def test_parity_check_refuses_different_networks():
    pair = bench_models.build_pair(bench_models.TINY, torch.device("cpu"))
    assert bench_models.check_unets(pair) <= 1e-5
    with torch.no_grad():
        pair.their_unet.conv_out.bias.add_(0.1)
    with pytest.raises(AssertionError, match="differ"):
        bench_models.check_unets(pair)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc needed for VmHWM")
@pytest.mark.parametrize("side", ["ours", "theirs"])
def test_memory_of_a_training_step_covers_weights_gradients_and_adam_state(side):
    size = bench_models.TINY
    params = sum(p.numel() * 4 for p in bench_models.build_unets(size)[0].parameters())  # fp32 bytes
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--device", "cpu",
           "--memory-child", "unet_train_step", side, "fp32", size.name]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    peak = json.loads(out.strip().splitlines()[-1])["peak_bytes"]  # its own process, as bench.py measures it
    assert peak >= (2 + ADAM_STATES) * params  # weights + gradients + AdamW's two moments
    assert peak < 100 * params  # and not the whole process (torch alone is ~300 MB)


def test_memory_rows_measure_each_size_in_its_own_child(monkeypatch):
    """--size sd with two resolutions: each size's memory rows come from a child process of that size."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"peak_bytes": 2**20}) + "\n")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    for size in (bench_models.SIZES["sd256"], bench_models.SIZES["sd512"]):
        rows = bench.memory_rows(size, torch.device("cpu"), "bf16")
        assert [r["ours"] for r in rows] == [1.0] * 3 and all(r["dtype"] == "bf16" for r in rows)
    assert [cmd[-1] for cmd in calls] == ["sd256"] * 6 + ["sd512"] * 6  # 3 cases × 2 sides per size


def test_parts_select_groups_of_rows(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--tiny", "--parts", "switches", "--reps", "1",
           "--iters", "1", "--warmup", "0", "--device", "cpu", "--output", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    names = [r["name"] for r in json.loads(out.read_text())]
    assert len(names) == 5 and all(n.startswith("tiny/switch:") for n in names)  # 4 switches, checkpointing twice


def test_saved_activations_count_what_autograd_keeps_for_backward():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    x = torch.randn(16, 4)
    # Linear saves its input (16×4 fp32; its weight is a parameter, left out), ReLU its output (16×8 fp32).
    saved, out = saved_activation_bytes(lambda: net(x), net.parameters())
    assert saved == (16 * 4 + 16 * 8) * 4 and out.shape == (16, 8)
    x.requires_grad_()  # now Linear saves its weight too (for the input's gradient): counted only if not left out
    assert saved_activation_bytes(lambda: net(x), net.parameters())[0] == saved
    assert saved_activation_bytes(lambda: net(x))[0] == saved + 8 * 4 * 4
    with torch.no_grad():
        assert saved_activation_bytes(lambda: net(x), net.parameters())[0] == 0


def test_our_unet_saves_what_diffusers_saves_and_checkpointing_saves_most_of_it():
    size, cpu = bench_models.TINY, torch.device("cpu")
    rows = {r["name"]: r for r in bench.saved_activation_rows(size, cpu, "fp32")}
    unet, vae = rows["saved_activations:unet_train_step"], rows["saved_activations:vae_train_step_plain"]
    assert unet["ours"] > 0 and unet["ratio"] == 1.0  # the same network: the same tensors saved
    assert 0 < vae["ours"] <= vae["theirs"]
    checkpointed = bench_models.build_pair(dataclasses.replace(size, unet={**size.unet, "gradient_checkpointing": True}), cpu)
    saved_on, _ = bench_models.unet_saved_activations(checkpointed, torch.float32)
    assert saved_on < 0.25 * unet["ours"] * bench.MIB


def test_mfu_is_flops_per_second_over_the_named_devices_bf16_peak(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    cuda = torch.device("cuda")
    (mfu,) = bench.mfu_rows(989e12 / 2, cuda, "bf16", "eager", t_ours=1.0, t_theirs=2.0)
    assert mfu["name"] == "unet_train_mfu[NVIDIA H100 80GB HBM3]"
    assert (mfu["ours"], mfu["theirs"], mfu["ratio"]) == pytest.approx((0.5, 0.25, 2.0))
    assert bench.mfu_rows(1e12, cuda, "fp32", "eager", 1.0, 1.0) == []  # the peak is bf16's
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda device: "Some Unknown GPU")
    assert bench.mfu_rows(1e12, cuda, "bf16", "eager", 1.0, 1.0) == []  # no peak known: not reported


def test_flops_of_a_unet_step_are_about_three_forward_passes():
    pair = bench_models.build_pair(bench_models.TINY, torch.device("cpu"))
    step = bench.unet_step_flops(pair, torch.float32)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pair.unet(pair.inputs["z"], pair.inputs["t"], pair.inputs["context"])
    forward = counter.get_total_flops()
    assert forward > 0 and 2.5 * forward <= step <= 3.5 * forward  # backward ≈ 2 × forward


class CountingTextEncoder(torch.nn.Module):
    """A stand-in text encoder (B captions -> B×L×D) that records how many captions it encoded."""

    def __init__(self, size: bench_models.BenchSize):
        super().__init__()
        self.shape = (size.context_tokens, size.unet["context_dim"])
        self.encoded: list[str] = []

    def forward(self, captions: list[str]) -> torch.Tensor:
        self.encoded += captions
        return torch.randn(len(captions), *self.shape)


@pytest.mark.parametrize("fresh", [False, True])
def test_phase2_rows_encode_text_per_step_only_with_fresh_captions(fresh):
    """The cache row's two cases: repeated class captions are encoded once each (our LRU text cache), so the
    cache saves only the VAE encoder; fresh captions are encoded every step, which the cache saves too."""
    torch.manual_seed(0)  # caption dropout draws: a fixed run
    size, steps = bench_models.TINY, 5
    encoder = CountingTextEncoder(size)
    ours_fly, theirs_fly, ours_cache = bench_phase2.phase2_steps(
        bench_models.build_pair(size, torch.device("cpu")), bench.default_speed(torch.device("cpu")), encoder, fresh
    )
    precomputed = len(encoder.encoded)  # the cache batch's contexts, made once
    for _ in range(steps):
        ours_fly()
    encoded = [c for c in encoder.encoded[precomputed:] if c]  # "" is the dropped captions' context
    assert len(encoded) == len(set(encoded))  # nothing encoded twice
    if fresh:
        assert len(encoded) >= (steps - 1) * size.unet_batch  # every step's captions, but for a dropped few
    else:
        assert set(encoded) <= set(bench_phase2.CAPTIONS) and len(encoded) <= size.unet_batch
    seen = len(encoder.encoded)
    ours_cache()  # the cache holds the contexts: at most the empty prompt of dropped captions is encoded
    assert set(encoder.encoded[seen:]) <= {""}
    seen = len(encoder.encoded)
    theirs_fly()  # diffusers' script encodes every step's captions
    assert len(encoder.encoded) - seen == size.unet_batch


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_phase2_rows_compile_both_unets_or_neither(mode, monkeypatch):
    """A compiled phase-2 row is ours compiled vs theirs compiled (UNets; both VAE encoders eager), not vs eager.
    Nothing runs: the timing is replaced, and torch.compile compiles at the first call."""
    cpu = torch.device("cpu")
    speed = replace(bench.default_speed(cpu), compile=mode == "compiled")
    pairs = []
    steps = bench_phase2.phase2_steps
    monkeypatch.setattr(bench_phase2, "phase2_steps", lambda pair, *args: pairs.append(pair) or steps(pair, *args))
    monkeypatch.setattr(bench, "text_encoder_for", CountingTextEncoder)
    monkeypatch.setattr(bench, "time_alternating", lambda ours, theirs, device, args: (1.0, 1.0))
    rows = list(bench.phase2_rows(bench_models.TINY, cpu, "fp32", mode, speed, args=None))
    assert len(rows) == 4 and {r["mode"] for r in rows} == {mode} and len(pairs) == 2
    for pair in pairs:
        compiled = {net: getattr(pair, net)._compiled_call_impl is not None
                    for net in ("unet", "their_unet", "their_vae")}  # fmt: skip
        compiled["vae"] = pair.vae.encoder._compiled_call_impl is not None  # AutoencoderKL.compile: its parts
        assert compiled == {"unet": mode == "compiled", "their_unet": mode == "compiled", "their_vae": False,
                            "vae": False}  # fmt: skip


def test_phase2_steps_in_bf16_keep_our_frozen_vae_fp32_and_cast_theirs():
    """Each side's mixed precision: ours autocasts around the step and encodes with the fp32 VAE; theirs
    (train_text_to_image.py --mixed_precision=bf16) holds its frozen VAE in bf16. The trained UNets stay fp32."""
    size, cpu = bench_models.TINY, torch.device("cpu")
    pair = bench_models.build_pair(size, cpu)
    steps = bench_phase2.phase2_steps(pair, bench.default_speed(cpu), CountingTextEncoder(size), False, torch.bfloat16)
    for step in steps:
        step()
    assert {p.dtype for p in pair.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in pair.their_vae.parameters()} == {torch.bfloat16}
    for unet in (pair.unet, pair.their_unet):
        assert {p.dtype for p in unet.parameters()} == {torch.float32}
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in unet.parameters())


def test_full_phase1_row_falls_back_to_lpips_alex_and_says_so(monkeypatch):
    import ldm_train.autoencoder.lpips as lpips

    class OnlyAlex(torch.nn.Module):
        def __init__(self, net: str) -> None:
            super().__init__()
            if net != "alex":
                raise FileNotFoundError(f"no converted LPIPS-{net} weights")
            self.net = net

    monkeypatch.setattr(lpips, "LPIPS", OnlyAlex)
    module, net = bench.perceptual_module()
    assert net == "alex" and module.net == "alex"
