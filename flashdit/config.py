"""Typed experiment configuration: YAML recipes into dataclasses, with dotted command-line overrides.

Unknown keys and values of the wrong type are errors that name the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .models.transformer import CONV_INITS, MIXERS, MODULATIONS, POS_EMBEDS
from .settings import SamplingSettings


@dataclass
class ModelConfig:
    """The transformer. ``size`` picks a registry entry; any field set here overrides it."""

    size: str | None = "FlashDiT-S/2"
    in_channels: int | None = None  # default: from the data
    sample_size: int | None = None  # default: from the data
    num_classes: int | None = None  # default: from the data
    patch_size: int | None = None
    hidden_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    mixer: Literal[MIXERS] = "iwin"
    window_size: int = 4
    kernel_size: int | None = 3
    pos_embed: Literal[POS_EMBEDS] = "none"
    qk_norm: bool = False
    qkv_bias: bool = True
    modulation: Literal[MODULATIONS] = "adaln-zero"
    conv_init: Literal[CONV_INITS] = "pytorch"


@dataclass
class FlowConfig:
    t_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    t_mean: float = 0.0
    t_std: float = 1.0
    cosine_weight: float = 1.0  # LightningDiT's; must be 0 for 1-channel data (the cosine over channels is inert)


@dataclass
class DataConfig:
    """``kind``: ``latents`` (a directory written by ``python -m flashdit.extract``) or
    ``fashion_mnist`` (pixel space, IDX files, 28×28 padded to ``pad_to``)."""

    kind: Literal["latents", "fashion_mnist"] = "fashion_mnist"
    path: str | None = None  # default for fashion_mnist: Debian's /usr/share/datasets/fashion-mnist
    pad_to: int = 32
    random_flip: bool = True
    num_workers: int = 0
    limit: int | None = None  # use only the first N examples (smoke tests)


@dataclass
class LoraConfig:
    """Low-rank adapters (PEFT) on the transformer; everything else stays frozen."""

    rank: int = 16
    alpha: float | None = None  # default: rank (scale 1)
    targets: list[Literal["attention", "mlp", "conv"]] = field(default_factory=lambda: ["attention", "mlp"])
    dropout: float = 0.0


@dataclass
class TrainConfig:
    output_dir: str = "runs/fashion_mnist"
    seed: int = 0
    global_batch_size: int = 64
    grad_accum_steps: int = 1
    max_steps: int = 1000
    stop_after: int | None = None  # checkpoint and stop at this step (a planned interruption); resume later
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # diffusers get_scheduler, warm-up from 0
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay_t = min(decay, (1 + t) / (10 + t))
    gradient_checkpointing: bool = False
    compile: bool = False
    cpu: bool = False  # force CPU processes (gloo), e.g. two CPU workers under accelerate launch
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # fine-tuning: start from a pipeline's transformer (directory or hub id; its architecture replaces model.*)
    init_from: str | None = None
    lora: LoraConfig | None = None  # train adapters only (needs peft); with init_from, a LoRA fine-tune


@dataclass
class SampleConfig(SamplingSettings):
    """The sampling settings (stored with the exported pipeline and used for the periodic grids), plus the
    grid's layout."""

    per_class: int = 8
    classes: list[int] | None = None  # rows of the sample grid; default: the first 10 classes


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


class ConfigError(ValueError):
    pass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (tuples from lists, floats from ints)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a list")
        if origin is tuple and len(args) != len(value):
            raise ConfigError(f"{key}: {value!r} must have {len(args)} items")
        items = args if origin is tuple else [args[0]] * len(value)
        out = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, items))]
        return tuple(out) if origin is tuple else out
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not a float") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a bool (true/false)")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: {value!r} is not an int")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    return value


def from_dict(cls, values: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {[where + k for k in unknown]}; allowed under {prefix or 'the top level'}: {names}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a dataclass's own check (__post_init__)
        raise ConfigError(f"{prefix or 'config'}: {err}") from None


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
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


BASE_KEY = "base"  # a recipe's top-level ``base: other.yaml`` (relative to the recipe) starts from that recipe


def merge_values(base: dict, over: dict) -> dict:
    """``over`` laid onto ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_values(out[key], value) if both_maps else value
    return out


def read_config_values(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The nested values a YAML recipe sets, its ``base:`` chain resolved (the base's values under its own)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"config {path}: its {BASE_KEY} chain loops ({loop})")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict) or BASE_KEY not in values:
        return values
    base = values.pop(BASE_KEY)  # a fresh mapping from safe_load: nobody else holds it
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {path}: {BASE_KEY}: {base!r} must be the path of another YAML recipe")
    base_path = path.parent / base
    if not base_path.is_file():
        raise FileNotFoundError(f"config {path}: {BASE_KEY}: {base} does not exist (looked for {base_path})")
    return merge_values(read_config_values(base_path, (*_chain, path.resolve())), values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None), its ``base:`` chain first, and apply
    overrides."""
    values = read_config_values(path) if path is not None else {}
    return from_dict(ExperimentConfig, apply_overrides(values, overrides or []))
