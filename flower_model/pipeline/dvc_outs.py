"""Put a failed stage's previous outs back, so a failure under `dvc repro` loses nothing.

DVC deletes a stage's outs before it runs the command (`Stage.run` -> `remove_outs`) and does not
put them back when the command fails, so a stage that fails, even at config validation, used to
leave the last good model or arrays missing until `dvc checkout`. When a stage runs under DVC
(`DVC_STAGE` is set) and fails, `restore_previous_outs` checks out the outs recorded for it in
dvc.lock from the DVC cache (DVC's own `Output.checkout`; the parent `dvc repro` holds the repo
lock, which `Output.checkout` does not take). Whatever the failed run had already written is moved
aside to `<out>.failed` first, so partial work (an interrupted training's checkpoints) is kept too.

Why DVC internals (`Repo`, `stage.collect`, `Output.checkout`): no public API restores one stage's
outs from inside the command `dvc repro` is running. `dvc checkout` wants the repo lock the parent
`dvc repro` holds, and DVC has no hook after a failed command. pyproject pins the DVC versions this
was tested with; tests/test_dvc_outs.py drives it through a real `dvc repro` and fails if DVC
changes underneath.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

FAILED_SUFFIX = ".failed"


def running_under_dvc(stage_name: str) -> bool:
    return os.environ.get("DVC_STAGE") == stage_name


def _git_blob_at_head(root: Path, relative: Path) -> bytes | None:
    shown = subprocess.run(
        ["git", "show", f"HEAD:{relative.as_posix()}"], cwd=root, capture_output=True, check=False
    )
    return shown.stdout if shown.returncode == 0 else None


def _restore_from_git(root: Path, relative: Path, md5: str) -> bool:
    """An uncached out (the committed metrics file) comes back from git, if HEAD has the bytes
    dvc.lock recorded."""
    blob = _git_blob_at_head(root, relative)
    if blob is None or hashlib.md5(blob).hexdigest() != md5:
        return False
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(blob)
    return True


def _move_aside(path: Path) -> Path:
    from flower_model.io_utils import check_replaceable

    check_replaceable(path)
    aside = path.with_name(path.name + FAILED_SUFFIX)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    elif aside.exists() or aside.is_symlink():
        aside.unlink()
    path.rename(aside)
    return aside


def restore_previous_outs(stage_name: str, root: Path) -> list[str]:
    """Check out `stage_name`'s outs as dvc.lock records them; return what happened, one line
    per kind (kept aside, restored from the cache, from git) and one per out not restored."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    kept, cached, from_git, problems = [], [], [], []
    with Repo(str(root)) as repo:
        (stage,) = repo.stage.collect(stage_name)
        for out in stage.outs:
            relative = Path(os.path.relpath(out.fs_path, repo.root_dir))
            path = root / relative
            existed = path.exists() or path.is_symlink()
            if existed:
                kept.append(f"{relative}{FAILED_SUFFIX}")
                _move_aside(path)
            if not out.hash_info:
                problems.append(f"{relative}: not restored (no previous version in dvc.lock)")
            elif not out.use_cache:
                if _restore_from_git(root, relative, out.hash_info.value):
                    from_git.append(str(relative))
                else:
                    problems.append(f"{relative}: not restored (uncached, HEAD has other bytes)")
            else:
                try:
                    out.checkout()
                    cached.append(str(relative))
                except (DvcException, OSError) as error:
                    if existed:  # absent before and not cached (a fresh clone): nothing lost
                        problems.append(f"{relative}: not restored ({error}); try `dvc pull`")
    lines = [f"kept what the failed run wrote in {', '.join(kept)}"] if kept else []
    if cached:
        lines.append(f"restored the previous {', '.join(cached)} from the DVC cache")
    if from_git:
        lines.append(f"restored the previous {', '.join(from_git)} from git HEAD")
    return lines + problems
