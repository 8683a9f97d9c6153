"""User-facing errors.

Every mistake a user can make (bad recipe, bad input tensor, missing dataset, broken checkpoint)
raises a subclass of :class:`UserError` with a one-line message; the CLI prints it without a
traceback and exits with status 2.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class for errors caused by user input rather than by a bug in againzoo."""


class ConfigError(UserError, ValueError):
    """A recipe, option or argument has an unknown key, a wrong type or an invalid value."""


class ShapeError(UserError, ValueError):
    """A tensor has the wrong rank, channel count, size or dtype."""


class DataError(UserError, FileNotFoundError):
    """A dataset is missing or malformed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupted, or does not match the model."""


class UsageError(UserError, ValueError):
    """The API was called in a way it does not support (e.g. a train-mode forward without targets)."""


class OutputError(UserError, OSError):
    """An output path cannot be written (a file in the way, no permission, a full disk)."""


class HubError(UserError, ConnectionError):
    """A Hugging Face Hub call failed: network, server, authentication or an invalid repo id."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on as configured (a non-finite loss: usually too high a learning rate)."""
