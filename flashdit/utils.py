"""Ground-floor helpers (no package imports): atomic files and directories, image grids, device and dtype choice."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# downloaded or built assets (Inception weights, the Fashion-MNIST judge); FLASHDIT_CACHE moves it
CACHE_DIR = Path(os.environ.get("FLASHDIT_CACHE", Path.home() / ".cache" / "flashdit"))


_UMASK = os.umask(0)
os.umask(_UMASK)


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
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image(image: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format=Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")


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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Fail fast when ``path`` (a directory, created if missing) cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
            pass
    except OSError as err:
        raise ValueError(f"{what} {path} is not writable ({err.strerror or err})") from None


def model_fingerprint(path: str) -> str:
    """Names, sizes and modification times of a pipeline directory's weight files: changes when the model at
    ``path`` is exported again (a hub id stands for itself)."""
    local = Path(path)
    if not local.is_dir():
        return str(path)
    files = sorted(p for p in local.rglob("*") if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return ";".join(f"{p.relative_to(local)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def check_output_dir(out_dir: str | os.PathLike, allowed: set[str], marker: str, what: str) -> None:
    """``out_dir`` may be missing, empty, or a previous output (it holds ``marker`` and only names in
    ``allowed``); anything else (a user's files) is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in allowed)
        if foreign or not (out_dir / marker).is_file():
            held = ", ".join(foreign[:5]) or f"no {marker}"
            raise ValueError(
                f"--out {out_dir} already holds files that are not a {what} ({held}); choose another directory, "
                "or empty it yourself"
            )


def save_dir_atomically(
    save: Callable[[Path], None], out_dir: str | os.PathLike, allowed: set[str], marker: str, what: str
) -> Path:
    """Write a directory with ``save(tmp)`` beside ``out_dir``, then swap it in. ``out_dir`` may be missing,
    empty, or a previous output (it holds ``marker`` and only names in ``allowed``), which is replaced; a
    directory holding anything else (a user's files) is refused, and nothing is deleted."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, allowed, marker, what)
    tmp = out_dir.with_name(f".tmp_{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".old_{out_dir.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir
