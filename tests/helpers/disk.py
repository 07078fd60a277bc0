"""A real full disk for tests: a small tmpfs, filled up, mounted for the test and removed after."""

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TMPFS_SIZE = "256k"
FILL_CHUNK = 4096


def _fill(folder: Path) -> None:
    """Write a filler file until the file system says it is full."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * FILL_CHUNK)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error


@contextmanager
def full_disk(mount_point: Path, keep: dict[str, bytes] | None = None) -> Iterator[Path]:
    """Mount a tmpfs at `mount_point`, write `keep` (relative path -> bytes) there, then fill it
    up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        for name, data in (keep or {}).items():
            (mount_point / name).parent.mkdir(parents=True, exist_ok=True)
            (mount_point / name).write_bytes(data)
        _fill(mount_point)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def leftovers(folder: Path, *kept: str) -> list[str]:
    """What a failed writer left beside the files the test put there."""
    return sorted(path.name for path in folder.iterdir() if path.name not in {"filler", *kept})
