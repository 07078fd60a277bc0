"""dvc.lock read as DVC reads it, and one line with the fix when DVC cannot read it.

DVC rewrites dvc.lock in place (it opens the file for writing, then dumps the YAML), not through a
temporary file and a rename: a Ctrl-C or a kill during "Updating lock file" can leave it cut
short, and from then on every `dvc status`, `dvc repro` and `dvc pull` fails on it with a parse
or schema error. The committed dvc.lock is the last good one, so `git checkout dvc.lock` is the
fix (docs/reliability.md).
"""

from pathlib import Path

from flower_model.constants import DVC_LOCK_FILE
from flower_model.errors import FlowerModelError

LOCK_FIX = f"git checkout {DVC_LOCK_FILE}"


class DamagedLockError(FlowerModelError):
    """dvc.lock does not parse or does not fit DVC's lock schema (a write cut short)."""


def _reason(error: BaseException) -> str:
    """Why DVC could not read the lock, in one line without DVC's path (which depends on the
    working folder): the YAML problem, or the schema rule broken."""
    cause = error.__cause__
    problem = getattr(cause, "problem", None)  # ruamel's parse errors: "could not find ':'"
    if problem:
        return f"invalid YAML: {problem}"
    lines = str(cause or error).strip().splitlines()
    return f"not DVC's lock format: {lines[0] if lines else type(error).__name__}"


def read_lock(root: Path) -> dict:
    """dvc.lock in `root`, parsed and checked with DVC's own loader and lock schema; {} when
    there is none. Raises DamagedLockError naming `git checkout dvc.lock` when DVC could not
    read it either."""
    lock = root / DVC_LOCK_FILE
    if not lock.is_file():
        return {}
    from dvc.exceptions import DvcException
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.strictyaml import load

    try:
        data, _ = load(str(lock), COMPILED_LOCKFILE_SCHEMA)
    except DvcException as error:
        raise DamagedLockError(
            f"{lock} is damaged and DVC cannot read it ({_reason(error)}); it was probably "
            f"cut short by an interrupted `dvc repro` (DVC rewrites it in place): restore the "
            f"committed one with `{LOCK_FIX}`, then rerun `dvc repro`"
        ) from None
    return data or {}
