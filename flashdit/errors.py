"""The package's exception types. Ground floor: imports nothing from the package.

A :class:`UserError` (or any ``ValueError``) names what is wrong, the value and what is allowed; the command lines
print it as one line and exit with status 2. :class:`TrainingDiverged` exits with status 1.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: an argument, a setting, a file. The message is the whole story (no traceback needed).

    ``every_rank``: every process of a multi-process launch meets the same error, so only the first prints it.
    """

    every_rank = False


class ConfigError(UserError):
    """A recipe that cannot be read: YAML syntax, unknown keys, wrong types, values out of range."""

    every_rank = True


class LaunchError(UserError):
    """A launch that cannot run as asked (e.g. an FSDP config on a machine without GPUs)."""

    every_rank = True


class ConversionError(UserError):
    """An official checkpoint that does not convert."""


class OutputInUse(UserError):
    """An output directory that another process is writing."""


class TrainingDiverged(RuntimeError):
    """The loss, the gradient or the weights became non-finite; the message names the step and the last good
    checkpoint."""
