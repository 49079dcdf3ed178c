"""A diffusers ``AutoencoderKL`` trained on the data, for latent FlashDiT where no pretrained VAE fits: Fashion-MNIST's
32×32 grey images to a 16×16×C latent, the paper's token grid at patch 1.

    accelerate launch -m flashdit.autoencoder --config configs/autoencoder_fashion_mnist.yaml
    accelerate launch -m flashdit.autoencoder --config ... --resume          # continue from the newest checkpoint
    python -m flashdit.autoencoder --evaluate runs/autoencoder_fashion_mnist/vae \\
        --reference refs/fashion_mnist_test_2000.npz --num-images 2000          # PSNR and rFID of the test images

The run directory follows ``train.py``'s conventions (one run per directory, atomic checkpoints, a bit-exact
``--resume``, ``metrics.jsonl``, one-line errors). At the end the EMA weights are exported as a diffusers
``AutoencoderKL`` folder, ``<output_dir>/vae``, which ``python -m flashdit.extract --vae`` and the pipeline load as
they load SD-VAE or VA-VAE, and the reconstruction of real test images is measured (``reconstruction.json``).

The loss is LDM's without its perceptual and adversarial terms (neither has weights that work offline): L1
reconstruction plus ``kl_weight`` times the KL divergence of the posterior from N(0, I), each summed over an image
(its pixels, its latent values) and both divided by the image's pixels, so ``kl_weight`` means what it means in LDM.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from annotated_types import MaxLen, MinLen
from diffusers import AutoencoderKL
from torch import nn

from .arguments import ArgumentParser, bounded_int
from .checkpoint import check_resumable, find_resume_checkpoint, list_checkpoints
from .config import DataConfig, RunConfig, load_config, to_dict
from .data import fashion_mnist
from .errors import UserError
from .outputs import check_output, check_output_dir, locked_output, owned_by, save_dir_atomically, stamp
from .training import (
    STEP_STREAM,
    FirstN,
    TrainState,
    build_lr_scheduler,
    check_launch,
    ema_decay_at,
    ema_update,
    launch_rank,
    run_loop,
    start_run,
)
from .typed import STRICT_KEYS, Bool, Count, Float, Ge, Int, Interval
from .utils import atomic_path, image_grid, save_image

TOOL = "flashdit.autoencoder"
VAE_ENTRIES = {"config.json", "diffusion_pytorch_model.safetensors"}


@dataclass
class AutoencoderModelConfig:
    """The ``AutoencoderKL``: one level per entry of ``block_out_channels``; each level after the first halves the
    side, so two levels map 32×32 pixels to a 16×16 latent."""

    __pydantic_config__ = STRICT_KEYS

    latent_channels: Annotated[Int, Interval(ge=1, le=64)] = 4
    block_out_channels: Annotated[list[Count], MinLen(1), MaxLen(6)] = field(default_factory=lambda: [32, 64])
    layers_per_block: Annotated[Int, Interval(ge=1, le=8)] = 1
    norm_num_groups: Count = 16  # must divide every level's channels
    mid_block_attention: Bool = False  # self-attention in the middle block (SD-VAE has it; small latents need none)


@dataclass
class AutoencoderLossConfig:
    __pydantic_config__ = STRICT_KEYS

    reconstruction: Literal["l1", "mse"] = "l1"
    kl_weight: Annotated[Float, Ge(0)] = 1e-6  # LDM's convention (see the module docstring)


@dataclass
class AutoencoderConfig:
    """The autoencoder recipe: ``model``, ``loss``, ``data`` (image data: ``kind: fashion_mnist``) and ``train``."""

    __pydantic_config__ = STRICT_KEYS

    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/autoencoder"))


def build_autoencoder(cfg: AutoencoderModelConfig, channels: int) -> AutoencoderKL:
    """A freshly initialised ``AutoencoderKL`` for ``channels``-channel images."""
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise UserError(
            f"model.norm_num_groups={cfg.norm_num_groups} must divide every model.block_out_channels, not {bad}"
        )
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        latent_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=cfg.norm_num_groups,
        mid_block_add_attention=cfg.mid_block_attention,
        sample_size=32,
    )


class Reconstruction(nn.Module):
    """The training forward as one module (so that DDP sees it): encode, sample the posterior, decode.
    Returns ``(reconstruction, posterior mean, posterior log-variance)``."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.mean, posterior.logvar


def autoencoder_loss(
    x: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, cfg: AutoencoderLossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-image loss ``rec + kl_weight · kl`` (see the module docstring) and its terms, each ``(B,)``."""
    dims = tuple(range(1, x.ndim))
    error = reconstruction.float() - x.float()
    rec = (error.abs() if cfg.reconstruction == "l1" else error.square()).mean(dim=dims)
    kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1 - logvar.float()).sum(dim=dims)
    kl = kl / math.prod(x.shape[1:])
    return rec + cfg.kl_weight * kl, {"rec": rec, "kl": kl}


def autoencoder_step(state: TrainState, x: torch.Tensor, cfg: AutoencoderConfig):
    """One optimizer step: the loss, backward, the clipped gradient norm, the finiteness guard, AdamW, the schedule
    and the EMA. Returns ``(loss, terms, grad_norm)`` as tensors."""
    from .training import check_finite

    acc, t = state.accelerator, cfg.train
    with acc.autocast():
        out = state.model(x)
    loss, terms = autoencoder_loss(x, *out, cfg.loss)
    loss = loss.mean()
    acc.backward(loss)
    grad_norm = acc.clip_grad_norm_(state.params, t.max_grad_norm or math.inf)
    check_finite(acc, loss, grad_norm, state.step + 1, t.output_dir)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.scheduler.step()
    ema_update(state.ema, acc.unwrap_model(state.model), ema_decay_at(state.step, t.ema_decay, t.ema_warmup))
    return loss, terms, grad_norm


# --------------------------------------------------------------------------------------------
# reconstruction quality


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] ``(N, C, H, W)`` through the posterior mode and back, clamped to [-1, 1]."""
    vae = vae.eval()
    device = next(vae.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device, vae.dtype)
        out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of ``10·log10(1 / MSE)`` on [0, 1] pixels (inputs in [-1, 1])."""
    mse = ((a.float() - b.float()) / 2).square().flatten(1).mean(dim=1).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] ``(N, C, H, W)`` -> uint8 ``(N, H, W, C)``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_images(data: DataConfig, n: int) -> torch.Tensor:
    """The first ``n`` real test images, padded as the training data."""
    ds = fashion_mnist(data.path, "test", pad_to=data.pad_to)
    return ds.images[:n]


def evaluate(vae_dir: str, reference: str | None, num_images: int, data: DataConfig) -> dict:
    """PSNR of the first ``num_images`` test images through ``vae_dir``, and their FID against ``reference`` (the
    statistics ``eval_fid.py`` compares samples with)."""
    from .evaluation import InceptionFeatures, compute_metrics, load_reference

    vae = load_vae_dir(vae_dir)
    images = test_images(data, num_images)
    rec = reconstruct(vae, images)
    result = {"num_images": len(images), "psnr": round(psnr(rec, images), 3)}
    if reference is not None:
        inception = InceptionFeatures()
        ref = load_reference(reference, inception)
        result["rfid"] = round(compute_metrics(inception(to_uint8(rec)), ref, ["fid"])["fid"], 3)
        result["fid_of_the_originals"] = round(compute_metrics(inception(to_uint8(images)), ref, ["fid"])["fid"], 3)
        result["reference"] = str(reference)
    return result


def load_vae_dir(path: str) -> AutoencoderKL:
    try:
        return AutoencoderKL.from_pretrained(path).eval()
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise UserError(
            f"--evaluate {path} is not a diffusers AutoencoderKL folder ({type(err).__name__}: {reason})"
        ) from None


# --------------------------------------------------------------------------------------------
# the run


def check_settings(cfg: AutoencoderConfig) -> None:
    if cfg.data.kind != "fashion_mnist":
        raise UserError(f"data.kind={cfg.data.kind!r}: the autoencoder trains on images; use fashion_mnist")
    levels = len(cfg.model.block_out_channels)
    if cfg.data.pad_to % 2 ** (levels - 1):
        raise UserError(
            f"data.pad_to={cfg.data.pad_to} must be a multiple of {2 ** (levels - 1)} ({levels} levels halve the side "
            f"{levels - 1} times)"
        )
    build_autoencoder(cfg.model, 1)  # its own checks, before any data


def train_autoencoder(cfg: AutoencoderConfig, resume: str | bool | None = None) -> Path:
    """Train; returns the exported ``AutoencoderKL`` folder (or, after ``train.stop_after``, the checkpoint)."""
    output_dir = Path(cfg.train.output_dir)
    check_settings(cfg)
    with locked_output(output_dir, "train.output_dir", take=launch_rank() == 0):
        checkpoint = find_resume_checkpoint(output_dir, resume)
        if checkpoint is not None:
            check_resumable(checkpoint, cfg.train.global_batch_size)
        return _train(cfg, checkpoint, resume)


def _train(cfg: AutoencoderConfig, checkpoint: Path | None, resume) -> Path:
    t = cfg.train
    output_dir = Path(t.output_dir)
    accelerator = Accelerator(
        cpu=t.cpu, mixed_precision=t.mixed_precision, log_with=t.trackers or None, project_dir=t.output_dir
    )
    world = check_launch(accelerator, output_dir)
    if t.global_batch_size % world:
        raise UserError(f"train.global_batch_size={t.global_batch_size} must be divisible by the {world} processes")
    set_seed(t.seed, device_specific=True)
    dataset = fashion_mnist(cfg.data.path, "train", pad_to=cfg.data.pad_to)
    if cfg.data.limit is not None:
        dataset = FirstN(dataset, cfg.data.limit)
    model = Reconstruction(build_autoencoder(cfg.model, dataset.info["channels"]))
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=True)
    state = TrainState(model, ema, optimizer, build_lr_scheduler(optimizer, t))
    set_seed(t.seed + STEP_STREAM, device_specific=True)  # the steps' randomness: a stream of its own
    state.model, state.optimizer = accelerator.prepare(state.model, state.optimizer)
    state.accelerator = accelerator
    state.params = [p for p in state.model.parameters() if p.requires_grad]
    state.ema = state.ema.to(accelerator.device)
    micro = t.global_batch_size // world
    batches = start_run(accelerator, state, t, checkpoint, resume, dataset, cfg.data, micro, to_dict(cfg))
    grid_images = test_images(cfg.data, 8)

    def step():
        x, _ = next(batches)
        return autoencoder_step(state, x.to(accelerator.device, non_blocking=True), cfg)

    def sample(step: int) -> None:  # originals above their EMA reconstructions
        if accelerator.is_main_process:
            rec = reconstruct(state.ema.vae, grid_images)
            pil = [to_pil(a) for a in to_uint8(torch.cat([grid_images, rec]))]
            save_image(image_grid(pil, nrow=len(grid_images)), output_dir / "samples" / f"step_{step:07d}.png")

    if run_loop(accelerator, state, t, step, sample):
        return list_checkpoints(output_dir)[-1]
    accelerator.wait_for_everyone()
    out = output_dir / "vae"
    if accelerator.is_main_process:
        export_vae(state.ema.vae, out)
        real = test_images(cfg.data, 2000)
        quality = {"test_psnr_2000": round(psnr(reconstruct(state.ema.vae, real), real), 3)}
        with atomic_path(output_dir / "reconstruction.json") as tmp:
            tmp.write_text(json.dumps(quality, indent=1))
        accelerator.print(f"exported the EMA autoencoder to {out}; test PSNR {quality['test_psnr_2000']:.2f} dB")
    accelerator.end_training()
    return out


def to_pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def export_vae(vae: AutoencoderKL, out: Path) -> Path:
    """The ``AutoencoderKL`` folder (``config.json`` + safetensors), written atomically; a previous one is
    replaced, anything else refused."""
    bad = [n for n, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"the autoencoder to export holds NaN or inf in {bad[0]}; it is not written")
    return save_dir_atomically(vae.save_pretrained, out, VAE_ENTRIES, "config.json", "diffusers AutoencoderKL")


# --------------------------------------------------------------------------------------------
# command line


def main(args: argparse.Namespace) -> Path | dict:
    overrides = list(args.set) + ([f"train.output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides, cls=AutoencoderConfig)
    if args.evaluate:
        if args.out:
            check_output(args.out, owned_by(TOOL), f"{TOOL} report", kind="file")
        result = evaluate(args.evaluate, args.reference, args.num_images, cfg.data)
        print(json.dumps(result, indent=1))
        if args.out:
            with atomic_path(args.out) as tmp:
                tmp.write_text(json.dumps({**result, **stamp(TOOL)}, indent=1))
        return result
    check_output_dir(Path(cfg.train.output_dir) / "vae", VAE_ENTRIES, "config.json", "diffusers AutoencoderKL")
    return train_autoencoder(cfg, resume=args.resume)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m flashdit.autoencoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML recipe (default: the built-in defaults)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. loss.kl_weight=1e-5")
    p.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    p.add_argument("--resume", nargs="?", const=True, default=None, help="resume from the newest checkpoint, or PATH")
    p.add_argument("--evaluate", default=None, metavar="VAE", help="measure an exported AutoencoderKL and exit")
    p.add_argument("--reference", default=None, help="with --evaluate: FID reference of the test images (rFID)")
    p.add_argument("--num-images", type=bounded_int(2, 10_000), default=2000, help="with --evaluate: test images")
    p.add_argument("--out", default=None, help="with --evaluate: write the report (JSON) here")
    return p.parse_args(argv)


if __name__ == "__main__":
    from .cli import run

    run(main, parse_args())
