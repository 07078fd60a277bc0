"""`flower-model ARGS...` in the test process: the same fire parsing and stage code as the
console script, without paying ~14 s of interpreter start and torch/Lightning imports per call
(the subprocess form stays in tests/test_config.py, which proves the installed entry point)."""

import contextlib
import io
import os
from pathlib import Path


def run_in_process(cwd: Path, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `flower-model ARGS` run from `cwd`."""
    from flower_model.commands import _commands
    from flower_model.pipeline.stage import fire_command

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            fire_command(_commands(), "flower-model", list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(previous)
    return code, out.getvalue(), err.getvalue()
