"""The train stage on a terminal: Lightning's Rich progress bar, not the one-line-per-epoch log.

The other half of the promise (output that is not a terminal gets one plain line per epoch and
no bar redraws) is tests/test_training.py::test_console_of_a_logged_run, which runs the same
stage with its output to pipes. Together they pin the choice `sys.stdout.isatty()` makes in
flower_model/training/train.py: a detection stuck on "not a terminal" fails here (plain lines,
no bar), one stuck on "terminal" fails there.
"""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import (
    REPO_ROOT,
    stop_process,
    tiny_console_overrides,
    train_stage_project,
)

TERMINAL_RUN_TIMEOUT_S = 300
TERMINAL_ROWS, TERMINAL_COLUMNS = 40, 120
# Variables from which Rich would take whether (and how wide) its output is a terminal, instead
# of asking the pseudo-terminal itself.
RICH_TERMINAL_VARIABLES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")
ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What EpochLines prints in a log ("epoch 1/2  train loss 1.6094  val loss ..."), anywhere.
PLAIN_EPOCH_LINE = re.compile(r"epoch \d+/2\s+train loss")
RICH_BAR = "\u2501"  # "━", the character Rich's BarColumn draws a bar with
HIDE_CURSOR, ERASE_LINE = "\x1b[?25l", "\x1b[2K"  # Rich's live display redrawing in place


def run_on_terminal(command: list[str], cwd: Path, timeout_s: float) -> tuple[int, str]:
    """(exit code, everything it wrote) of `command` with stdin, stdout and stderr on a fresh
    pseudo-terminal of TERMINAL_COLUMNS x TERMINAL_ROWS. Its process group is stopped if it
    outlives `timeout_s`, or if reading fails."""
    controller, terminal = pty.openpty()
    window = struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, window)
    env = {name: value for name, value in os.environ.items() if name not in RICH_TERMINAL_VARIABLES}
    env["TERM"] = "xterm-256color"
    try:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(terminal)  # only the child holds the terminal side now: EIO once it is gone
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break  # exited and drained (a grandchild may still hold the terminal)
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every process on the terminal side has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        output = b"".join(chunks).decode("utf-8", errors="replace")
        if process.poll() is None:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"no exit within {timeout_s} s; its last output:\n{output[-3000:]}"
                ) from None
        return process.returncode, output
    finally:
        stop_process(process)  # SIGTERM then SIGKILL its process group; nothing if it exited
        os.close(controller)


@pytest.mark.slow
def test_console_of_a_run_on_a_terminal(tmp_path, tiny_processed, mlflow_server):
    """`dvc repro` or `python pipeline_stages/train.py` in a terminal: the Rich bar, drawn and
    redrawn in place, and none of the per-epoch lines meant for logs."""
    train_stage_project(tmp_path, tiny_processed)
    command = [
        sys.executable,
        str(REPO_ROOT / "pipeline_stages" / "train.py"),
        *tiny_console_overrides(mlflow_server, 2),
    ]
    code, output = run_on_terminal(command, tmp_path, TERMINAL_RUN_TIMEOUT_S)
    text = ANSI_SEQUENCE.sub("", output)
    assert code == 0, output[-3000:]
    # JSON events in their file, one console line naming it, none of them on the terminal.
    assert "train: JSON events go to models/train_events.jsonl" in text, text[-3000:]
    assert '"event": "train_done"' in (tmp_path / "models" / "train_events.jsonl").read_text()
    assert '{"event"' not in text, text[-3000:]
    # The stage's own stdout reached the terminal, so the absence below is not a lost stream.
    assert re.search(r"^train: 2 epochs in \d+ s", text, re.MULTILINE), text[-3000:]
    # Rich's bar: its bar characters, both epochs' descriptions (Lightning's RichProgressBar
    # writes "Epoch 0/1"; its tqdm bar would write "Epoch 0:"), and in-place redraws.
    assert RICH_BAR in text, output[-3000:]
    assert "Epoch 0/1" in text and "Epoch 1/1" in text, text[-3000:]
    assert HIDE_CURSOR in output and ERASE_LINE in output, repr(output[-1000:])
    assert not PLAIN_EPOCH_LINE.search(text), text
