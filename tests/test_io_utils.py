"""Atomic outputs: a process killed at any point of a folder swap loses nothing."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flower_model.errors import OutputError
from flower_model.io_utils import atomic_dir, atomic_path, recover_dir, write_json, write_text
from tests.helpers.disk import _fill, full_disk, leftovers

OLD_FILES = 40

# A writer that replaces `out` through atomic_dir and is SIGKILLed at the chosen rename
# (1: moving the old folder aside, 2: moving the new one in): a real kill, not a simulated state.
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from flower_model.io_utils import atomic_dir

    kill_at = int(sys.argv[2])
    calls = []
    real_rename = Path.rename

    def rename(self, target):
        calls.append(self)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(self, target)

    Path.rename = rename
    with atomic_dir(Path(sys.argv[1])) as staging:
        (staging / "new.txt").write_text("new")
    """)


def _old_folder(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for index in range(OLD_FILES):
        (out / f"old{index}.txt").write_text(str(index))
    return out


@pytest.mark.parametrize("kill_at", [1, 2])
def test_writer_killed_during_the_swap_loses_nothing(tmp_path, kill_at):
    out = _old_folder(tmp_path)
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), str(kill_at)])
    assert result.returncode == -9  # it really died mid-swap
    recover_dir(out)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        f"old{index}.txt" for index in range(OLD_FILES)
    )
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no temp or backup left


def test_next_run_after_a_kill_replaces_the_folder_and_cleans_up(tmp_path):
    out = _old_folder(tmp_path)
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), "2"])
    with atomic_dir(out) as staging:
        (staging / "fresh.txt").write_text("fresh")
    assert [path.name for path in out.iterdir()] == ["fresh.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_failed_block_keeps_the_old_folder(tmp_path):
    out = _old_folder(tmp_path)
    with pytest.raises(RuntimeError), atomic_dir(out) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert len(list(out.iterdir())) == OLD_FILES
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    with full_disk(tmp_path / "disk", {"out.json": b"old"}) as disk:
        target = disk / "out.json"
        with pytest.raises(OutputError) as caught:
            write_json(target, {"rows": list(range(100_000))})
        assert str(caught.value) == f"no space left on {target}; free space or choose another path"
        assert target.read_bytes() == b"old"
        assert leftovers(disk, "out.json") == []  # no temp file left


def test_full_disk_in_a_folder_swap_keeps_the_old_folder(tmp_path):
    with full_disk(tmp_path / "disk") as disk:
        (disk / "filler").unlink()
        out = _old_folder(disk)
        _fill(disk)
        with (
            pytest.raises(OutputError, match=f"^no space left on {out};"),
            atomic_dir(out) as staging,
        ):
            (staging / "big.bin").write_bytes(b"\0" * 1_000_000)
        with (
            pytest.raises(OutputError, match=f"^no space left on {out};"),
            atomic_dir(out) as staging,
        ):
            write_json(staging / "nested.json", list(range(100_000)))  # an atomic writer inside
        assert len(list(out.iterdir())) == OLD_FILES
        assert leftovers(disk, "out") == []


def test_read_only_output_names_the_path_and_the_reason(tmp_path):
    target = tmp_path / "out" / "result.txt"
    with full_disk(tmp_path / "out", {"result.txt": b"old"}):
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "out")], check=True)
        with pytest.raises(OutputError) as caught:
            write_text(target, "new")
        assert str(caught.value).startswith(f"cannot write {target} (Read-only file system)")
        assert target.read_bytes() == b"old"


def test_an_input_error_inside_the_block_stays_what_it_is(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "out.txt"):
        (tmp_path / "missing-input.txt").read_text()
    assert list(tmp_path.iterdir()) == []
