"""Errors the CLI reports as one clear message (no traceback): each names the thing and the fix."""

from pathlib import Path


class FlowerModelError(Exception):
    """Base class of errors caused by input, config or environment rather than by a bug."""


class DownloadError(FlowerModelError):
    """No archive source could be fetched and verified."""


class UnsafeArchiveError(FlowerModelError):
    """An archive entry would escape the extraction folder or is not a plain file/folder."""


class MissingInputError(FlowerModelError):
    """A stage input is missing: an earlier stage has not run or its outs were not pulled."""


class OutputError(FlowerModelError):
    """An output could not be written (disk full, no permission...); the old file is kept.

    `path` is the output, `os_error` the OSError that stopped the write."""

    path: Path
    os_error: OSError


class ProtectedPathError(FlowerModelError):
    """An output path names a folder no stage may replace (the project, a parent of it, home)."""
