"""Training data: MNIST-format IDX files (Fashion-MNIST in pixel space), image folders for extraction,
latent shards written by ``python -m flashdit.extract``, and a resumable distributed batch order.

A latent directory holds ``shard_00000.safetensors ...`` (``latents``, ``latents_flip``, ``labels``),
``latents_stats.safetensors`` (per-channel ``mean``/``std``) and ``metadata.json`` (written last: a
directory without it is an unfinished extraction).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset, Sampler

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_idx_split(root: str | Path | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, H, W), labels int64 (N,))`` from the standard IDX file names in ``root``
    (default: where Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST)."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be one of {list(IDX_FILES)}, got {split!r}")
    root = Path(root or FASHION_MNIST_DIR)
    paths = [find_idx(root, stem) for stem in IDX_FILES[split]]
    if not root.is_dir() or None in paths:
        wanted = ", ".join(s + ".gz" for s in IDX_FILES[split])
        raise FileNotFoundError(
            f"no {split} IDX files in {root} (need {wanted}). For Fashion-MNIST: `apt-get install "
            f"dataset-fashion-mnist` (installs to {FASHION_MNIST_DIR}), or download the four files from "
            "https://github.com/zalandoresearch/fashion-mnist and set data.path to their directory"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, H, W)`` centred on a black ``size × size`` canvas: ``(N, size, size, 1)`` (Fashion-MNIST's 28
    to the models' 32)."""
    n, h, w = images.shape
    if size < max(h, w):
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left)))[..., None]


def pad_and_scale(images: np.ndarray, pad_to: int) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, 1, pad_to, pad_to)`` in [-1, 1], centred, black border."""
    n, h, w = images.shape
    if pad_to < max(h, w):
        raise ValueError(f"pad_to={pad_to} is smaller than the {h}x{w} images")
    x = torch.from_numpy(pad_images(images, pad_to)).float().div(127.5).sub(1)
    return x.permute(0, 3, 1, 2).contiguous()


class TensorImageDataset(Dataset):
    """In-memory pixel-space dataset; items are ``(index, flip)`` pairs from :class:`ResumableBatchSampler`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str]):
        self.images, self.labels, self.class_names = images, labels, class_names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        idx, flip = item
        x = self.images[idx]
        return (x.flip(-1) if flip else x), int(self.labels[idx])

    @property
    def info(self) -> dict:
        c, h, w = self.images.shape[1:]
        return dict(channels=c, size=h, num_classes=len(self.class_names), class_names=self.class_names, vae=None)


def fashion_mnist(root: str | Path | None = None, split: str = "train", pad_to: int = 32) -> TensorImageDataset:
    images, labels = load_idx_split(root, split)
    return TensorImageDataset(pad_and_scale(images, pad_to), torch.from_numpy(labels), FASHION_MNIST_CLASSES)


class LatentShardDataset(Dataset):
    """Latents written by ``flashdit.extract``, read lazily shard by shard, normalised for training
    (``(z - mean) / std`` with the stored statistics, or ``z · scaling_factor``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "metadata.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.root} has no metadata.json: not a latent directory, or its extraction has not finished "
                "(re-run `python -m flashdit.extract` with the same arguments to complete it)"
            )
        self.meta = json.loads(meta_path.read_text())
        self.shards = [s["file"] for s in self.meta["shards"]]
        counts = [s["count"] for s in self.meta["shards"]]
        missing = [f for f in self.shards if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.root}: shard files {missing[:3]} listed in metadata.json are missing")
        self.offsets = np.cumsum([0] + counts)
        self.mean = self.std = None
        self.scale = 1.0
        if self.meta["normalization"] == "mean_std":
            stats = load_file(self.root / "latents_stats.safetensors")
            self.mean, self.std = stats["mean"].view(-1, 1, 1), stats["std"].view(-1, 1, 1)
        elif self.meta["normalization"] == "scaling_factor":
            self.scale = float(self.meta["scaling_factor"])
        self._handles: dict[int, object] = {}
        self._labels = torch.cat([self._open(i).get_tensor("labels") for i in range(len(self.shards))])

    def _open(self, shard: int):
        if shard not in self._handles:  # one handle per shard and process (DataLoader workers open their own)
            self._handles[shard] = safe_open(self.root / self.shards[shard], framework="pt")
        return self._handles[shard]

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        idx, flip = item
        shard = int(np.searchsorted(self.offsets, idx, side="right") - 1)
        row = idx - int(self.offsets[shard])
        z = self._open(shard).get_slice("latents_flip" if flip else "latents")[row : row + 1][0].float()
        if self.mean is not None:
            z = (z - self.mean) / self.std
        else:
            z = z * self.scale
        return z, int(self._labels[idx])

    @property
    def info(self) -> dict:
        m = self.meta
        return dict(
            channels=m["latent_channels"],
            size=m["latent_size"],
            num_classes=m["num_classes"],
            class_names=m["class_names"],
            vae=m["vae"],
            normalization=m["normalization"],
            scaling_factor=m.get("scaling_factor"),
            stats=None if self.mean is None else (self.mean.flatten().tolist(), self.std.flatten().tolist()),
        )


class ResumableBatchSampler(Sampler):
    """Per-process batches of ``(index, flip)`` pairs in a seeded order, from any position.

    Each epoch is a permutation of the dataset drawn from ``seed + epoch``; global batch ``b`` of it is
    ``perm[b·G : (b+1)·G]`` with ``G = batch_size · world_size``, and process ``rank`` takes its slice.
    Flips are drawn from the same seed. So the order depends only on (seed, global batch size), and
    resuming at micro-batch ``position`` replays exactly what an uninterrupted run would have seen.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        random_flip: bool = False,
        position: int = 0,
    ):
        self.num_items, self.batch_size, self.rank, self.world_size = num_items, batch_size, rank, world_size
        self.seed, self.random_flip, self.position = seed, random_flip, position
        self.batches_per_epoch = num_items // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_items} examples, fewer than one global batch of {batch_size * world_size}"
            )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch, batch = divmod(self.position, self.batches_per_epoch)
        G = self.batch_size * self.world_size
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.num_items, generator=g)
            flips = torch.rand(self.num_items, generator=g) < 0.5 if self.random_flip else None
            for b in range(batch, self.batches_per_epoch):
                idx = perm[b * G + self.rank * self.batch_size : b * G + (self.rank + 1) * self.batch_size]
                flip = flips[idx] if flips is not None else torch.zeros(len(idx), dtype=torch.bool)
                self.position += 1
                yield list(zip(idx.tolist(), flip.tolist()))
            epoch, batch = epoch + 1, 0
