"""Ground-floor helpers (imports only :mod:`flashdit.errors`): atomic files and directories, image grids, device and
dtype choice."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from .errors import LaunchError, UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# downloaded or built assets (Inception weights, the Fashion-MNIST judge); FLASHDIT_CACHE moves it
CACHE_DIR = Path(os.environ.get("FLASHDIT_CACHE", Path.home() / ".cache" / "flashdit"))


_UMASK = os.umask(0)
os.umask(_UMASK)


_WRITE_FAILURES = ("unexpected pos", "failed writing", "file write failed", "I/O error", "os error")


@contextlib.contextmanager
def write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Name ``path`` in any write failure inside the block: a full disk or a file-size limit is an ``OSError`` with
    the file, however the writer reported it (``torch.save`` and safetensors raise their own errors)."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise
    except Exception as err:
        text = " ".join(str(err).split())
        if not any(key in text for key in _WRITE_FAILURES):
            raise
        try:
            free = f"; {shutil.disk_usage(Path(path).parent).free / 2**20:.0f} MiB free on its disk"
        except OSError:
            free = ""
        raise OSError(errno.EIO, f"could not write ({text}{free})", str(path)) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, so a
    crash mid-write leaves the previous file (or none) rather than a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private (0600); an output gets the usual permissions
    try:
        with write_errors(path):
            yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image(image: Image.Image, path: str | os.PathLike, pnginfo=None) -> None:
    """Write ``image`` atomically; ``pnginfo``: text chunks for a PNG (the writer's stamp)."""
    kwargs = {"pnginfo": pnginfo} if pnginfo is not None and Path(path).suffix.lower() == ".png" else {}
    with atomic_path(path) as tmp:
        image.save(tmp, format=Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG", **kwargs)


def image_grid(images: Sequence[Image.Image], nrow: int, pad: int = 2, fill: int = 255) -> Image.Image:
    """Tile equally sized images row-major, ``nrow`` per row, with a ``pad``-pixel margin."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + nrow - 1) // nrow
    color = fill if len(images[0].getbands()) == 1 else (fill,) * len(images[0].getbands())
    grid = Image.new(images[0].mode, (nrow * (w + pad) + pad, rows * (h + pad) + pad), color=color)
    for i, img in enumerate(images):
        grid.paste(img, (pad + (i % nrow) * (w + pad), pad + (i // nrow) * (h + pad)))
    return grid


def launch_state():
    """Accelerate's ``PartialState`` for the commands that split their work over a launch's processes (``eval_fid.py``,
    ``flashdit.extract``). On a machine without GPUs a multi-process launch runs CPU processes (gloo), as
    ``ACCELERATE_USE_CPU=1`` asks; a launch that Accelerate would run as independent single processes is refused."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes != launched:
        raise LaunchError(
            f"launched {launched} processes but Accelerate runs {state.num_processes} (distributed type "
            f"{state.distributed_type.value}): each would do all the work alone"
        )
    return state


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_writable(path: str | os.PathLike, what: str, create: bool = True) -> None:
    """Fail fast when the directory ``path`` cannot be written. ``create``: make it if missing; otherwise a missing
    directory is checked through the nearest existing one above it, and nothing is created."""
    path = Path(path)
    probe = path
    if not create:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise UserError(f"{what} {path} cannot be created: {probe} is a file")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write_test"):
            pass
    except OSError as err:
        raise UserError(f"{what} {path} is not writable ({err.strerror or err})") from None


def model_fingerprint(path: str) -> str:
    """Names, sizes and modification times of a pipeline directory's weight files: changes when the model at
    ``path`` is exported again (a hub id stands for itself)."""
    local = Path(path)
    if not local.is_dir():
        return str(path)
    files = sorted(p for p in local.rglob("*") if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return ";".join(f"{p.relative_to(local)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
