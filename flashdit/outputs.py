"""Where the commands write: one rule for every ``--out``, and one process per output directory at a time.

The rule: an output may be missing, empty, or hold this command's own earlier output; anything else there (a
file of the user's) is refused before any work, and nothing is deleted. A command's files carry its name
(:func:`stamp`: a PNG text chunk, a JSON key, an ``.npz`` entry, safetensors metadata), which is how an earlier
output is recognised as its own. A directory that a command writes as a whole (a pipeline) is recognised by its
layout instead. Ground floor: imports only :mod:`flashdit.errors` and :mod:`flashdit.utils`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image, PngImagePlugin
from safetensors import safe_open

from .errors import OutputInUse, UserError
from .utils import check_writable

TOOL_KEY = "flashdit_tool"  # the key under which an output file names the command that wrote it
LOCK_NAME = ".flashdit.lock"


def stamp(tool: str) -> dict[str, str]:
    """The metadata that marks a file as ``tool``'s output (safetensors metadata, JSON keys)."""
    return {TOOL_KEY: tool}


def png_info(tool: str) -> PngImagePlugin.PngInfo:
    """A PNG text chunk naming ``tool`` (written before the pixels, so it is read without decoding them)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(TOOL_KEY, tool)
    return info


def written_by(path: Path) -> str | None:
    """The command that wrote ``path`` (from its stamp), or None for a file without one."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            with Image.open(path) as image:
                return image.info.get(TOOL_KEY)
        if suffix == ".json":
            data = json.loads(path.read_text())
            return data.get(TOOL_KEY) if isinstance(data, dict) else None
        if suffix == ".npz":
            with np.load(path) as data:
                return str(data[TOOL_KEY]) if TOOL_KEY in data.files else None
        if suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                return (f.metadata() or {}).get(TOOL_KEY)
    except Exception:  # unreadable, truncated, not what its name says: not a file we wrote
        return None
    return None


def _is_leftover(path: Path) -> bool:
    """The lock file, or a temporary file that an interrupted atomic write left (``.name.XXXX.tmp.ext``)."""
    return path.name == LOCK_NAME or (path.name.startswith(".") and ".tmp" in path.name)


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            yield path


def check_output(
    out: str | os.PathLike, owned: Callable[[Path], bool], what: str, flag: str = "--out", kind: str = "dir"
) -> Path:
    """Refuse ``out`` unless it is missing, empty, or holds only files for which ``owned(path)`` is true, and check
    that it can be written. ``kind="file"``: ``out`` is one file, missing or owned. Returns ``out`` as a Path.

    Raises:
        UserError: one line naming the output and what is in the way.
    """
    out = Path(out)
    if kind == "file":
        if out.is_dir():
            raise UserError(f"{flag} {out} is a directory; give the path of a file to write")
        if out.exists() and not owned(out):
            raise UserError(
                f"{flag} {out} already exists and is not a {what}; choose another path, or move it yourself"
            )
        check_writable(out.parent, flag, create=False)
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a directory")
    if out.is_dir():
        foreign = [p for p in _files(out) if not _is_leftover(p) and not owned(p)]
        if foreign:
            names = ", ".join(str(p.relative_to(out)) for p in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise UserError(
                f"{flag} {out} already holds files that are not a {what} ({names}{more}); choose another directory, "
                "or move them yourself"
            )
    check_writable(out, flag, create=False)
    return out


def owned_by(tool: str) -> Callable[[Path], bool]:
    """``owned`` for :func:`check_output`: files stamped by ``tool``."""
    return lambda path: written_by(path) == tool


def own_files(out: Path, tool: str) -> list[Path]:
    """The files under ``out`` stamped by ``tool`` (an earlier run's output)."""
    return [p for p in _files(out) if written_by(p) == tool] if out.is_dir() else []


@contextlib.contextmanager
def locked_output(out: str | os.PathLike, what: str, take: bool = True) -> Iterator[Path]:
    """Hold the output directory ``out`` (created if missing) for this process while the block runs: a second
    process that tries is refused with one line until this one ends, however it ends. ``take=False`` (the other
    processes of a launch, whose main process holds it) takes nothing.

    Raises:
        OutputInUse: another process holds ``out``.
    """
    out = Path(out)
    if not take:
        yield out
        return
    check_writable(out, what)
    lock = FileLock(out / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputInUse(
            f"{what} {out} is in use by another process (it holds {out / LOCK_NAME}); wait for it to end, or "
            "choose another"
        ) from None
    try:
        yield out
    finally:
        lock.release()


def check_output_dir(out_dir: str | os.PathLike, entries: set[str], marker: str, what: str) -> Path:
    """:func:`check_output` for a directory written whole (a pipeline, a VAE, an adapter): a previous one holds
    ``marker`` and only top-level ``entries``."""
    out_dir = Path(out_dir)
    previous = (out_dir / marker).is_file()
    return check_output(out_dir, lambda p: previous and p.relative_to(out_dir).parts[0] in entries, what)


def save_dir_atomically(
    save: Callable[[Path], None], out_dir: str | os.PathLike, entries: set[str], marker: str, what: str
) -> Path:
    """Write a directory with ``save(tmp)`` beside ``out_dir``, then swap it in. ``out_dir`` may be missing, empty,
    or a previous output (it holds ``marker`` and only top-level ``entries``), which is replaced; a directory
    holding anything else (a user's files) is refused, and nothing is deleted."""
    out_dir = check_output_dir(out_dir, entries, marker, what)
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
