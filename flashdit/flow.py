"""The one flow-matching convention of FlashDiT (SiT / LightningDiT): linear path, velocity target.

``x_t = (1 - t)·x0 + t·x1`` with ``x0`` noise at t=0 and ``x1`` data at t=1; the network predicts
``v = x1 - x0``. diffusers' flow schedulers count the other way (``σ = 1 - t``, velocity ``-v``).
This module owns time sampling, the loss, guidance, the timestep shift and the ODE/SDE steps;
the network only maps ``(x_t, t, y)`` to ``v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t of shape (B,)) -> v
INTEGRATORS = ("euler", "heun", "sde")  # this module's own steps (the pipeline runs diffusers' schedulers too)
T_SAMPLING = ("uniform", "logit_normal")


# --------------------------------------------------------------------------------------------
# training


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t)·x0 + t·x1``; ``t`` is ``(B,)`` and broadcasts over the other dimensions."""
    t = t.view(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return (1 - t) * x0 + t * x1


def velocity_target(x1: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``v = x1 - x0``, the time derivative of :func:`interpolate`."""
    return x1 - x0


def sample_t(
    batch_size: int,
    scheme: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Training times ``(B,)`` in (0, 1): uniform, or logit-normal ``sigmoid(N(mean, std²))`` (SD3, LightningDiT)."""
    if scheme == "uniform":
        return torch.rand(batch_size, device=device, generator=generator)
    if scheme == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch_size, device=device, generator=generator))
    raise ValueError(f"t sampling scheme must be one of {T_SAMPLING}, got {scheme!r}")


def flow_loss(
    v_pred: torch.Tensor, v_target: torch.Tensor, cosine_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample loss ``MSE + cosine_weight · (1 - cos(v̂, v))``, the cosine taken over channels at
    each position and averaged (LightningDiT uses weight 1). It needs more than one channel: on a
    single channel the cosine is the sign of the velocity, with zero gradient, so a weight there is an error.

    Returns:
        ``(loss (B,), {"mse": (B,), "cos": (B,)})``; the training step takes ``loss.mean()``.
    """
    if cosine_weight and v_pred.shape[1] == 1:
        raise ValueError(
            f"cosine_weight={cosine_weight} on a 1-channel target: the cosine over channels of one channel is only "
            "the sign of v, whose gradient is zero; set flow.cosine_weight=0 for single-channel (grey) data"
        )
    dims = tuple(range(1, v_pred.ndim))
    mse = (v_pred.float() - v_target.float()).square().mean(dim=dims)
    terms = {"mse": mse}
    loss = mse
    if cosine_weight:
        cos = 1 - F.cosine_similarity(v_pred.float(), v_target.float(), dim=1)
        terms["cos"] = cos.mean(dim=tuple(range(1, cos.ndim)))
        loss = loss + cosine_weight * terms["cos"]
    return loss, terms


# --------------------------------------------------------------------------------------------
# sampling: time grid, guidance, steps


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Timestep shift ``t' = s·t / (1 + (s - 1)·t)``; ``s < 1`` spends more steps near the noise
    (LightningDiT uses 0.3). In diffusers' ``σ = 1 - t`` terms it is the scheduler ``shift = 1/s``."""
    if shift <= 0:
        raise ValueError(f"timestep shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def time_grid(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """``num_steps + 1`` times from 0 (noise) to 1 (data), uniformly spaced then shifted."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_steps}")
    return shift_time(torch.linspace(0, 1, num_steps + 1, dtype=torch.float64), shift).to(device, torch.float32)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance ``v = v_u + scale · (v_c - v_u)`` while ``low <= t <= high``.

    ``interval=(0.11, 1.0)`` is LightningDiT's "no guidance near the noise"; ``channels=3`` reproduces
    DiT's habit of guiding only the first three latent channels. Outside the interval (or at scale 1)
    the conditional velocity is used and the batch is not doubled.
    """

    scale: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)
    channels: int | None = None

    def __post_init__(self):
        low, high = self.interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= low <= high <= 1, got {self.interval}")
        if self.channels is not None and self.channels <= 0:
            raise ValueError(f"cfg_channels must be positive or None, got {self.channels}")

    def active(self, t: float) -> bool:
        low, high = self.interval
        return self.scale != 1.0 and low <= t <= high

    def velocity(
        self,
        model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        null_label: int,
    ) -> torch.Tensor:
        """Guided velocity at ``x`` (``(B, C, H, W)``) and time ``t`` (``(B,)``, one value)."""
        if not self.active(float(t[0])):
            return model(x, t, labels)
        null = torch.full_like(labels, null_label)
        v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        guided = v_uncond + self.scale * (v_cond - v_uncond)
        if self.channels is None:
            return guided
        return torch.cat([guided[:, : self.channels], v_cond[:, self.channels :]], dim=1)


def euler_step(v_fn: VelocityFn, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """``x + (t_next - t)·v(x, t)``."""
    return x + (t_next - t) * v_fn(x, _times(x, t))


def heun_step(v_fn: VelocityFn, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Heun's second-order step (trapezoid on an Euler predictor); :func:`step` ends a Heun run with Euler."""
    dt = t_next - t
    v = v_fn(x, _times(x, t))
    x_pred = x + dt * v
    return x + dt * 0.5 * (v + v_fn(x_pred, _times(x, t_next)))


def sde_step(
    v_fn: VelocityFn,
    x: torch.Tensor,
    t: float,
    t_next: float,
    noise: torch.Tensor,
    diffusion_norm: float = 1.0,
) -> torch.Tensor:
    """Euler–Maruyama step of the SDE with the flow's marginals (SiT), diffusion ``w(t) = norm·(1 - t)``.

    With ``x_t = x0 + t·v`` the score is ``-(x - t·v)/(1 - t)``, so the drift ``v + w/2 · score`` is
    ``v - norm/2 · (x - t·v)``: no singularity at t=1. ``noise`` is a standard normal like ``x``.
    """
    dt = t_next - t
    v = v_fn(x, _times(x, t))
    drift = v - 0.5 * diffusion_norm * (x - t * v)
    return x + dt * drift + math.sqrt(diffusion_norm * (1 - t) * dt) * noise


def _times(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def per_sample_noise(
    like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (diffusers' ``randn_tensor``); with one generator per sample,
    sample ``i`` draws from ``generator[i]`` alone (on the generator's device), so it does not depend on the
    batch."""
    if isinstance(generator, Sequence):
        if len(generator) != like.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {like.shape[0]}")
        generator = list(generator)
    return randn_tensor(tuple(like.shape), generator=generator, device=like.device, dtype=like.dtype)


def step(
    sampler: str,
    v_fn: VelocityFn,
    x: torch.Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    final: bool = False,
    diffusion_norm: float = 1.0,
) -> torch.Tensor:
    """One step of ``sampler`` from ``t`` to ``t_next``. The ``final`` step is a plain Euler step for every
    sampler: noise-free for the SDE (SiT), first-order for Heun (EDM; diffusers' FlowMatchHeunDiscreteScheduler).
    A Heun corrector at t=1 would ask a trained network for the velocity at clean data, where it has seen no
    noise to remove, and leave the predictor's residual noise in the sample."""
    if sampler == "heun" and not final:
        return heun_step(v_fn, x, t, t_next)
    if sampler == "sde" and not final:
        return sde_step(v_fn, x, t, t_next, per_sample_noise(x, generator), diffusion_norm)
    if sampler in INTEGRATORS:
        return euler_step(v_fn, x, t, t_next)
    raise ValueError(f"sampler must be one of {INTEGRATORS}, got {sampler!r}")


def sample(
    v_fn: VelocityFn,
    x: torch.Tensor,
    times: torch.Tensor,
    sampler: str = "euler",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    diffusion_norm: float = 1.0,
    on_step: Callable[[int, float, torch.Tensor], torch.Tensor] | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """The sampler loop: integrate from ``times[0]`` to ``times[-1]`` with Euler, Heun or the SDE.

    The pipeline's ``sampler="sde"`` samples through here (its ODE samplers are diffusers' schedulers, Euler on the
    same grid as :func:`euler_step`), and so do the tests of the integrators. ``on_step(i, t_i, x)`` runs after step
    ``i`` (from ``t_i``) and returns the latents to continue from; ``stop()`` is checked before each step.
    """
    if sampler not in INTEGRATORS:
        raise ValueError(f"sampler must be one of {INTEGRATORS}, got {sampler!r}")
    ts = times.tolist()
    n = len(ts) - 1
    for i in range(n):
        if stop is not None and stop():
            break
        x = step(sampler, v_fn, x, ts[i], ts[i + 1], generator, final=i == n - 1, diffusion_norm=diffusion_norm)
        if on_step is not None:
            x = on_step(i, ts[i], x)
    return x
