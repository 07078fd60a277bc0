"""`flower-model back`: after an experiment, the workspace back to HEAD's params and to the
outputs this clone made for them (what `make repro` produced), from DVC's cache or run cache,
never by running a stage.

Why not `git checkout params.yaml dvc.lock && dvc checkout`: the committed dvc.lock names the
outputs of the host that committed it (training differs per CPU type), which this clone's cache
lacks, so `dvc checkout` fails and deletes the workspace's models/. Why not `dvc repro` alone:
for a stage whose deps and params equal dvc.lock's, DVC restores only the outs dvc.lock names
(dvc/stage/cache.py, `StageCache.restore`) and, when those are not in the cache, runs the stage
(a 6-minute retrain) although its run cache holds this clone's own run of exactly those params.
So, stage by stage in pipeline order: nothing to do; or dvc.lock's outs from the cache; or, with
dvc.lock's entry set aside, the run cache's; or a one-line error with the fix, before touching
that stage's outputs.
"""

import logging
import sys
from pathlib import Path

from flower_model.constants import DVC_LOCK_FILE, PARAMS_FILE
from flower_model.errors import FlowerModelError
from flower_model.pipeline.dvc_outs import _git_blob_at_head

UP_TO_DATE = "up to date"


class WayBackError(FlowerModelError):
    """The workspace cannot be brought back without running a stage."""


class _NoOutputs(Exception):
    """Stage `args[0]` has neither dvc.lock's outputs nor a run-cache entry here."""


def _no_outputs(name: str, changed: bool) -> WayBackError:
    left = (
        f"the stages before {name} are HEAD's; its outputs and later ones were left as they are"
        if changed
        else "nothing was changed"
    )
    return WayBackError(
        f"stage {name}: this clone has no outputs of HEAD's params (dvc.lock names outputs made "
        "on another host, and DVC's run cache holds no run of these params here): `dvc pull` "
        "them from a remote that has them (docs/storage.md) and run this again, or `git checkout "
        f"{PARAMS_FILE} {DVC_LOCK_FILE} && dvc repro` to rerun {name} and what follows; {left}"
    )


def _read(root: Path) -> dict[Path, bytes | None]:
    """params.yaml and dvc.lock as the workspace has them (None: absent)."""
    return {
        name: (root / name).read_bytes() if (root / name).exists() else None
        for name in (PARAMS_FILE, DVC_LOCK_FILE)
    }


def _write(root: Path, files: dict[Path, bytes | None]) -> None:
    for name, content in files.items():
        if content is None:
            (root / name).unlink(missing_ok=True)
        else:
            (root / name).write_bytes(content)


def _head(root: Path) -> dict[Path, bytes | None]:
    """params.yaml and dvc.lock as HEAD has them (dvc.lock None if HEAD has none)."""
    files = {name: _git_blob_at_head(root, name) for name in (PARAMS_FILE, DVC_LOCK_FILE)}
    if files[PARAMS_FILE] is None:
        raise WayBackError(f"HEAD has no {PARAMS_FILE}: run this in a commit of the project")
    return files


def _restore_stage(root: Path, name: str) -> str:
    """Bring stage `name` back without running it; what was done, in a few words."""
    from dvc.dependency.base import DependencyDoesNotExistError
    from dvc.dvcfile import Lockfile
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    with Repo(str(root)) as repo, repo.lock:
        (stage,) = repo.stage.collect(name)
        if not stage.changed():
            return UP_TO_DATE
        # DVC's own test for taking dvc.lock's entry (StageCache.restore), then its outs' presence
        if not stage.changed_stage() and stage.deps_cached() and stage.outs_cached():
            how = "checked out from the DVC cache"
        else:
            # dvc.lock's entry would stop DVC from looking further: set it aside, then ask the
            # run cache (keyed on the deps' and params' hashes) without running anything.
            lock = root / DVC_LOCK_FILE
            kept = lock.read_bytes() if lock.exists() else None
            Lockfile(repo, str(lock)).remove_stage(stage)
            (stage,) = repo.stage.collect(name)
            try:
                stage.save_deps()
                repo.stage_cache.restore(stage, dry=True)
            except (RunCacheNotFoundError, DependencyDoesNotExistError):
                if kept is not None:  # dvc.lock as HEAD has it: `dvc status` names the stage
                    lock.write_bytes(kept)
                raise _NoOutputs(name) from None
            how = "restored from DVC's run cache (not run)"
    with Repo(str(root)) as repo:  # a fresh index: dvc.lock may have changed above
        repo.reproduce(name, single_item=True)
    return how


def go_back(root: Path, out=None) -> None:
    """Params and dvc.lock from HEAD, then every stage's outputs without running one."""
    from flower_model.config import dvc_yaml

    out = out or sys.stdout
    stages = list(dvc_yaml.stages(root))
    before, head = _read(root), _head(root)
    _write(root, head)
    print(f"{PARAMS_FILE} and {DVC_LOCK_FILE}: HEAD's", file=out, flush=True)
    import dvc.repo  # noqa: F401  (importing DVC sets its loggers up: quieten them after)
    from dvc.logger import set_loggers_level

    changed = False
    with set_loggers_level(logging.WARNING):  # one line per stage below says what DVC did
        for name in stages:
            try:
                how = _restore_stage(root, name)
            except _NoOutputs:
                if not changed:  # the workspace as it was: its note still names the experiment
                    _write(root, before)
                raise _no_outputs(name, changed) from None
            changed = changed or how != UP_TO_DATE
            print(f"stage {name}: {how}", file=out, flush=True)
    print("the workspace is HEAD's pipeline again (`dvc status` is clean)", file=out)
