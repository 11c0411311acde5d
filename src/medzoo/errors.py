"""Exceptions raised by medzoo.

Every error a user can cause (a bad file, a wrong argument, an input a model cannot take) is a
:class:`MedzooError`. The command line prints ``str(error)`` on one line and exits non-zero; it never shows
a traceback for these.
"""

from __future__ import annotations


class MedzooError(Exception):
    """Base class for every user-facing medzoo error."""


class VolumeError(MedzooError):
    """A file cannot be read or written as a volume, or its content is unusable.

    Args:
        path: the file (or folder) concerned.
        problem: what is wrong, and where useful what to do about it.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataError(MedzooError):
    """A dataset folder, a case or a label map is inconsistent (names the case in the message)."""


class ModelError(MedzooError):
    """A model name, argument or input size is not valid."""


class InputSizeError(ModelError):
    """A model got a spatial size it cannot take; the message names the nearest valid size."""


class CheckpointError(MedzooError):
    """A checkpoint or run folder is missing, incomplete, or unsafe to load."""


class ConfigError(MedzooError):
    """A configuration value is invalid."""
