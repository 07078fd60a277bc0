"""Processes of a running `flower-model serve`, found by its PID (never by name)."""

import subprocess


def tritonserver_pid(serve: subprocess.Popen) -> int:
    """The one tritonserver `serve` runs (it leads its own process group, with its stubs)."""
    children = subprocess.run(
        ["pgrep", "-P", str(serve.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 1, f"serve runs one tritonserver: {children}"
    return int(children[0])
