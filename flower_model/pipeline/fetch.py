"""Fetch missing DVC outs (`dvc pull`) before a command gives up on them, and say what to do
when the remote is down or refuses us (DVC's own message plus a hint)."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flower_model.pipeline.dvc_lock import read_lock

LOCK_FREE_COMMANDS = (["config"], ["remote"], ["cache"])  # dvc commands not reading dvc.lock
# A pull that gets no data from the remote says so every PULL_NOTICE_S, and is stopped after
# PULL_STALL_S (DVC's listing of a large remote sends no data either: minutes are not unusual).
PULL_NOTICE_S = 20.0
PULL_STALL_S = 180.0
WATCH_POLL_S = 1.0
STOP_GRACE_S = 10.0  # DVC's time to exit after SIGTERM, then SIGKILL
BYTES_PER_MB = 1e6
DVC_TIMED_OUT = -1  # run_dvc's exit code for a DVC command it stopped at its timeout_s
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


def _dvc_env() -> dict[str, str]:
    """DVC, its queue workers and the stages they start come from this environment (its bin dir
    first on PATH), even when it is not activated."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cache_bytes(cache: Path) -> int:
    """Bytes under DVC's cache folder: a pull's progress (downloads land there first)."""
    total = 0
    for path in cache.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # a temporary file renamed away meanwhile
            continue
    return total


def _watch_pull(process: subprocess.Popen, root: Path, stall_s: float) -> str:
    """Wait for a `dvc pull`: say so every PULL_NOTICE_S while no data arrives, and stop it
    after `stall_s` without any (a remote that accepts connections and never answers kept DVC
    silent for over 6 minutes). '' or the line that says why it was stopped."""
    cache = root / (run_dvc(["cache", "dir"], root).stdout.strip() or Path(".dvc", "cache"))
    size, changed = _cache_bytes(cache), time.monotonic()
    noticed = changed
    while process.poll() is None:
        time.sleep(WATCH_POLL_S)
        now, now_size = time.monotonic(), _cache_bytes(cache)
        if now_size != size:
            size, changed = now_size, now
        if now - changed >= stall_s:
            _stop(process)
            return f"ERROR: no data from the remote for {stall_s:.0f} s: stopped (timed out)"
        if now - max(changed, noticed) >= PULL_NOTICE_S:
            print(
                f"dvc pull: no data from the remote for {now - changed:.0f} s "
                f"({size / BYTES_PER_MB:.1f} MB in the cache); stopping at {stall_s:.0f} s "
                "without data, Ctrl-C stops it now",
                file=sys.stderr,
                flush=True,
            )
            noticed = now
    return ""


def run_dvc(
    args: list[str], root: Path, stall_s: float | None = None, timeout_s: float | None = None
) -> subprocess.CompletedProcess:
    """The `dvc` CLI in `root`, output captured. A damaged dvc.lock, which every command but
    `dvc config`/`dvc remote`/`dvc cache` would trip over with DVC's multi-line report, is
    DamagedLockError's one line with the fix first. `stall_s` (a pull): watched, see _watch_pull.
    `timeout_s`: stopped after that long, exit code DVC_TIMED_OUT and a line saying so.
    """
    if args[:1] not in LOCK_FREE_COMMANDS:
        read_lock(root)
    if stall_s is None:
        try:
            return subprocess.run(
                ["dvc", *args],
                cwd=root,
                capture_output=True,
                text=True,
                env=_dvc_env(),
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as expired:  # subprocess.run has stopped it
            said = f"ERROR: `dvc {' '.join(args)}` gave no answer in {timeout_s:.0f} s"
            return subprocess.CompletedProcess(expired.cmd, DVC_TIMED_OUT, "", said)
    # A watched pull writes to files, read once it ended, while the watch speaks meanwhile.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(["dvc", *args], cwd=root, stdout=out, stderr=err, env=_dvc_env())
        try:
            stopped = _watch_pull(process, root, stall_s)
            process.wait()
        except BaseException:  # Ctrl-C, SIGTERM: DVC stops with us
            _stop(process)
            raise
        out.seek(0)
        err.seek(0)
        errors = err.read() + (f"\n{stopped}\n" if stopped else "")
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(), errors)


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


def pull_outs(
    targets: list[Path], root: Path, remote: str | None = None, stall_s: float = PULL_STALL_S
) -> str | None:
    """`dvc pull` each target from the remote; return None on success, else why not."""
    print(f"missing {', '.join(map(str, targets))}; trying `dvc pull`", file=sys.stderr, flush=True)
    # Targets resolve against the working directory, so give them absolute.
    paths = [str((root / target).resolve()) for target in targets]
    try:
        result = run_dvc(["pull", *(["-r", remote] if remote else []), *paths], root, stall_s)
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


def transfer(
    direction: str,
    targets: list[str],
    remote: str | None,
    root: Path,
    stall_s: float = PULL_STALL_S,
) -> int:
    """`dvc push|pull [-r REMOTE] [TARGETS]` with DVC's output as is, plus our hint on failure;
    a pull is watched (`stall_s`, see _watch_pull)."""
    if direction not in ("push", "pull"):
        raise ValueError(f"direction must be push or pull, got {direction!r}")
    watch = stall_s if direction == "pull" else None
    result = run_dvc([direction, *(["-r", remote] if remote else []), *targets], root, watch)
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
