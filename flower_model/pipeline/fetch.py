"""Fetch missing DVC outs (`dvc pull`) before a command gives up on them, and say what to do
when the remote is down or refuses us (DVC's own message plus a hint)."""

import os
import subprocess
import sys
from pathlib import Path

from flower_model.pipeline.dvc_lock import read_lock

LOCK_FREE_COMMANDS = (["config"], ["remote"])  # dvc commands that do not read dvc.lock
# Words in DVC/boto/fsspec errors, lower-cased, that tell the two common failures apart.
DENIED_MARKERS = (
    "forbidden",
    "access denied",
    "accessdenied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "unable to locate credentials",
    "no credentials",
    "permission denied",
)
UNREACHABLE_MARKERS = (
    "could not connect",
    "failed to connect",
    "connection refused",
    "connect timeout",
    "timed out",
    "name or service not known",
    "does not exist",
)
DENIED_HINT = (
    "the remote refused access: for S3 set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
    "`dvc remote modify --local s3 access_key_id ...`); for a folder remote check its permissions"
)
NO_REMOTE = "no DVC remote is configured; add one with `dvc remote add -d NAME URL`"
UNREACHABLE_HINT = (
    "the remote is not reachable: start it (S3: check `dvc remote list` and the remote's "
    "endpointurl, e.g. `dvc remote modify --local s3 endpointurl http://127.0.0.1:8333`), or use "
    "another remote with `-r NAME`; nothing in the workspace was changed"
)


def remote_hint(message: str) -> str:
    """Our advice for a failed transfer, from DVC's error text ('' when we have none)."""
    lowered = message.lower()
    if any(marker in lowered for marker in DENIED_MARKERS):
        return DENIED_HINT
    if any(marker in lowered for marker in UNREACHABLE_MARKERS):
        return UNREACHABLE_HINT
    return ""


def run_dvc(args: list[str], root: Path) -> subprocess.CompletedProcess:
    """The `dvc` CLI in `root`, output captured. DVC, its queue workers and the stages they start
    come from this environment (its bin dir first on PATH), even when it is not activated.
    A damaged dvc.lock, which every command but `dvc config`/`dvc remote` would trip over with
    DVC's multi-line report, is DamagedLockError's one line with the fix first."""
    if args[:1] not in LOCK_FREE_COMMANDS:
        read_lock(root)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    return subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, env=env)


def absent_local_remote(root: Path, remote: str | None) -> str:
    """Why a pull cannot work when the remote is a local folder that does not exist ('' when that
    is not the case): DVC itself only says `Checkout failed for following targets:.`."""
    name = remote or run_dvc(["config", "core.remote"], root).stdout.strip()
    # `dvc config` prints the value as stored (`dvc remote list` wraps it to the terminal width).
    url = run_dvc(["config", f"remote.{name}.url"], root).stdout.strip() if name else ""
    if not name or "://" in url or not url:
        return "" if name else NO_REMOTE
    # DVC resolves a local remote's relative path from the folder of its config file, .dvc/.
    folder = Path(url) if Path(url).is_absolute() else (root / ".dvc" / url).resolve()
    if folder.exists():
        return ""
    return (
        f"the DVC remote {name!r} is the folder {folder}, which does not exist (nothing was "
        "pushed there); set a remote that holds the data with `dvc remote add -d NAME URL` "
        "(the S3 recipe is in docs/storage.md)"
    )


def pull_outs(targets: list[Path], root: Path, remote: str | None = None) -> str | None:
    """`dvc pull` each target from the remote; return None on success, else why not."""
    print(f"missing {', '.join(map(str, targets))}; trying `dvc pull`", file=sys.stderr, flush=True)
    # Targets resolve against the working directory, so give them absolute.
    paths = [str((root / target).resolve()) for target in targets]
    try:
        result = run_dvc(["pull", *(["-r", remote] if remote else []), *paths], root)
    except FileNotFoundError as error:
        return f"DVC is not installed ({error})"
    if result.returncode != 0:
        missing_remote = absent_local_remote(root, remote)
        if missing_remote:
            return missing_remote
        output = (result.stdout + result.stderr).splitlines()
        errors = [line for line in output if line.startswith("ERROR")] or output[-3:]
        hint = remote_hint("\n".join(errors))
        return f"`dvc pull` failed: {' / '.join(errors)}" + (f". Hint: {hint}" if hint else "")
    still_missing = [str(target) for target in targets if not (root / target).exists()]
    return f"`dvc pull` did not produce {still_missing}" if still_missing else None


def transfer(direction: str, targets: list[str], remote: str | None, root: Path) -> int:
    """`dvc push|pull [-r REMOTE] [TARGETS]` with DVC's output as is, plus our hint on failure."""
    if direction not in ("push", "pull"):
        raise ValueError(f"direction must be push or pull, got {direction!r}")
    result = run_dvc([direction, *(["-r", remote] if remote else []), *targets], root)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    output = result.stdout + result.stderr
    if result.returncode != 0 or "Missing cache files" in output:
        outside = "not inside of a DVC repository" in output
        hint = (
            "run it from the project root, the folder with dvc.yaml"
            if outside
            else absent_local_remote(root, remote) or remote_hint(output)
        )
        print(f"hint: {hint}" if hint else "hint: see DVC's message above", file=sys.stderr)
    return result.returncode
