"""The sampling settings: one declaration for the pipeline's call, its stored defaults, the training
config's ``sample:`` section, the ``sample.py``/``eval_fid.py`` flags and what ``metrics.json`` records.

Ground floor: imports only the typed-dataclass helpers (:mod:`flashdit.typed`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from .typed import STRICT_KEYS, Float, Ge, Gt, Int, Interval, validate


class _NotGiven:
    """The value of a setting the caller left out: take the stored one (``None`` can be a value)."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()
# Euler, Heun, DPM-Solver++(2M) and UniPC are diffusers' flow-matching schedulers (flashdit.schedulers); the SDE
# sampler (SiT's Euler-Maruyama) is flashdit.flow's own
SAMPLERS = ("euler", "heun", "dpm++", "unipc", "sde")


def _flag(name: str, help: str, **argparse_kwargs) -> dict:
    return {"flag": name, "help": help, **argparse_kwargs}


MAX_STEPS = 100_000  # integration steps: more is no better, and the time grid must fit in memory
Fraction = Annotated[Float, Interval(ge=0, le=1)]


@dataclass
class SamplingSettings:
    """How ``FlashDiTPipeline.__call__`` integrates. A pipeline stores its own (``pipe.config.sampling``; the
    converters record the authors' settings, training the recipe's), arguments given to a call override them,
    and whatever is in neither takes the defaults below. Each field declares its type and range.

    Attributes:
        guidance_scale: classifier-free guidance scale (1.0 = no guidance).
        num_inference_steps: integration steps from t=0 (noise) to t=1 (data): Euler, DPM-Solver++, UniPC and the
            SDE make one model call per step, Heun two but the last (2·N - 1 in all); guidance doubles a call.
        sampler: ``"euler"``, ``"heun"``, ``"dpm++"``, ``"unipc"`` (diffusers' flow schedulers) or ``"sde"``.
        guidance_interval: ``(low, high)``: guide only while ``low <= t <= high``.
        timestep_shift: ``s`` in ``t' = s·t / (1 + (s - 1)·t)``; 1.0 is no shift.
        cfg_channels: guide only the first N channels (DiT's quirk); None guides all.
    """

    __pydantic_config__ = STRICT_KEYS

    guidance_scale: Annotated[Float, Ge(0)] = field(
        default=1.0, metadata=_flag("--cfg", "guidance scale", type=float, metavar="SCALE")
    )
    num_inference_steps: Annotated[Int, Interval(ge=1, le=MAX_STEPS)] = field(
        default=50, metadata=_flag("--steps", "integration steps", type=int, metavar="N")
    )
    sampler: Literal[SAMPLERS] = field(
        default="euler", metadata=_flag("--sampler", "sampler (scheduler)", choices=SAMPLERS)
    )
    guidance_interval: tuple[Fraction, Fraction] = field(
        default=(0.0, 1.0),
        metadata=_flag(
            "--guidance-interval", "guide only for LOW <= t <= HIGH", type=float, nargs=2, metavar=("LOW", "HIGH")
        ),
    )
    timestep_shift: Annotated[Float, Gt(0)] = field(
        default=1.0, metadata=_flag("--shift", "timestep shift s (LightningDiT: 0.3)", type=float, metavar="S")
    )
    cfg_channels: Annotated[Int, Ge(1)] | None = field(
        default=None,
        metadata=_flag("--cfg-channels", "guide only the first N channels; 0: all", type=int, metavar="N"),
    )

    def __post_init__(self):
        self.guidance_interval = tuple(self.guidance_interval)
        low, high = self.guidance_interval
        if low > high:
            raise ValueError(f"guidance_interval={list(self.guidance_interval)} must have low <= high")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(SamplingSettings)]

    @classmethod
    def from_dict(cls, values: dict | None) -> SamplingSettings:
        """From a stored mapping (``model_index.json``) or call arguments, every value checked."""
        return validate(cls, dict(values or {}), "sampling setting")

    def updated(self, **given) -> SamplingSettings:
        """A copy with the given values; ``NOT_GIVEN`` values keep this one's."""
        return SamplingSettings.from_dict({**self.to_dict(), **{k: v for k, v in given.items() if v is not NOT_GIVEN}})

    def to_dict(self) -> dict:
        """The sampling fields only (a subclass's extra fields are left out), JSON-ready."""
        out = {name: getattr(self, name) for name in self.names()}
        out["guidance_interval"] = list(out["guidance_interval"])
        return out


# --------------------------------------------------------------------------------------------
# command-line flags derived from the dataclass


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (``--cfg``, ``--steps``, ...), each defaulting to ``NOT_GIVEN``: left out, the
    pipeline's stored value applies, then the :class:`SamplingSettings` default."""
    group = parser.add_argument_group("sampling (left out: the pipeline's stored value, then the default)")
    for f in fields(SamplingSettings):
        meta = dict(f.metadata)
        name, help_text = meta.pop("flag"), meta.pop("help")
        default = "all channels" if f.default is None else f.default
        group.add_argument(name, dest=f.name, default=NOT_GIVEN, help=f"{help_text} (default {default})", **meta)


def sampling_flags_given(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line (``--cfg-channels 0`` means all channels: None), checked
    now so that a bad value fails before any model loads."""
    given = {name: getattr(args, name) for name in SamplingSettings.names()}
    given = {k: v for k, v in given.items() if v is not NOT_GIVEN}
    if given.get("cfg_channels") == 0:
        given["cfg_channels"] = None
    SamplingSettings().updated(**given)
    return given
