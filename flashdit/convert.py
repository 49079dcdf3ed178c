"""Convert the published checkpoints into FlashDiT pipelines.

    python -m flashdit.convert flashdit --ckpt flashdit-xl-win8-imagenet256-56ep.pt \\
        --vae vavae-imagenet256-f16d32-dinov2.pt --stats latents_stats.pt --out flashdit-xl-win8
    python -m flashdit.convert lightningdit --ckpt lightningdit-xl-imagenet256-800ep.pt --epochs 800 \\
        --vae vavae-imagenet256-f16d32-dinov2.pt --stats latents_stats.pt --out lightningdit-xl-800ep
    python -m flashdit.convert vae --ckpt vavae-imagenet256-f16d32-dinov2.pt --out vavae-f16d32

The same conversion in Python: ``FlashDiTPipeline.from_single_file(ckpt, vae=..., latents_stats=...)``. The
sources, and what is checked while reading them: ``flashdit/official.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import ArgumentParser
from .errors import ConversionError
from .official import (
    AUTHORS_SAMPLING,
    LIGHTNINGDIT_RELEASES,
    VAVAE_TRAINING_ONLY,
    convert_transformer,
    convert_vae,
    load_latent_stats,
    load_state_dict,
)
from .outputs import check_output_dir, save_dir_atomically
from .pipeline import PIPELINE_ENTRIES, FlashDiTPipeline, export_pipeline

VAE_ENTRIES = {"config.json", "diffusion_pytorch_model.safetensors"}
__all__ = ["AUTHORS_SAMPLING", "ConversionError", "convert_transformer", "convert_vae", "load_latent_stats"]
__all__ += ["load_state_dict", "main"]


def main(argv=None) -> Path:
    p = ArgumentParser(
        prog="python -m flashdit.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", choices=["flashdit", "lightningdit", "vae"])
    p.add_argument("--ckpt", required=True, help="the .pt checkpoint")
    p.add_argument("--out", required=True, help="pipeline (or, for vae, AutoencoderKL) directory to write")
    p.add_argument("--vae", default=None, help="VA-VAE .pt (LDM) or a diffusers AutoencoderKL directory")
    p.add_argument("--stats", default=None, help="latents_stats.pt (per-channel mean/std of the training latents)")
    p.add_argument(
        "--epochs",
        type=int,
        choices=list(LIGHTNINGDIT_RELEASES),
        default=None,
        help="LightningDiT: which release (its guidance settings); read from the checkpoint's config when it has one",
    )
    p.add_argument("--sample-size", type=int, default=16, help="latent grid of the training data")
    p.add_argument("--num-heads", type=int, default=None, help="only for widths outside the size registry")
    p.add_argument(
        "--window-size", type=int, default=8, help="the checkpoint's window: 8 for the official FlashDiT release"
    )
    p.add_argument(
        "--vae-config",
        default=None,
        help="JSON diffusers AutoencoderKL config for an LDM VAE of another layout (default: VA-VAE f16d32)",
    )
    p.add_argument(
        "--ignore-prefix",
        action="append",
        default=list(VAVAE_TRAINING_ONLY),
        help="VAE: training-only key prefixes to drop (repeatable)",
    )
    args = p.parse_args(argv)
    if args.source == "vae":  # before reading a checkpoint of gigabytes
        check_output_dir(args.out, VAE_ENTRIES, "config.json", "diffusers AutoencoderKL")
    else:
        check_output_dir(args.out, PIPELINE_ENTRIES, "model_index.json", "FlashDiT pipeline")

    vae_config = None
    if args.vae_config:
        try:
            vae_config = json.loads(Path(args.vae_config).read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ConversionError(f"--vae-config {args.vae_config} is not a JSON file ({err})") from None
    if args.source == "vae":
        vae = convert_vae(load_state_dict(args.ckpt), vae_config, tuple(args.ignore_prefix))
        save_dir_atomically(vae.save_pretrained, args.out, VAE_ENTRIES, "config.json", "diffusers AutoencoderKL")
        print(f"wrote {args.out} (dropped {len(vae.dropped_keys)} training-only keys)")
        return Path(args.out)
    pipe = FlashDiTPipeline.from_single_file(
        args.ckpt,
        kind=args.source,  # a checkpoint of the other kind is named as such
        vae=args.vae,
        latents_stats=args.stats,
        epochs=args.epochs,
        sample_size=args.sample_size,
        num_heads=args.num_heads,
        window_size=args.window_size,
        vae_config=vae_config,
        vae_ignore_prefixes=tuple(args.ignore_prefix),
    )
    out = export_pipeline(pipe, args.out)
    n = pipe.transformer.num_parameters()
    sampling = dict(pipe.config.sampling)
    release = next(k for k, v in AUTHORS_SAMPLING.items() if k.startswith(args.source) and v == sampling)
    print(f"wrote {out}: {release} {n / 1e6:.1f}M parameters, sampling defaults {sampling}")
    return out


if __name__ == "__main__":
    from .cli import run

    run(main)
