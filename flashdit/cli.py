"""Command-line entry points: a user error is one line on stderr and exit status 2; anything else keeps its
traceback. ``FLASHDIT_TRACEBACK=1`` shows the traceback of user errors too. The CPU allocator is set up first
(``flashdit.allocator``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from .allocator import configure_cpu_allocator
from .config import ConfigError
from .training import TrainingDiverged

# What bad arguments, files and configs raise: the message names the argument, the value and what is allowed.
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run(main: Callable[..., Any], *args: Any) -> Any:
    """Set up the CPU allocator, then call ``main(*args)``; on a user error print ``prog: error: message`` (one line)
    and exit with 2."""
    try:
        configure_cpu_allocator()
        return main(*args)
    except USER_ERRORS + (TrainingDiverged,) as err:
        if os.environ.get("FLASHDIT_TRACEBACK"):
            raise
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flashdit"
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1 if isinstance(err, TrainingDiverged) else 2) from None
