"""Our noise schedule + sampler settings <-> a diffusers scheduler config (`scheduler/scheduler_config.json`).

Which diffusers scheduler reproduces which of our samplers, and with which settings, is established by the
parity tests in tests/sampling/test_sampler_parity.py; the table below writes exactly those settings:

    ddpm      DDPMScheduler(variance_type="fixed_small", clip_sample=False)
    ddim      DDIMScheduler(clip_sample=False, set_alpha_to_one = final_sigma == "zero"); `eta` is a call argument
    euler     EulerDiscreteScheduler(final_sigmas_type, use_karras_sigmas)
    euler_a   EulerAncestralDiscreteScheduler
    heun      HeunDiscreteScheduler
    dpmpp_2m  DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type,
              use_karras_sigmas)  — our sampler needs quantize_t=True to match its Karras grid

A rectified-flow model (diffusion=flow) is exported with DPMSolverMultistepScheduler(use_flow_sigmas=True,
flow_shift, prediction_type="flow_prediction"): dpmpp_2m with solver_order 2, euler with solver_order 1
(first-order DPM-Solver++ on the flow path is exactly the flow Euler step). It is the one diffusers flow scheduler
that StableDiffusionPipeline can drive: FlowMatchEuler/HeunDiscreteScheduler have no `init_noise_sigma` or
`scale_model_input`, so heun is not exported. Its grid is our flow spacing "trailing" and it passes ⌊t·T⌋ to the
UNet: our images equal the pipeline's with GuidedSampler(spacing="trailing", quantize_t=True) (our flow default,
SD3's "linspace" grid, gives other images).

Two known differences for VP models (tests/interop/test_diffusers_export.py measures both):
  - DPMSolverMultistepScheduler builds its "leading" and "linspace" grids from N+1 points and drops t = 0
    (sampling/grid.py), so with those spacings its timesteps differ from ours. Pass our grid to the pipeline
    (`timesteps=diffusers_timesteps(...)`) or use spacing="trailing", where both agree.
  - final_sigma="sigma_min": diffusers' VP-space schedulers (DDIM, DPM-Solver) end at the VP state
    x_t = √ᾱ_0·(x_0 + σ_min·ε) and decode it; our samplers (and Euler) end at the VE state x_0 + σ_min·ε.
    The latents differ by the factor √ᾱ_0 (1 − 4.2e-4 for SD's betas).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ldm_train.diffusion.flow import FLOW_PREDICTION, FlowSchedule
from ldm_train.diffusion.schedules import NoiseSchedule, build_schedule
from ldm_train.sampling.grid import FLOW_SPACINGS, spaced_timesteps

DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SCHEDULER_CLASSES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}
# The sampler-specific options of each class (beyond betas, prediction_type and the timestep grid).
SCHEDULER_OPTIONS: dict[str, dict[str, Any]] = {
    "ddpm": {"variance_type": "fixed_small", "clip_sample": False},
    "ddim": {"clip_sample": False},
    "euler": {},
    "euler_a": {},
    "heun": {},
    "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
}
KARRAS_SAMPLERS = ("euler", "dpmpp_2m")  # where diffusers' Karras grid equals ours (grid.py)
SIGMA_MIN_SAMPLERS = ("ddim", "euler", "dpmpp_2m")  # classes that can end at σ(t=0) instead of 0
ZERO_SNR_SAMPLERS = ("ddpm", "ddim", "euler", "euler_a", "dpmpp_2m")  # classes with `rescale_betas_zero_snr`
DIFFUSERS_BETA_SCHEDULES = {
    "scaled_linear": "scaled_linear",
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
}
# Flow models: the samplers exported, as the solver order of DPMSolverMultistepScheduler(use_flow_sigmas=True).
FLOW_SOLVER_ORDERS = {"dpmpp_2m": 2, "euler": 1}
FLOW_EXPORT_SPACING = "trailing"  # the only flow grid DPMSolverMultistepScheduler builds (sampling/grid.py)
DIFFUSERS_FLOW_PREDICTION = "flow_prediction"
VP_DEFAULT_SPACING = "leading"  # GuidedSampler's default for VP models
CONFIG_DIGITS = 12  # beta_start / beta_end are written rounded (√0.00085² is 0.00085 plus one ulp)
BETAS_RTOL = 1e-9  # a named schedule must reproduce our float64 betas this closely to be written by name


def _named_schedule(schedule: NoiseSchedule) -> dict[str, Any] | None:
    """diffusers' `beta_schedule` (+ ends, + rescale flag) that rebuilds `schedule`, or None."""
    zero_snr, num_timesteps = schedule.has_zero_terminal_snr, schedule.num_timesteps
    for kind, diffusers_name in DIFFUSERS_BETA_SCHEDULES.items():
        ends = {}
        if kind != "cosine":
            # The rescaling to zero terminal SNR loses β_T, so a rescaled schedule is tried with the kind's defaults.
            betas = (build_schedule(kind, num_timesteps) if zero_snr else schedule).betas
            ends = {
                "beta_start": float(f"{betas[0]:.{CONFIG_DIGITS}g}"),
                "beta_end": float(f"{betas[-1]:.{CONFIG_DIGITS}g}"),
            }
        candidate = build_schedule(kind, num_timesteps, **ends, zero_terminal_snr=zero_snr)
        if torch.allclose(candidate.betas, schedule.betas, rtol=BETAS_RTOL, atol=0):
            return {"beta_schedule": diffusers_name, **ends}
    return None


def betas_config(schedule: NoiseSchedule) -> dict[str, Any]:
    """The betas part of a diffusers scheduler config: by name when diffusers rebuilds them, else `trained_betas`."""
    named = _named_schedule(schedule)
    config = named if named is not None else {"trained_betas": schedule.betas.tolist()}
    return {
        "num_train_timesteps": schedule.num_timesteps,
        **config,
        "rescale_betas_zero_snr": schedule.has_zero_terminal_snr,
    }


def schedule_from_config(config: Mapping[str, Any]) -> NoiseSchedule | FlowSchedule:
    """The NoiseSchedule of a diffusers scheduler config (the inverse of `betas_config`), or the FlowSchedule of a
    flow scheduler's (FlowMatch*, or DPMSolverMultistepScheduler with use_flow_sigmas)."""
    num_timesteps = int(config.get("num_train_timesteps", 1000))
    if config.get("use_flow_sigmas") or config.get("prediction_type") == DIFFUSERS_FLOW_PREDICTION:
        return FlowSchedule(num_timesteps, float(config.get("flow_shift", 1.0)))
    if "shift" in config and "beta_schedule" not in config:  # FlowMatchEuler/HeunDiscreteScheduler
        if config.get("use_dynamic_shifting"):
            raise ValueError("a resolution-dependent (dynamic) flow shift is not supported; use a fixed `shift`.")
        return FlowSchedule(num_timesteps, float(config["shift"]))
    zero_snr = bool(config.get("rescale_betas_zero_snr", False))
    if config.get("trained_betas") is not None:
        schedule = NoiseSchedule(torch.tensor(config["trained_betas"], dtype=torch.float64))
        return (
            schedule.rescaled_zero_terminal_snr()
            if zero_snr and not schedule.has_zero_terminal_snr
            else schedule
        )
    kinds = {name: kind for kind, name in DIFFUSERS_BETA_SCHEDULES.items()}
    name = config.get("beta_schedule", "linear")
    if name not in kinds:
        raise ValueError(
            f"diffusers beta_schedule {name!r} is not supported; use one of {sorted(kinds)} or trained_betas."
        )
    ends = (
        {} if kinds[name] == "cosine" else {k: config[k] for k in ("beta_start", "beta_end") if k in config}
    )
    return build_schedule(kinds[name], num_timesteps, **ends, zero_terminal_snr=zero_snr)


def prediction_from_config(config: Mapping[str, Any]) -> str:
    """Our prediction name for a diffusers `prediction_type`."""
    ours = {name: key for key, name in DIFFUSERS_PREDICTION.items()} | {DIFFUSERS_FLOW_PREDICTION: FLOW_PREDICTION}
    if "shift" in config and "beta_schedule" not in config:  # FlowMatch*: the velocity, without a prediction_type
        return FLOW_PREDICTION
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ours:
        raise ValueError(
            f"diffusers prediction_type {prediction_type!r} is not supported; use one of {sorted(ours)}."
        )
    return ours[prediction_type]


@dataclass
class SamplerSettings:
    """The `GuidedSampler` options an exported scheduler reproduces (same names and defaults as GuidedSampler;
    the step count and guidance scale are arguments of each pipeline call)."""

    sampler: str = "dpmpp_2m"
    spacing: str | None = None  # None: GuidedSampler's default of the model's family
    steps_offset: int = 1
    karras: bool = False
    final_sigma: str = "zero"
    shift: float | None = None  # flow models: None is the model's own shift

    def check(self) -> None:
        """Raise for settings no diffusers scheduler reproduces (before any export work starts)."""
        if self.sampler not in SCHEDULER_CLASSES:
            raise ValueError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SCHEDULER_CLASSES)}")
        if self.karras and self.sampler not in KARRAS_SAMPLERS:
            raise ValueError(
                f"sampler {self.sampler!r} has no diffusers Karras grid equal to ours; "
                f"use karras=False or one of {', '.join(KARRAS_SAMPLERS)}."
            )
        if self.final_sigma not in ("zero", "sigma_min"):
            raise ValueError(f"unknown final_sigma {self.final_sigma!r}; use 'zero' or 'sigma_min'")
        if self.final_sigma == "sigma_min" and self.sampler not in SIGMA_MIN_SAMPLERS:
            raise ValueError(
                f"{SCHEDULER_CLASSES[self.sampler]} always ends at σ = 0; use final_sigma='zero' "
                f"or one of {', '.join(SIGMA_MIN_SAMPLERS)}."
            )
        if self.spacing is not None:
            spaced_timesteps(2, 1, self.spacing, 0)  # rejects an unknown spacing, naming the valid ones
        if self.shift is not None and self.shift <= 0:
            raise ValueError(f"shift must be > 0 (1 = no shift), got {self.shift}")

    def check_flow(self) -> None:
        """Raise for settings that no diffusers scheduler reproduces for a rectified-flow model."""
        self.check()
        if self.sampler not in FLOW_SOLVER_ORDERS:
            raise ValueError(
                f"sampler {self.sampler!r} cannot be exported for a flow model: StableDiffusionPipeline can only drive "
                f"DPMSolverMultistepScheduler(use_flow_sigmas=True); use one of {', '.join(FLOW_SOLVER_ORDERS)}."
            )
        if self.spacing is not None and self.spacing not in FLOW_SPACINGS:
            raise ValueError(f"spacing {self.spacing!r} has no flow grid; use one of {', '.join(FLOW_SPACINGS)}.")
        if self.karras or self.final_sigma != "zero":
            raise ValueError("karras and final_sigma='sigma_min' apply to VP models only; a flow model ends at t = 0.")


def flow_scheduler_config(schedule: FlowSchedule, settings: SamplerSettings) -> tuple[str, dict[str, Any]]:
    """DPMSolverMultistepScheduler's config that samples the flow model as GuidedSampler(spacing="trailing",
    quantize_t=True, the settings' sampler and shift) does (module docstring)."""
    settings.check_flow()
    return "DPMSolverMultistepScheduler", {
        "num_train_timesteps": schedule.num_timesteps,
        "prediction_type": DIFFUSERS_FLOW_PREDICTION,
        "use_flow_sigmas": True,
        "flow_shift": schedule.shift if settings.shift is None else settings.shift,
        "algorithm_type": "dpmsolver++",
        "solver_order": FLOW_SOLVER_ORDERS[settings.sampler],
        "lower_order_final": True,
        "final_sigmas_type": "zero",
        "steps_offset": 1,  # unused by flow sigmas; StableDiffusionPipeline rewrites any other value, with a warning
    }


def scheduler_config(
    schedule: NoiseSchedule, prediction: str, settings: SamplerSettings | None = None
) -> tuple[str, dict[str, Any]]:
    """(diffusers scheduler class name, its config) that samples `schedule` as `GuidedSampler(**asdict(settings))`
    does (default: GuidedSampler's defaults); for a flow schedule see `flow_scheduler_config`."""
    settings = settings or SamplerSettings()
    if isinstance(schedule, FlowSchedule):
        return flow_scheduler_config(schedule, settings)
    settings.check()
    if settings.shift is not None:
        raise ValueError("shift applies to rectified-flow models (diffusion=flow) only; set it to None.")
    if prediction == FLOW_PREDICTION:
        raise ValueError("prediction 'flow' belongs to a FlowSchedule (diffusion=flow), not to a VP noise schedule.")
    spacing = settings.spacing or VP_DEFAULT_SPACING
    sampler = settings.sampler
    if prediction not in DIFFUSERS_PREDICTION:
        raise ValueError(
            f"unknown prediction type {prediction!r}; use one of {', '.join(DIFFUSERS_PREDICTION)}"
        )
    if schedule.has_zero_terminal_snr and sampler not in ZERO_SNR_SAMPLERS:
        raise ValueError(
            f"{SCHEDULER_CLASSES[sampler]} cannot sample a zero-terminal-SNR schedule; "
            f"use one of {', '.join(ZERO_SNR_SAMPLERS)}."
        )
    spaced_timesteps(schedule.num_timesteps, 1, spacing, settings.steps_offset)  # offset < T
    config: dict[str, Any] = {
        **betas_config(schedule),
        "prediction_type": DIFFUSERS_PREDICTION[prediction],
        # Our Karras grid spans the whole schedule; diffusers' Euler spans the spaced timesteps: equal for linspace.
        "timestep_spacing": "linspace" if settings.karras else spacing,
        "steps_offset": settings.steps_offset,
        **SCHEDULER_OPTIONS[sampler],
    }
    if sampler not in ZERO_SNR_SAMPLERS:
        del config["rescale_betas_zero_snr"]
    if sampler in KARRAS_SAMPLERS:
        config["use_karras_sigmas"] = settings.karras
    if sampler == "ddim":
        config["set_alpha_to_one"] = settings.final_sigma == "zero"
    elif sampler in SIGMA_MIN_SAMPLERS:
        config["final_sigmas_type"] = settings.final_sigma
    return SCHEDULER_CLASSES[sampler], config


def diffusers_timesteps(
    schedule: NoiseSchedule, num_steps: int, spacing: str = "leading", steps_offset: int = 1
) -> list[int]:
    """Our integer timestep grid, for `StableDiffusionPipeline(..., timesteps=...)` with DPMSolverMultistepScheduler
    (whose own leading / linspace grids differ from ours, see the module docstring)."""
    timesteps = spaced_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
    if not torch.equal(timesteps, timesteps.round()):
        raise ValueError(
            f"{spacing} spacing with {num_steps} steps gives fractional timesteps, which diffusers' "
            "DPMSolverMultistepScheduler cannot take; use spacing 'leading' or 'trailing'."
        )
    return timesteps.long().tolist()
