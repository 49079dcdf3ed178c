"""Typed experiment configuration: YAML recipes into dataclasses, with dotted command-line overrides.

Every field declares its type and range beside it; unknown keys, values of the wrong type and values out of range
are errors that name the key, the value and what is allowed (:mod:`flashdit.typed`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import MinLen
from pydantic import AfterValidator

from .errors import ConfigError
from .models.transformer import FLASHDIT_SIZES, FlashDiTTransformer2DModel
from .settings import SamplingSettings
from .typed import (
    STRICT_KEYS,
    Bool,
    Count,
    Float,
    Ge,
    Gt,
    Int,
    Interval,
    Str,
    load_yaml,
    signature_dataclass,
    validate,
)

__all__ = ["ConfigError", "ExperimentConfig", "from_dict", "load_config", "read_config_values", "to_dict"]


SIZES = tuple(FLASHDIT_SIZES)
OptCount = Count | None  # a positive number, or None for the default
Fraction = Annotated[Float, Interval(ge=0, lt=1)]


# The recipe's model: section is the transformer's signature (flashdit/models/transformer.py declares every option,
# its type, range and default once), plus a registry ``size``; any field set overrides the size's. The size fields
# and the data fields (channels, grid, classes: from the data) default to None; ``out_channels`` follows the data.
MODEL_FROM_SIZE = ("patch_size", "hidden_size", "depth", "num_heads")
MODEL_FROM_DATA = ("in_channels", "sample_size", "num_classes")
ModelConfig = signature_dataclass(
    FlashDiTTransformer2DModel.__init__,
    "ModelConfig",
    optional=MODEL_FROM_SIZE + MODEL_FROM_DATA,
    skip=("out_channels",),
    extra=[("size", Literal[SIZES] | None, "FlashDiT-S/2")],
)


@dataclass
class FlowConfig:
    __pydantic_config__ = STRICT_KEYS

    t_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    t_mean: Float = 0.0
    t_std: Annotated[Float, Gt(0)] = 1.0
    cosine_weight: Annotated[Float, Ge(0)] = 1.0  # LightningDiT's; must be 0 for 1-channel data (inert there)


@dataclass
class DataConfig:
    """``kind``: ``latents`` (a directory written by ``python -m flashdit.extract``) or
    ``fashion_mnist`` (pixel space, IDX files, 28×28 padded to ``pad_to``)."""

    __pydantic_config__ = STRICT_KEYS

    kind: Literal["latents", "fashion_mnist"] = "fashion_mnist"
    path: Str | None = None  # default for fashion_mnist: Debian's /usr/share/datasets/fashion-mnist
    pad_to: Annotated[Int, Interval(ge=28, le=1024)] = 32
    random_flip: Bool = True
    num_workers: Annotated[Int, Interval(ge=0, le=256)] = 0
    limit: OptCount = None  # use only the first N examples (smoke tests)


def _no_conv(targets: list[str]) -> list[str]:
    if "conv" in targets:
        raise ValueError(
            "cannot include 'conv': PEFT adapts a depthwise convolution only with a rank divisible by its channels "
            "and cannot merge it (and its 9 weights per channel leave nothing to factorise); use [attention, mlp]"
        )
    return targets


@dataclass
class LoraConfig:
    """Low-rank adapters (PEFT) on the transformer; everything else stays frozen."""

    __pydantic_config__ = STRICT_KEYS

    rank: Annotated[Int, Interval(ge=1, le=4096)] = 16
    alpha: Annotated[Float, Gt(0)] | None = None  # default: rank (scale 1)
    targets: Annotated[list[Literal["attention", "mlp", "conv"]], MinLen(1), AfterValidator(_no_conv)] = field(
        default_factory=lambda: ["attention", "mlp"]
    )
    dropout: Fraction = 0.0


MAX_BATCH = 1 << 20
MAX_SEED = 2**32 - 1 - 10_000  # numpy's seeds are 32-bit; the step stream adds an offset


@dataclass
class RunConfig:
    """A training run: its directory, optimiser, schedule, EMA, logging and checkpoints (every trainer's)."""

    __pydantic_config__ = STRICT_KEYS

    output_dir: Str = "runs/fashion_mnist"
    seed: Annotated[Int, Interval(ge=0, le=MAX_SEED)] = 0
    global_batch_size: Annotated[Int, Interval(ge=1, le=MAX_BATCH)] = 64
    max_steps: Annotated[Int, Interval(ge=1, le=10**9)] = 1000
    stop_after: OptCount = None  # checkpoint and stop at this step (a planned interruption); resume later
    lr: Annotated[Float, Interval(gt=0, le=1)] = 2e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    weight_decay: Annotated[Float, Ge(0)] = 0.0
    warmup_steps: Annotated[Int, Ge(0)] = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # diffusers get_scheduler, warm-up from 0
    max_grad_norm: Annotated[Float, Gt(0)] | None = 1.0  # None: no clipping (the norm is still measured)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    ema_decay: Fraction = 0.9999
    ema_warmup: Bool = False  # decay_t = min(decay, (1 + t) / (10 + t))
    cpu: Bool = False  # force CPU processes (gloo), e.g. two CPU workers under accelerate launch
    log_every: Count = 10
    sample_every: Annotated[Int, Ge(0)] = 500  # 0: no sample grids
    checkpoint_every: Count = 500
    keep_checkpoints: Annotated[Int, Ge(0)] = 2  # 0 keeps all
    trackers: list[Str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class TrainConfig(RunConfig):
    """A FlashDiT run: :class:`RunConfig` plus accumulation, memory and compile switches, fine-tuning and LoRA."""

    grad_accum_steps: Annotated[Int, Interval(ge=1, le=MAX_BATCH)] = 1
    gradient_checkpointing: Bool = False
    compile: Bool = False
    # fine-tuning: start from a pipeline's transformer (directory or hub id; its architecture replaces model.*)
    init_from: Str | None = None
    lora: LoraConfig | None = None  # train adapters only (needs peft); with init_from, a LoRA fine-tune


@dataclass
class SampleConfig(SamplingSettings):
    """The sampling settings (stored with the exported pipeline and used for the periodic grids), plus the
    grid's layout."""

    per_class: Annotated[Int, Interval(ge=1, le=1000)] = 8
    classes: list[Annotated[Int, Ge(0)]] | None = None  # rows of the sample grid; default: the first 10 classes


@dataclass
class ExperimentConfig:
    __pydantic_config__ = STRICT_KEYS

    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def from_dict(cls, values: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys, wrong types and values out of range."""
    return validate(cls, values or {}, "config")


def to_dict(config) -> dict:
    """Plain nested dict (tuples as lists), for YAML/JSON."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML: ``1e-4``, ``true``, ``[1, 2]``)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if node is None:  # an empty section in the recipe
                node = values[part] = {}
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = load_yaml(raw, f"override {item!r}")
    return values


BASE_KEY = "base"  # a recipe's top-level ``base: other.yaml`` (relative to the recipe) starts from that recipe


def merge_values(base: dict, over: dict) -> dict:
    """``over`` laid onto ``base``: mappings merge key by key, an empty section (``sample:`` with nothing under it)
    keeps the base's, and anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        if value is None and isinstance(out.get(key), dict):
            continue
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_values(out[key], value) if both_maps else value
    return out


def read_config_values(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The nested values a YAML recipe sets, its ``base:`` chain resolved (the base's values under its own)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; give a YAML recipe file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"config {path}: its {BASE_KEY} chain loops ({loop})")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a text (YAML) file") from None
    values = load_yaml(text, f"config {path}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config {path}: the top level must be a mapping of sections ({', '.join(SECTIONS)}), "
            f"got a {type(values).__name__}"
        )
    if BASE_KEY not in values:
        return values
    base = values.pop(BASE_KEY)  # a fresh mapping from the parser: nobody else holds it
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {path}: {BASE_KEY}: {base!r} must be the path of another YAML recipe")
    base_path = path.parent / base
    if not base_path.is_file():
        raise FileNotFoundError(f"config {path}: {BASE_KEY}: {base} does not exist (looked for {base_path})")
    return merge_values(read_config_values(base_path, (*_chain, path.resolve())), values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=ExperimentConfig):
    """Read a YAML recipe of ``cls`` (or its defaults when ``path`` is None), its ``base:`` chain first, and apply
    overrides. An empty section takes its defaults (or, under a ``base:``, the base's)."""
    values = apply_overrides(read_config_values(path) if path is not None else {}, overrides or [])
    sections = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if not (v is None and k in sections)}
    return from_dict(cls, values)
