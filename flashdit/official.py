"""The official checkpoints read as FlashDiT modules: the FlashDiT release (Iwin repo, window 8, seven-way gated
modulation), LightningDiT (global attention, sin-cos + 2-D RoPE, adaLN-Zero) and VA-VAE (an LDM ``AutoencoderKL``,
f16, 32 channels), with the authors' sampling settings.

Checkpoints are read with ``torch.load(weights_only=True)``; an ``ema`` entry is preferred over ``model``.
Every source key must be used and every target key filled, or the error lists the difference.
The kind of a transformer checkpoint is checked from its keys (a LightningDiT checkpoint given as FlashDiT is
named as such, and the reverse); the FlashDiT window must divide the checkpoint's token grid; the LightningDiT
release (64 or 800 epochs, whose guidance settings differ) is read from the checkpoint's training config when it
records one, else it must be given.

``FlashDiTPipeline.from_single_file`` and ``python -m flashdit.convert`` are built on this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .errors import ConversionError
from .models.embeddings import rope_tables_2d, sincos_pos_embed_2d
from .models.transformer import FLASHDIT_SIZES, FlashDiTTransformer2DModel

# The authors' sampling settings (Iwin repo / LightningDiT reproduction configs): Euler over 250 grid points, i.e.
# 249 steps (the official samplers count grid points, ``linspace(0, 1, 250)``), timestep shift 0.3, guidance on the
# first three latent channels as in DiT's code, guidance from t = 0.11 (FlashDiT), 0.10 (LightningDiT 64 epochs)
# and 0.125 (LightningDiT 800 epochs, scale 6.7).
_OFFICIAL_SAMPLER = dict(num_inference_steps=249, sampler="euler", timestep_shift=0.3, cfg_channels=3)
AUTHORS_SAMPLING = {
    "flashdit": dict(_OFFICIAL_SAMPLER, guidance_scale=10.0, guidance_interval=[0.11, 1.0]),
    "lightningdit-64": dict(_OFFICIAL_SAMPLER, guidance_scale=10.0, guidance_interval=[0.10, 1.0]),
    "lightningdit-800": dict(_OFFICIAL_SAMPLER, guidance_scale=6.7, guidance_interval=[0.125, 1.0]),
}
VAVAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=32,
    block_out_channels=(128, 128, 256, 256, 512),
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=1.0,
    down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
    up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
)


def load_checkpoint(path: str | Path) -> dict:
    """The object a ``.pt`` checkpoint holds (``weights_only=True``), which must be a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConversionError(f"could not read {path} as a PyTorch checkpoint (truncated or not one?): {err}") from err
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def checkpoint_tensors(obj: dict, path: str | Path, prefer: tuple[str, ...] = ("ema", "model", "state_dict")) -> dict:
    """Tensors of a loaded checkpoint: its ``ema`` entry when present, else ``model`` / ``state_dict``, else the
    checkpoint itself; DDP ``module.`` prefixes removed."""
    for key in prefer:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(
            f"{path} has no tensors under {list(prefer)} or at its top level (keys: {list(obj)[:8]})"
        )
    return tensors


def load_state_dict(path: str | Path, prefer: tuple[str, ...] = ("ema", "model", "state_dict")) -> dict:
    """Tensors of a ``.pt`` checkpoint (``weights_only=True``): its ``ema`` entry when present, else
    ``model`` / ``state_dict``, else the file itself; DDP ``module.`` prefixes removed."""
    return checkpoint_tensors(load_checkpoint(path), path, prefer)


# LightningDiT's releases: its epochs count passes over ImageNet-1k's training set (80,000 steps of 1,024 = 64 epochs)
LIGHTNINGDIT_RELEASES = (64, 800)
IMAGENET_TRAIN_IMAGES = 1_281_167


def recorded_epochs(checkpoint: dict) -> float | None:
    """The training length a checkpoint records in the ``config`` entry that LightningDiT's ``train.py`` saves (its
    YAML recipe): an ``epochs`` entry, or ``train.max_steps × train.global_batch_size`` over ImageNet's training
    images. None when it records neither."""
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        return None
    train = config.get("train") if isinstance(config.get("train"), dict) else {}

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

    for section in (train, config):
        if number(section.get("epochs")):
            return float(section["epochs"])
    steps, batch = train.get("max_steps"), train.get("global_batch_size")
    if number(steps) and number(batch):
        return steps * batch / IMAGENET_TRAIN_IMAGES
    return None


def lightningdit_release(checkpoint: dict, epochs: int | None, path: str | Path) -> int:
    """Which LightningDiT release (64 or 800 epochs, whose guidance settings differ) a checkpoint is: what it records
    (:func:`recorded_epochs`, within 5 % of a release), else ``epochs`` (``--epochs``); the two must agree."""
    recorded = recorded_epochs(checkpoint)
    release = None
    if recorded is not None:
        release = next((e for e in LIGHTNINGDIT_RELEASES if abs(recorded - e) <= 0.05 * e), None)
    if epochs is None:
        if release is None:
            what = "does not record its training length" if recorded is None else f"records {recorded:.0f} epochs"
            raise ConversionError(
                f"{path} {what}: pass --epochs 64 or --epochs 800, the LightningDiT release whose guidance settings "
                "the pipeline stores"
            )
        return release
    if release is not None and release != epochs:
        raise ConversionError(
            f"--epochs {epochs} contradicts {path}, whose training config records {release} epochs "
            f"({recorded:.1f}); pass --epochs {release} or leave it out"
        )
    return epochs


def _check_keys(renamed: dict, target: dict, source_name: str) -> None:
    missing = sorted(set(target) - set(renamed))
    extra = sorted(set(renamed) - set(target))
    wrong = sorted(k for k in set(target) & set(renamed) if renamed[k].shape != target[k].shape)
    if missing or extra or wrong:
        lines = [f"{source_name} does not match the model it should fill:"]
        if missing:
            lines.append(f"  target keys not filled ({len(missing)}): {missing[:10]}")
        if extra:
            lines.append(f"  source keys left over ({len(extra)}): {extra[:10]}")
        if wrong:
            lines.append(
                "  shape mismatches: "
                + ", ".join(f"{k} {tuple(renamed[k].shape)} vs {tuple(target[k].shape)}" for k in wrong[:5])
            )
        raise ConversionError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# transformers


_KIND_NAMES = {"flashdit": "FlashDiT", "lightningdit": "LightningDiT"}


def _detect_kind(state: dict, width: int) -> tuple[str, str] | None:
    """``(kind, evidence)`` from the keys and shapes alone: the official FlashDiT has a depthwise conv in each block
    and a 7·D modulation, LightningDiT a 6·D one and no convolution (and its sin-cos and RoPE tables); None for
    anything else."""
    ada = state.get("blocks.0.adaLN_modulation.1.weight")
    n = ada.shape[0] // width if ada is not None and ada.ndim == 2 else None
    conv = any(re.match(r"blocks\.\d+\.dwconv\.", k) for k in state)
    tables = [k for k in ("pos_embed", "feat_rope.freqs_cos") if k in state]
    if conv and n == 7:
        return "flashdit", "a depthwise conv in each block, 7·D adaLN modulation"
    if not conv and n == 6:
        return "lightningdit", ", ".join(["6·D adaLN modulation", *tables, "no depthwise conv"])
    return None


def detect_kind(state: dict) -> str | None:
    """``"flashdit"`` or ``"lightningdit"`` from a transformer checkpoint's keys and shapes; None when neither."""
    weight = state.get("x_embedder.proj.weight")
    found = _detect_kind(state, weight.shape[0]) if weight is not None and weight.ndim == 4 else None
    return found[0] if found else None


def _infer_config(state: dict, kind: str, num_heads: int | None, window_size: int) -> dict:
    if "x_embedder.proj.weight" not in state or "y_embedder.embedding_table.weight" not in state:
        raise ConversionError(f"not a {kind} checkpoint: no x_embedder/y_embedder weights (keys: {list(state)[:6]})")
    D, C, p, _ = state["x_embedder.proj.weight"].shape
    detected = _detect_kind(state, D)
    if detected is not None and detected[0] != kind:
        other, evidence = detected
        raise ConversionError(
            f"this looks like a {_KIND_NAMES[other]} checkpoint ({evidence}), not a {_KIND_NAMES[kind]} one: "
            f"use `python -m flashdit.convert {other}`"
        )
    for key in ("blocks.0.adaLN_modulation.1.weight", "final_layer.linear.weight"):
        if key not in state:
            raise ConversionError(f"not a {kind} checkpoint: no {key} (keys: {list(state)[:6]})")
    if "blocks.0.mlp.w12.weight" not in state or "blocks.0.mlp.w3.weight" not in state:
        found = sorted({k[len("blocks.0.") :].rsplit(".", 1)[0] for k in state if k.startswith("blocks.0.mlp.")})
        raise ConversionError(
            f"the blocks' MLP is {', '.join(found) or 'missing'}, not SwiGLU: only the SwiGLU MLP (mlp.w12, mlp.w3) "
            "of the official FlashDiT and LightningDiT (use_swiglu) converts"
        )
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if num_heads is None:
        sizes = [v for v in FLASHDIT_SIZES.values() if v["hidden_size"] == D and v["depth"] == depth]
        if not sizes:
            raise ConversionError(f"width {D} / depth {depth} is not a registry size; pass --num-heads")
        num_heads = sizes[0]["num_heads"]
    hidden2 = state["blocks.0.mlp.w12.weight"].shape[0]
    mlp_ratio = 4.0
    if int(2 / 3 * int(D * mlp_ratio)) * 2 != hidden2:
        raise ConversionError(f"SwiGLU width {hidden2 // 2} is not int(2/3 · 4 · {D}); unsupported mlp_ratio")
    out = state["final_layer.linear.weight"].shape[0]
    if out != p * p * C:
        raise ConversionError(f"the final layer predicts {out // (p * p)} channels for {C} inputs (learn_sigma?)")
    ada = state["blocks.0.adaLN_modulation.1.weight"].shape[0] // D
    expected_ada = 7 if kind == "flashdit" else 6
    if ada != expected_ada:
        raise ConversionError(
            f"{kind} blocks should have {expected_ada}·D modulation, this one has {ada}·D (wo_shift?)"
        )
    config = dict(
        patch_size=p,
        in_channels=C,
        hidden_size=D,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        class_dropout_prob=0.1,
        qk_norm="blocks.0.attn.q_norm.weight" in state,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )
    if kind == "flashdit":
        config.update(
            mixer="iwin", window_size=window_size, kernel_size=3, pos_embed="none", modulation="flashdit-official"
        )
    else:
        config.update(mixer="attention", kernel_size=None, pos_embed="sincos+rope")
    return config


def _rename_block_key(key: str) -> str:
    key = re.sub(r"^(blocks\.\d+)\.attn\.", r"\1.mixer.attn.", key)
    return re.sub(r"^(blocks\.\d+)\.dwconv\.depthwise\.", r"\1.mixer.conv.conv.", key)


def _drop_fixed_position_tables(state: dict, config: dict, sample_size: int) -> dict:
    """LightningDiT stores its (fixed) sin-cos table and RoPE tables; check them against ours, drop them."""
    state = dict(state)
    D, heads = config["hidden_size"], config["num_heads"]
    g = sample_size // config["patch_size"]
    if "pos_embed" in state:
        ours = sincos_pos_embed_2d(D, g, g).reshape(1, g * g, D)
        theirs = state.pop("pos_embed").float()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-5):
            raise ConversionError(
                f"pos_embed {tuple(theirs.shape)} is not the fixed 2-D sin-cos table of a {g}x{g} grid"
            )
    for name in ("feat_rope.freqs_cos", "feat_rope.freqs_sin"):
        if name in state:
            cos, sin = rope_tables_2d(D // heads, g, g)
            ours = (cos if name.endswith("cos") else sin).reshape(g * g, -1)
            theirs = state.pop(name).float()
            if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-4):
                raise ConversionError(f"{name} is not the 2-D RoPE table this model computes")
    return state


def convert_transformer(
    state: dict, kind: str, sample_size: int = 16, num_heads: int | None = None, window_size: int = 8
) -> FlashDiTTransformer2DModel:
    """An official FlashDiT (``kind="flashdit"``) or LightningDiT (``"lightningdit"``) state dict as a
    ``FlashDiTTransformer2DModel``, loaded strictly."""
    if kind not in ("flashdit", "lightningdit"):
        raise ValueError(f"kind must be 'flashdit' or 'lightningdit', got {kind!r}")
    config = _infer_config(state, kind, num_heads, window_size)
    p = config["patch_size"]
    if sample_size <= 0 or sample_size % p:
        raise ConversionError(f"--sample-size {sample_size} is not a positive multiple of the checkpoint's patch {p}")
    grid = sample_size // p
    if kind == "flashdit" and (window_size <= 0 or grid % window_size):
        # the official code partitions the grid into whole windows; this model would pad, and compute otherwise
        divisors = [d for d in range(1, grid + 1) if grid % d == 0]
        raise ConversionError(
            f"--window-size {window_size} does not divide the checkpoint's {grid}x{grid} token grid "
            f"(--sample-size {sample_size}, patch {p}): the official FlashDiT needs whole windows; choose one of "
            f"{divisors}"
        )
    if kind == "lightningdit":
        state = _drop_fixed_position_tables(state, config, sample_size)
    with torch.device("meta"):
        model = FlashDiTTransformer2DModel(sample_size=sample_size, **config)
    renamed = {_rename_block_key(k): v for k, v in state.items()}
    _check_keys(renamed, model.state_dict(), f"the {kind} checkpoint")
    model = model.to_empty(device="cpu")
    model.load_state_dict(renamed, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# VA-VAE (LDM AutoencoderKL) -> diffusers AutoencoderKL


def _ldm_vae_key(key: str, num_levels: int) -> str | None:
    """Rename one LDM autoencoder key to diffusers; None for keys with no counterpart."""
    rules = [
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.", r"encoder.down_blocks.\1.attentions.\2."),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv."),
        (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
        (
            r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.resnets.{m.group(2)}.",
        ),
        (
            r"^decoder\.up\.(\d+)\.attn\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.attentions.{m.group(2)}.",
        ),
        (
            r"^decoder\.up\.(\d+)\.upsample\.conv\.",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.upsamplers.0.conv.",
        ),
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    key = key.replace(".nin_shortcut.", ".conv_shortcut.")
    if ".attentions." in key:  # LDM attention: norm, q, k, v, proj_out (1x1 convs)
        for old, new in (
            (".norm.", ".group_norm."),
            (".q.", ".to_q."),
            (".k.", ".to_k."),
            (".v.", ".to_v."),
            (".proj_out.", ".to_out.0."),
        ):
            key = key.replace(old, new)
    return key


# Training-only modules of the VA-VAE checkpoint: the LPIPS/discriminator loss, the DINOv2 teacher
# and the projection onto it (LightningDiT's own loader drops them too).
VAVAE_TRAINING_ONLY = ("loss.", "foundation_model.", "linear_proj.")


def convert_vae(
    state: dict, config: dict | None = None, ignore_prefixes: tuple[str, ...] = VAVAE_TRAINING_ONLY
) -> AutoencoderKL:
    """An LDM ``AutoencoderKL`` state dict (VA-VAE layout by default) as a diffusers ``AutoencoderKL``.

    Keys under ``ignore_prefixes`` (training-only modules such as the discriminator/LPIPS ``loss.``)
    are dropped and reported; any other key that finds no place is an error.
    """
    config = dict(config or VAVAE_CONFIG)
    dropped = sorted(k for k in state if k.startswith(tuple(ignore_prefixes)))
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    vae = AutoencoderKL(**config)
    target = vae.state_dict()
    levels = len(config["block_out_channels"])
    renamed = {}
    for key, value in state.items():
        new = _ldm_vae_key(key, levels)
        if new in target and value.ndim == 4 and target[new].ndim == 2:  # 1x1 conv -> linear
            value = value[:, :, 0, 0]
        renamed[new] = value
    _check_keys(renamed, target, "the VAE checkpoint")
    vae.load_state_dict(renamed, strict=True)
    vae.dropped_keys = dropped
    return vae.eval()


def load_latent_stats(path: str | Path) -> tuple[list[float], list[float]]:
    """LightningDiT's ``latents_stats.pt``: per-channel ``mean`` and ``std``."""
    stats = load_state_dict(path, prefer=())
    if "mean" not in stats or "std" not in stats:
        raise ConversionError(f"{path} should hold 'mean' and 'std' tensors; it has {list(stats)}")
    mean, std = stats["mean"].flatten().tolist(), stats["std"].flatten().tolist()
    if len(mean) != len(std) or min(std) <= 0:
        raise ConversionError(f"{path}: mean ({len(mean)}) and std ({len(std)}) must match and std be positive")
    return mean, std
