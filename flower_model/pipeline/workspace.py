"""Whose params the workspace holds. `dvc exp run` leaves its experiment applied (its params.yaml,
dvc.lock and outputs), so a later hand-run stage, `--show-config` or `infer` would use the
experiment's data or model without a word; they say so with this note.

Experiments stay applied rather than run with `--temp` because a temporary workspace resolves
relative data sources (`../my_photos.tgz`, the `../shared` mirror) from inside .dvc/tmp, and the
try-it's model would not be in models/ for `infer`. The way back is `flower-model back`.
"""

import subprocess
from pathlib import Path

from flower_model.constants import PARAMS_FILE

EXPERIMENT_REFS = "refs/exps"  # DVC's experiments: refs/exps/<baseline sha, split 2/38>/<name>
BACK_HINT = "`flower-model back` returns to HEAD's"


def _git(root: Path, *args: str, stdin: str | None = None) -> str | None:
    """git's output, or None when it failed or there is no git at all: the note is a courtesy,
    never a reason for the command itself to fail."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, input=stdin, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def _experiments_with(root: Path, head: str, blob: str) -> list[str]:
    """Names of HEAD's experiments whose params.yaml is `blob`, newest first."""
    prefix = f"{EXPERIMENT_REFS}/{head[:2]}/{head[2:]}/"
    refs = _git(root, "for-each-ref", "--sort=-committerdate", "--format=%(refname)", prefix) or ""
    names = refs.split()
    if not names:
        return []
    asked = "".join(f"{ref}:{PARAMS_FILE.as_posix()}\n" for ref in names)
    found = (_git(root, "cat-file", "--batch-check=%(objectname)", stdin=asked) or "").split()
    return [ref[len(prefix) :] for ref, object_id in zip(names, found) if object_id == blob]


def workspace_note(root: Path) -> str | None:
    """A one-line note when params.yaml is not HEAD's (an applied experiment, named when DVC
    has it), else None; None outside a git checkout too."""
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    committed = _git(root, "rev-parse", "-q", "--verify", f"HEAD:{PARAMS_FILE.as_posix()}")
    current = _git(root, "hash-object", "--", PARAMS_FILE.as_posix())
    if not (head and committed and current) or committed.strip() == current.strip():
        return None
    names = _experiments_with(root, head.strip(), current.strip())
    if names:
        return f"note: the workspace is experiment {names[0]} (its params.yaml); {BACK_HINT}"
    return f"note: params.yaml is not HEAD's (edited, or a failed `dvc exp run`); {BACK_HINT}"
