"""`flower-model ARGS...` in the test process: the same argument checks and stage code as the
console script, without paying ~14 s of interpreter start and torch/Lightning imports per call
(the subprocess form stays in tests/test_config.py, which proves the installed entry point)."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

STAGE_TIMEOUT_S = 600  # a tiny stage run ends in well under a minute; this only bounds a hang


def run_in_process(cwd: Path, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `flower-model ARGS` run from `cwd`."""
    from flower_model.commands import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(previous)
    return code, out.getvalue(), err.getvalue()


def run_stage_script(
    cwd: Path, stage: str, *overrides: str, **env: str
) -> subprocess.CompletedProcess:
    """`python pipeline_stages/<stage>.py OVERRIDES` of this checkout, run from `cwd` as DVC does
    (a fresh interpreter, output to pipes, not a terminal); asserts it exited 0."""
    script = Path(__file__).resolve().parents[2] / "pipeline_stages" / f"{stage}.py"
    result = subprocess.run(
        [sys.executable, str(script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_S,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
