"""Atomic writes: no reader sees a half-written file; a failed run leaves the old one intact."""

import csv
import errno
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from flower_model.constants import JSON_INDENT
from flower_model.errors import FlowerModelError, OutputError, ProtectedPathError

FILE_MODE = 0o666
DIR_MODE = 0o777
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Entries that make a folder a project (this one or another), never a stage's output folder.
PROJECT_MARKERS = (".git", ".dvc", "dvc.yaml", "pyproject.toml")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def output_error(target: Path, error: OSError) -> OutputError:
    """The one-line error for an output that could not be written."""
    if error.errno in NO_SPACE_ERRNOS:
        message = f"no space left on {target}; free space or choose another path"
    else:
        reason = error.strerror or str(error)
        message = f"cannot write {target} ({reason}); fix that or choose another path"
    failed = OutputError(message)
    failed.path, failed.os_error = target, error
    return failed


def about_output(error: OSError, staging: Path | None) -> bool:
    """Whether an OSError raised while filling `staging` is about writing it (not an input).

    `staging` None: every OSError is (creating the temp file or folder beside the output).
    """
    if staging is None or error.errno in NO_SPACE_ERRNOS:
        return True
    if error.filename is None:
        return False
    failed = Path(os.fsdecode(error.filename)).absolute()
    staging = staging.absolute()
    return failed == staging or staging in failed.parents


@contextmanager
def _output_errors(target: Path, staging: Path | None = None) -> Iterator[None]:
    """Raise OSErrors about writing `target` (through `staging`) as one-line OutputErrors."""
    try:
        yield
    except OSError as error:
        if not about_output(error, staging):
            raise
        raise output_error(target, error) from error
    except OutputError as error:  # a writer inside the temp folder: name the real output
        inside = staging is not None and staging.absolute() in error.path.absolute().parents
        if not inside:
            raise
        raise output_error(target, error.os_error) from error.os_error


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it onto `target` only if the block succeeds.

    On failure the temp file is removed and the old `target` is kept; disk full and other write
    errors on the temp file raise `OutputError` naming `target`.
    """
    with _output_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        with _output_errors(target, tmp_path):
            yield tmp_path
            tmp_path.chmod(FILE_MODE & ~_umask())  # mkstemp makes 0600; give it the usual mode
            tmp_path.replace(target)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_replaceable(target: Path) -> None:
    """Refuse to replace or delete `target` if it is the filesystem root, the home folder, the
    working folder or a parent of it, or a folder holding a project.

    The second guard behind the config's path rules (config/project_paths.py): whatever path a
    caller computes, an output folder is only ever a folder of its own.
    """
    resolved = target.resolve()
    here = Path.cwd().resolve()
    if resolved in (Path(resolved.anchor), Path.home().resolve(), here) or resolved in here.parents:
        why = "is the working folder or one of its parents (or /, or home)"
    else:
        found = [name for name in PROJECT_MARKERS if (target / name).exists()]
        if not found:
            return
        why = f"holds {found[0]}, so it is a project, not an output folder"
    raise ProtectedPathError(
        f"refusing to replace {target}: it {why}; nothing was changed. Give this output a "
        "folder of its own"
    )


def remove_tree(target: Path) -> None:
    """shutil.rmtree for an output folder, after `check_replaceable`."""
    check_replaceable(target)
    shutil.rmtree(target)


def _backup_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def temp_pattern(target: Path) -> str:
    """The glob of the temp files and folders `atomic_path`/`atomic_dir` make for `target`."""
    return f".{target.name}.*.tmp"


def remove_stale(folder: Path, pattern: str) -> list[str]:
    """Delete what a killed run left in `folder` under its own temporary names (`pattern`, a
    glob of names only this project makes): `kill -9` runs no `finally`. The names removed."""
    removed = []
    for stale in sorted(folder.glob(pattern)):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale.name)
    return removed


def recover_dir(target: Path) -> None:
    """Undo what a run killed inside `atomic_dir` left: restore the old folder, drop temp ones."""
    backup = _backup_of(target)
    if backup.is_dir():
        if target.exists():
            shutil.rmtree(backup)  # the swap completed; only the clean-up was cut short
        else:
            backup.rename(target)  # killed between the two renames: the old folder comes back
    remove_stale(target.parent, temp_pattern(target))


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; it replaces `target` only if the block succeeds.

    The old folder is renamed aside, never deleted, until the new one is in place, so a kill at
    any moment leaves either the old or the new folder whole (`recover_dir`, run first, restores
    the old one after a kill between the two renames). A folder that is not an output's
    (`check_replaceable`) is refused before anything is written.
    """
    check_replaceable(target)
    with _output_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(target)
        tmp_dir = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        )
    backup = _backup_of(target)
    try:
        with _output_errors(target, tmp_dir):
            yield tmp_dir
            tmp_dir.chmod(DIR_MODE & ~_umask())
            if target.exists():
                target.rename(backup)
            tmp_dir.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        if backup.is_dir() and not target.exists():
            backup.rename(target)  # the new folder could not be moved in: the old one comes back


def check_writable(*folders: Path) -> None:
    """Create and remove a temp file in each folder (made if missing), before a stage that
    writes into several of them does any work: an unwritable one is an OutputError up front,
    not after the first files were already replaced."""
    for folder in folders:
        with _output_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", suffix=".tmp"):
                pass  # removed again on close


def write_text(target: Path, text: str) -> None:
    """Atomically, except to an existing special file (/dev/stdout, /dev/full, a FIFO): that is
    written in place, since renaming a temp file onto it would replace the device itself."""
    if target.exists() and not target.is_file() and not target.is_dir():
        with _output_errors(target), target.open("w", encoding="utf-8") as handle:
            handle.write(text)
        return
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


STDOUT_LINK = Path("/proc/self/fd/1")  # names what `> FILE` connected standard output to


def write_stdout(text: str) -> None:
    """A command's result on standard output, flushed now: a full disk behind `> FILE` is one
    OutputError line, not Python's "Exception ignored" at exit."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader left (`| head`): the CLI's boundary ends quietly
    except OSError as error:
        raise output_error(_silenced_stdout(), error) from None


def _silenced_stdout() -> Path:
    """Where standard output went (e.g. /dev/full); what is still buffered then goes nowhere at
    exit instead of failing a second time there."""
    name = "standard output"
    with suppress(OSError, ValueError, io.UnsupportedOperation):
        name = os.readlink(STDOUT_LINK)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return Path(name)


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """CSV with "\n" line ends on every platform, so DVC hashes the same bytes everywhere."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def dumps_json(data: Any) -> str:
    return json.dumps(data, indent=JSON_INDENT, sort_keys=True) + "\n"


def write_json(target: Path, data: Any) -> None:
    write_text(target, dumps_json(data))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def damaged(path: Path, error: BaseException | str) -> FlowerModelError:
    """The one-line error for an input file that is not what its stage wrote."""
    first = (str(error).splitlines() or [type(error).__name__])[0]
    return FlowerModelError(
        f"{path} is damaged ({first}): restore it with `dvc checkout {path}` or rebuild it "
        "with `dvc repro`"
    )


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load, with a truncated or foreign file as a one-line error instead of a traceback."""
    import pickle

    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise damaged(path, error) from None


def load_checkpoint(path: Path, weights_only: bool) -> dict:
    """torch.load on CPU, with a truncated or foreign file as a one-line error."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise damaged(path, error) from None
