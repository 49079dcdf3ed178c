"""Command-line parsing with the project's error format. Ground floor."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, ``prog: error: message``, exit status 2 (argparse's
    own prints the usage first); ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (counts have an upper bound, so that a typo fails at once
    rather than as a MemoryError after the model has loaded)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high:,}]")
        return value

    parse.__name__ = "integer"
    return parse
