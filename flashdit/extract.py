"""Encode a dataset into latent shards for training (LightningDiT-style feature extraction).

    python -m flashdit.extract --source /data/imagenet/train --vae stabilityai/sd-vae-ft-ema \\
        --resolution 256 --out latents/imagenet256_sdvae
    accelerate launch -m flashdit.extract ...           # shards split across processes
    python -m flashdit.extract --source /usr/share/datasets/fashion-mnist --vae none --resolution 32 --out fm32

``--source`` is an ImageFolder tree (``class/image.jpg``, ImageNet layout) or a directory of
MNIST-format IDX files. Images are centre-cropped and resized (ADM/DiT), or padded when they are
smaller than ``--resolution`` (MNIST-like data); ``--vae none`` stores the pixels themselves in [-1, 1].
Each shard holds ``latents``, ``latents_flip`` (the horizontally flipped image) and ``labels`` and is
written atomically; re-running skips finished shards. Statistics and metadata.json come last.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .arguments import ArgumentParser, bounded_int
from .data import FASHION_MNIST_CLASSES, IDX_FILES, IMAGE_EXTS, find_idx, load_idx_split, pad_images
from .outputs import TOOL_KEY, check_output, locked_output, owned_by, stamp
from .utils import atomic_path, launch_state


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer greyscale (e.g. 16-bit PNGs, mode ``I;16`` or ``I``) scaled to 8 bits;
    PIL's own conversion to ``L``/``RGB`` would clip them to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        top = 255.0 if arr.max() <= 255 else 65535.0
        return Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    return image


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: halve with a box filter while possible, resize bicubically so the short side
    is ``size``, then crop the centre ``size × size``."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


class ImageSource:
    """Images in a fixed order as float ``(C, R, R)`` in [-1, 1], with labels and class names."""

    def __init__(self, source: str | Path, resolution: int, channels: int, split: str = "train"):
        self.root, self.resolution, self.channels = Path(source), resolution, channels
        if not self.root.is_dir():
            raise FileNotFoundError(f"--source {self.root} is not a directory")
        if find_idx(self.root, IDX_FILES[split][0]) is not None:
            self.kind = "idx"
            self.images, labels = load_idx_split(self.root, split)
            self.labels = labels.tolist()
            n = int(labels.max()) + 1
            self.class_names = FASHION_MNIST_CLASSES if n == 10 else [str(i) for i in range(n)]
            h, w = self.images.shape[1:]
            if max(h, w) > resolution:
                raise ValueError(f"--resolution {resolution} is smaller than the {h}x{w} IDX images")
        else:
            self.kind = "folder"
            self.class_names = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            self.files, self.labels = [], []
            for label, name in enumerate(self.class_names):
                for f in sorted((self.root / name).rglob("*")):
                    if f.suffix.lower() in IMAGE_EXTS:
                        self.files.append(f)
                        self.labels.append(label)
            if not self.files:
                raise FileNotFoundError(
                    f"{self.root} holds neither IDX files ({IDX_FILES[split][0]}[.gz]) nor class folders with images"
                )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.kind == "idx":
            arr = pad_images(self.images[i : i + 1], self.resolution)[0].repeat(self.channels, axis=-1)
        else:
            try:
                with Image.open(self.files[i]) as img:
                    img = to_8bit(img)
                    arr = center_crop_arr(img.convert("RGB" if self.channels == 3 else "L"), self.resolution)
            except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
                raise ValueError(f"cannot read image {self.files[i]}: {err}") from None
            arr = arr.reshape(self.resolution, self.resolution, -1)
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div(127.5).sub(1)  # a writable copy


def load_vae(source: str, subfolder: str | None, device):
    if source.lower() == "none":
        return None
    return AutoencoderKL.from_pretrained(source, subfolder=subfolder).to(device).eval()


@torch.no_grad()
def encode(vae, x: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    if vae is None:
        return x.float().cpu().contiguous()
    dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return z.float().cpu().contiguous()


def compute_stats(out: Path, shards: list[str], num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std over ``num_samples`` random latents (all positions), as LightningDiT."""
    counts = []
    for name in shards:
        with safe_open(out / name, framework="pt") as f:
            counts.append(f.get_slice("latents").get_shape()[0])
    total = sum(counts)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(total, generator=g)[: min(num_samples, total)].sort().values
    offsets = np.cumsum([0] + counts)
    chunks = []
    for s, name in enumerate(shards):
        rows = pick[(pick >= offsets[s]) & (pick < offsets[s + 1])] - int(offsets[s])
        if len(rows):
            with safe_open(out / name, framework="pt") as f:
                chunks.append(f.get_tensor("latents")[rows])
    z = torch.cat(chunks).double()
    return z.mean(dim=(0, 2, 3)).float(), z.std(dim=(0, 2, 3)).float()


TOOL = "flashdit.extract"  # the stamp on every file this command writes (flashdit.outputs)


def check_settings(out: Path, settings: dict) -> None:
    """Record what the shards in ``out`` depend on; a rerun with other settings is refused, so finished
    shards are only ever reused by the run that made them."""
    path = out / "extract_settings.json"
    if path.is_file():
        old = {k: v for k, v in json.loads(path.read_text()).items() if k != TOOL_KEY}
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"--out {out} holds shards made with other settings ({what}); use another --out")
        return
    if out.is_dir() and any(out.glob("shard_*.safetensors")):
        raise ValueError(f"--out {out} holds shards of unknown settings (no extract_settings.json); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**settings, **stamp(TOOL)}, indent=1))


def main(args: argparse.Namespace) -> Path:
    state = launch_state()
    out = Path(args.out)
    if state.is_main_process:  # before the VAE loads
        check_output(out, owned_by(TOOL), f"{TOOL} output")
    with locked_output(out, "--out", take=state.is_main_process):
        return extract(args, state, out)


def extract(args: argparse.Namespace, state, out: Path) -> Path:
    vae = load_vae(args.vae, args.vae_subfolder, state.device)
    channels = vae.config.in_channels if vae is not None else args.pixel_channels
    src = ImageSource(args.source, args.resolution, channels, args.split)
    n, S = len(src), args.shard_size
    num_shards = math.ceil(n / S)
    names = [f"shard_{k:05d}.safetensors" for k in range(num_shards)]
    mine = [k for k in range(num_shards) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not (out / names[k]).is_file()]
    if state.is_main_process:
        check_settings(
            out,
            dict(
                source=str(src.root.resolve()),
                split=args.split,
                vae=args.vae,
                vae_subfolder=args.vae_subfolder,
                resolution=args.resolution,
                shard_size=S,
                sample_posterior=args.sample_posterior,
                channels=channels,
                seed=args.seed,
                num_images=n,
            ),
        )
    state.wait_for_everyone()
    skipped = len(mine) - len(todo)
    bar = tqdm(
        total=sum(min(S, n - k * S) for k in todo),
        unit="img",
        desc=f"encode [rank {state.process_index}]",
        disable=not state.is_local_main_process,
    )
    if skipped:
        bar.write(f"rank {state.process_index}: {skipped} finished shard(s) skipped")
    start = time.perf_counter()
    for k in todo:
        g = torch.Generator(device=state.device).manual_seed(args.seed + k) if args.sample_posterior else None
        lat, lat_flip = [], []
        for i in range(k * S, min((k + 1) * S, n), args.batch_size):
            x = torch.stack([src[j] for j in range(i, min(i + args.batch_size, (k + 1) * S, n))])
            lat.append(encode(vae, x, args.sample_posterior, g))
            lat_flip.append(encode(vae, x.flip(-1), args.sample_posterior, g))
            bar.update(len(x))
            bar.set_postfix(img_s=f"{bar.n / (time.perf_counter() - start):.1f}")
        labels = torch.tensor(src.labels[k * S : min((k + 1) * S, n)], dtype=torch.int64)
        with atomic_path(out / names[k]) as tmp:
            tensors = {"latents": torch.cat(lat), "latents_flip": torch.cat(lat_flip), "labels": labels}
            save_file(tensors, tmp, metadata=stamp(TOOL))
    bar.close()
    state.wait_for_everyone()

    if state.is_main_process:
        with safe_open(out / names[0], framework="pt") as f:
            shape = f.get_slice("latents").get_shape()
        counts = [min(S, n - k * S) for k in range(num_shards)]
        normalization = args.normalization or ("mean_std" if vae is not None else "none")
        mean, std = compute_stats(out, names, args.stats_samples, args.seed)
        with atomic_path(out / "latents_stats.safetensors") as tmp:
            save_file({"mean": mean, "std": std}, tmp, metadata=stamp(TOOL))
        scaling = args.scaling_factor or (getattr(vae.config, "scaling_factor", None) if vae is not None else None)
        meta = dict(
            vae=None if vae is None else dict(source=args.vae, subfolder=args.vae_subfolder),
            source=str(src.root),
            resolution=args.resolution,
            num_images=n,
            num_classes=len(src.class_names),
            class_names=src.class_names,
            latent_channels=shape[1],
            latent_size=shape[2],
            normalization=normalization,
            scaling_factor=scaling if normalization == "scaling_factor" else None,
            shard_size=S,
            shards=[dict(file=f, count=c) for f, c in zip(names, counts)],
        )
        with atomic_path(out / "metadata.json") as tmp:
            tmp.write_text(json.dumps({**meta, **stamp(TOOL)}, indent=1))
        print(f"{n} images -> {num_shards} shards in {out}; per-channel mean {mean.tolist()} std {std.tolist()}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="ImageFolder root or directory of IDX files")
    p.add_argument("--split", choices=list(IDX_FILES), default="train", help="IDX split")
    p.add_argument("--vae", required=True, help="diffusers AutoencoderKL (path or hub id), or 'none' for pixels")
    p.add_argument("--vae-subfolder", default=None)
    p.add_argument("--resolution", type=bounded_int(1, 16_384), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=bounded_int(1, 65_536), default=32)
    p.add_argument("--shard-size", type=bounded_int(1, 1 << 20), default=4096)
    p.add_argument("--stats-samples", type=bounded_int(1, 10_000_000), default=10_000)
    p.add_argument(
        "--normalization",
        choices=["mean_std", "scaling_factor", "none"],
        default=None,
        help="how training normalises latents (default: mean_std with a VAE, none for pixels)",
    )
    p.add_argument("--scaling-factor", type=float, default=None, help="default: the VAE config's")
    p.add_argument("--sample-posterior", action="store_true", help="sample the VAE posterior instead of its mode")
    p.add_argument(
        "--pixel-channels", type=int, choices=[1, 3], default=1, help="with --vae none: 1 (grey) or 3 (RGB)"
    )
    p.add_argument("--seed", type=bounded_int(0, 2**31 - 1), default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    from .cli import run

    run(main, parse_args())
