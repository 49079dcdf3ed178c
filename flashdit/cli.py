"""Command-line entry points: a user error is one line on stderr, on a line of its own, and exit status 2; anything
else keeps its traceback. ``FLASHDIT_TRACEBACK=1`` shows the traceback of user errors too. The CPU allocator is set
up first (``flashdit.allocator``).

Imported only by the scripts and the ``python -m flashdit.*`` entry points.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from .allocator import configure_cpu_allocator
from .arguments import ArgumentParser, bounded_int  # noqa: F401  (the entry points' parsers)
from .errors import TrainingDiverged

# What bad arguments, files and configs raise (the message names the argument, the value and what is allowed), and
# what a full disk, a read-only directory or a missing file raise (OSError names the file).
USER_ERRORS = (ValueError, OSError)
OUT_OF_MEMORY = "can't allocate memory"  # PyTorch's CPU allocator raises a plain RuntimeError


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line."""
    return " ".join(str(err).split()) or type(err).__name__


def _memory_message(err: BaseException) -> str:
    detail = " ".join(str(err).split())
    detail = detail[detail.find("you tried") :] if "you tried" in detail else detail[:200]
    return f"out of memory ({detail or type(err).__name__}); lower the batch size or the number of images"


def _close_progress_bars() -> None:
    """End any live progress bar's line, so that the error starts a line of its own."""
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()
    sys.stdout.flush()


def run(main: Callable[..., Any], *args: Any) -> Any:
    """Set up the CPU allocator, then call ``main(*args)``; on a user error print ``prog: error: message`` (one
    line) and exit with 2 (a diverged training run: 1)."""
    try:
        configure_cpu_allocator()
        return main(*args)
    except (*USER_ERRORS, TrainingDiverged, MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not isinstance(err, TrainingDiverged):
            if not (isinstance(err, torch.OutOfMemoryError) or OUT_OF_MEMORY in str(err)):
                raise  # an internal error: keep its traceback
        if os.environ.get("FLASHDIT_TRACEBACK"):
            raise
        _close_progress_bars()
        if getattr(err, "every_rank", False) and int(os.environ.get("RANK", "0")) != 0:
            raise SystemExit(2) from None  # the first process of the launch says it
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flashdit"
        if isinstance(err, (MemoryError, RuntimeError)) and not isinstance(err, TrainingDiverged):
            message = _memory_message(err)
        else:
            message = one_line(err)
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1 if isinstance(err, TrainingDiverged) else 2) from None
