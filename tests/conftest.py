"""Shared test helpers: a small MNIST-format data set on disk, a tiny VAE, two CPU processes under
``accelerate launch``."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

ROOT = Path(__file__).resolve().parent.parent


def write_idx(path, array):
    dtype_code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + data)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A small MNIST-format dataset: 10 classes of 12 images, each a class-coloured 28x28 blob."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 12).astype(np.uint8)
    images = (rng.random((120, 28, 28)) * 40).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 4 + y : 14 + y, 6:22] += 200
    for img, lab in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ]:
        write_idx(root / f"{img}.gz", images)
        write_idx(root / f"{lab}.gz", labels)
    return root


def tiny_vae() -> AutoencoderKL:
    """A 2-level ``AutoencoderKL`` (factor 2, 4 latent channels), seeded, in eval mode."""
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
    ).eval()


def launch_two_cpu_processes(script: str, args: list[str], port: int) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``script`` with two CPU (gloo) processes, one thread each; asserts success."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--main_process_port", str(port)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, str(ROOT / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
