"""Fetch missing DVC outs (`dvc pull`) before a command gives up on them."""

import sys
from pathlib import Path


def pull_outs(targets: list[Path], root: Path) -> str | None:
    """`dvc pull` each target from the configured remote; return None on success, else why not."""
    print(f"missing {', '.join(map(str, targets))}; trying `dvc pull`", file=sys.stderr, flush=True)
    try:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError as error:
        return f"DVC is not installed ({error})"
    try:
        with Repo(str(root)) as repo:
            # Targets resolve against the working directory, so give them absolute.
            repo.pull(targets=[str((root / target).resolve()) for target in targets])
    except DvcException as error:
        return f"`dvc pull` failed: {error}"
    still_missing = [str(target) for target in targets if not (root / target).exists()]
    return f"`dvc pull` did not produce {still_missing}" if still_missing else None
