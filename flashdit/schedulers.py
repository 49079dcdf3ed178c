"""diffusers' flow-matching schedulers as FlashDiT's samplers: which schedulers integrate a flow, how a call's time
settings (steps, ``timestep_shift``) become each one's grid, and how many model evaluations a call costs.

diffusers counts flow time the other way (``sigma = 1 - t``, ``sigma = 1`` is noise) and expects the model output
``noise - data``, the negative of FlashDiT's velocity. ``FlowMatchEulerDiscreteScheduler`` takes the pipeline's own
grid (``sigmas=``), so Euler is exactly ``flow.euler_step`` on ``flow.time_grid``; the others build their grid from
the step count and their shift parameter (``shift``, or ``flow_shift`` for the multistep solvers), which the pipeline
sets to ``1 / timestep_shift`` for the call (diffusers' shift is the inverse of FlashDiT's).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils import logging as diffusers_logging

from . import flow
from .errors import UserError

# sampler name -> the diffusers scheduler that runs it, and what makes a multistep solver integrate a flow
SCHEDULERS = {
    "euler": FlowMatchEulerDiscreteScheduler,
    "heun": FlowMatchHeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}
FLOW_CONFIG = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}
_MULTISTEP = (DPMSolverMultistepScheduler, UniPCMultistepScheduler)
_UNSUPPORTED = ("use_dynamic_shifting", "invert_sigmas", "shift_terminal", "use_karras_sigmas")
_UNSUPPORTED += ("use_exponential_sigmas", "use_beta_sigmas")


def allowed() -> str:
    return (
        "FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, or DPMSolverMultistepScheduler / "
        "UniPCMultistepScheduler with prediction_type='flow_prediction' and use_flow_sigmas=True"
    )


def sampler_name(scheduler) -> str:
    """The sampler a scheduler runs (``"euler"``, ``"heun"``, ``"dpm++"``, ``"unipc"``).

    Raises:
        UserError: for a scheduler that does not integrate a flow (DDPM, or a multistep solver that predicts noise),
            or a flow scheduler with an option the pipeline cannot honour (dynamic shifting, re-spaced sigmas).
    """
    name = next((n for n, cls in SCHEDULERS.items() if type(scheduler) is cls), None)
    if name is None:
        raise UserError(
            f"pipe.scheduler is a {type(scheduler).__name__}, which does not integrate a flow; use {allowed()}"
        )
    cfg = scheduler.config
    if isinstance(scheduler, _MULTISTEP) and any(cfg.get(k) != v for k, v in FLOW_CONFIG.items()):
        raise UserError(
            f"pipe.scheduler is a {type(scheduler).__name__} with prediction_type={cfg.get('prediction_type')!r} and "
            f"use_flow_sigmas={cfg.get('use_flow_sigmas')}: a FlashDiT model predicts a flow; create it with "
            f"{type(scheduler).__name__}.from_config(pipe.scheduler.config, prediction_type='flow_prediction', "
            "use_flow_sigmas=True)"
        )
    if isinstance(scheduler, DPMSolverMultistepScheduler) and "sde" in cfg.get("algorithm_type", ""):
        raise UserError(
            "DPMSolverMultistepScheduler's SDE variants are not supported; use algorithm_type='dpmsolver++'"
        )
    on = [k for k in _UNSUPPORTED if cfg.get(k)]
    if on:
        raise UserError(
            f"pipe.scheduler sets {on}: the pipeline builds the time grid from num_inference_steps and "
            "timestep_shift; turn them off"
        )
    return name


@contextlib.contextmanager
def quiet_config_warnings() -> Iterator[None]:
    """diffusers warns that a FlowMatch scheduler's config carries keys it ignores; a FlashDiT pipeline's carries the
    flow keys on purpose (``FlashDiTPipeline.__init__``), so loading it or making a scheduler from it does not warn."""
    logger = diffusers_logging.get_logger("diffusers.configuration_utils")
    level = logger.level
    logger.setLevel(diffusers_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def scheduler_for(name: str, config) -> object:
    """A scheduler for sampler ``name`` from another scheduler's config (diffusers' ``from_config``), flow-matching."""
    cls = SCHEDULERS[name]
    with quiet_config_warnings():
        return cls.from_config(config, **(FLOW_CONFIG if issubclass(cls, _MULTISTEP) else {}))


def _shift_key(scheduler) -> str:
    return "flow_shift" if isinstance(scheduler, _MULTISTEP) else "shift"


def effective_shift(scheduler, timestep_shift: float) -> float:
    """diffusers' shift for the call: the scheduler's own, or ``1 / timestep_shift``; both set and different is an
    error (the pipeline never applies two shifts)."""
    own = float(scheduler.config.get(_shift_key(scheduler), 1.0))
    wanted = 1.0 / timestep_shift
    if own != 1.0 and timestep_shift != 1.0 and abs(own - wanted) > 1e-6 * wanted:
        raise UserError(
            f"pipe.scheduler has its own {_shift_key(scheduler)}={own}, and timestep_shift={timestep_shift} asks for "
            f"{_shift_key(scheduler)}={wanted:g} (diffusers' shift is 1 / timestep_shift): set one of them to 1"
        )
    return own if own != 1.0 else wanted


@contextlib.contextmanager
def _configured(scheduler, key: str, value: float) -> Iterator[None]:
    """``scheduler.config[key] = value`` while the grid is built, then back: the scheduler keeps its config."""
    old = scheduler.config.get(key)
    scheduler.register_to_config(**{key: value})
    try:
        yield
    finally:
        scheduler.register_to_config(**{key: old})


# the schedulers whose set_timesteps takes a grid of sigmas (the others build their own from a step count)
TAKES_SIGMAS = ("euler", "unipc")


def custom_sigmas(sigmas=None, timesteps=None, num_train_timesteps: int = 1000) -> list[float] | None:
    """A call's own grid, diffusers' way: ``sigmas`` (noise level of each step, from near 1 down, without the final 0)
    or ``timesteps`` (``sigma · num_train_timesteps``); checked to fall strictly inside (0, 1]."""
    if sigmas is not None and timesteps is not None:
        raise UserError("pass sigmas or timesteps, not both")
    if timesteps is not None:
        sigmas = [float(t) / num_train_timesteps for t in torch.as_tensor(timesteps).flatten().tolist()]
    if sigmas is None:
        return None
    what = "timesteps" if timesteps is not None else "sigmas"
    values = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()]
    scale = f" / {num_train_timesteps}" if timesteps is not None else ""
    if not values or not all(0 < v <= 1 for v in values) or any(b >= a for a, b in zip(values, values[1:])):
        raise UserError(
            f"{what} must be a non-empty, strictly decreasing list with every value{scale} in (0, 1] (noise first; "
            f"the final 0 is added); got {list(sigmas if timesteps is None else timesteps)}"
        )
    return values


def set_timesteps(scheduler, num_steps: int, timestep_shift: float, device, sigmas=None) -> list[float]:
    """Build ``scheduler``'s grid for a call and return the flow time ``t = 1 - sigma`` of each model evaluation
    (one per entry of ``scheduler.timesteps``). ``sigmas``: the call's own grid (:func:`custom_sigmas`), given to the
    scheduler as diffusers' pipelines give it (a shift configured on the scheduler applies; ``timestep_shift`` does
    not)."""
    if sigmas is not None:
        name = sampler_name(scheduler)
        if name not in TAKES_SIGMAS:
            raise UserError(
                f"custom sigmas or timesteps need a scheduler that takes a grid ({', '.join(TAKES_SIGMAS)}, or the "
                f"sde sampler); {type(scheduler).__name__} builds its own from num_inference_steps"
            )
        scheduler.set_timesteps(sigmas=np.asarray(sigmas), device=device)  # UniPC does arithmetic on it
        return (1 - scheduler.sigmas[: len(scheduler.timesteps)].double()).tolist()
    shift = effective_shift(scheduler, timestep_shift)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        # the pipeline's own grid; the scheduler shifts what it is given, so it gets the grid it would shift
        own = float(scheduler.config.get("shift", 1.0))
        times = flow.time_grid(num_steps, 1.0 / shift if own == 1.0 else 1.0)
        scheduler.set_timesteps(sigmas=(1 - times[:-1]).tolist(), device=device)
    else:
        with _configured(scheduler, _shift_key(scheduler), shift):
            scheduler.set_timesteps(num_inference_steps=num_steps, device=device)
    sigmas = scheduler.sigmas[: len(scheduler.timesteps)]
    return (1 - sigmas.double()).tolist()


def step(scheduler, velocity: torch.Tensor, timestep, x: torch.Tensor, generator) -> torch.Tensor:
    """One ``scheduler.step`` on FlashDiT's velocity (diffusers' flow output is its negative)."""
    kwargs = {"return_dict": False}
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = generator
    return scheduler.step(-velocity, timestep, x, **kwargs)[0]


def model_evaluations(times: list[float], guidance: flow.Guidance) -> int:
    """Evaluations of the transformer per image for a call: two (conditional and unconditional) wherever the guidance
    is active, one elsewhere."""
    return sum(2 if guidance.active(t) else 1 for t in times)
