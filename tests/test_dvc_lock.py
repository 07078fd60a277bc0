"""A dvc.lock cut short by an interrupted `dvc repro` (DVC writes it in place): every reader in
flower-model, and every flower-model command that runs DVC, says so in one line with the fix."""

import shutil
import subprocess
from pathlib import Path

import pytest

from flower_model.pipeline.dvc_lock import LOCK_FIX, DamagedLockError, read_lock
from flower_model.training.tracking import dvc_lock_hash
from tests.conftest import REPO_ROOT
from tests.helpers.cli import run_in_process

# Where a write can stop (length of what was written, from a marker in the complete lock):
# nothing yet, inside a key, inside the second out list's first entry.
CUTS = {
    "empty": lambda lock: 0,
    "mid_key": lambda lock: lock.index(b"hash:") + len(b"ha"),
    "mid_outs_entry": lambda lock: lock.index(b"- path: b") + len(b"- pa"),
}
COMPLETE_LINE = b"    deps:"  # cut just before it: DVC reads that (the deps count as changed)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(shutil.which("dvc") or "dvc")
    return subprocess.run([str(dvc), *args], cwd=root, capture_output=True, text=True)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> tuple[Path, bytes]:
    """A git + DVC repository with one reproduced stage; (root, its complete dvc.lock)."""
    root = tmp_path_factory.mktemp("lockrepo")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert _dvc(root, "init", "-q").returncode == 0
    (root / "a").write_text("a\n")
    added = _dvc(root, "stage", "add", "-q", "-n", "copy", "-d", "a", "-o", "b", "cp a b")
    assert added.returncode == 0, added.stderr
    assert _dvc(root, "repro", "-q").returncode == 0
    return root, (root / "dvc.lock").read_bytes()


def _cut(root: Path, lock: bytes, length: int) -> None:
    (root / "dvc.lock").write_bytes(lock[:length])


@pytest.mark.slow
@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_lock_dvc_cannot_read_is_one_line_naming_git_checkout(dvc_repo, cut):
    root, lock = dvc_repo
    _cut(root, lock, CUTS[cut](lock))
    assert _dvc(root, "status").returncode != 0, "DVC itself must fail on this lock"
    with pytest.raises(DamagedLockError) as raised:
        read_lock(root)
    message = str(raised.value)
    assert "\n" not in message and f"`{LOCK_FIX}`" in message and "dvc.lock" in message
    with pytest.raises(DamagedLockError):
        dvc_lock_hash(root, "b")
    code, out, err = run_in_process(root, "pull")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: {message}"]


@pytest.mark.slow
def test_a_lock_dvc_can_read_is_read(dvc_repo):
    root, lock = dvc_repo
    _cut(root, lock, len(lock))
    assert set(read_lock(root)["stages"]) == {"copy"}
    _cut(root, lock, lock.index(COMPLETE_LINE))
    assert _dvc(root, "status").returncode == 0
    assert set(read_lock(root)["stages"]) == {"copy"}
    (root / "dvc.lock").unlink()
    assert read_lock(root) == {}


def test_the_repository_lock_is_readable():
    assert "stages" in read_lock(REPO_ROOT)
