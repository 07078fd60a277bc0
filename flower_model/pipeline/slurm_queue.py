"""Slurm's client commands for a sweep, and why its jobs have not started (squeue's reason,
the nodes sinfo lists as down or drained): a sweep on a drained node sat at `[0/2 done]` for
minutes without a word."""

import subprocess

COMMAND_TIMEOUT_S = 60  # sinfo/scontrol/sacct against a controller that hangs
# A sweep none of whose jobs has started after this long says why, from squeue (a drained node,
# resources, a down partition), and says it again every as long while nothing starts.
PENDING_NOTICE_S = 30.0


def slurm_command(*args: str) -> subprocess.CompletedProcess:
    """A Slurm client command, output captured; a controller that hangs is its exit code 1."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 1, "", f"no answer in {COMMAND_TIMEOUT_S} s")


def pending_reasons(job_ids: list[str]) -> list[str]:
    """squeue's reason for each pending job among `job_ids` (`Resources`, `ReqNodeNotAvail,
    UnavailableNodes:n1`...), and each node sinfo lists as down or drained with its reason."""
    listed = slurm_command("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r")
    reasons = sorted(
        {
            fields[2]
            for fields in (line.split("|", 2) for line in listed.stdout.splitlines())
            if len(fields) == 3 and fields[1] == "PENDING"
        }
    )
    down = slurm_command("sinfo", "-h", "-R", "-o", "%N|%T|%E")
    nodes = [
        f"node {fields[0]} {fields[1]} ({fields[2]})"
        for fields in (line.split("|", 2) for line in down.stdout.splitlines())
        if len(fields) == 3
    ]
    return [f"squeue: {reason}" for reason in reasons] + nodes


def pending_notice(job_ids: list[str], waited_s: float) -> str:
    """The line a sweep prints while none of its jobs has started."""
    reasons = pending_reasons(job_ids) or ["squeue gives no reason"]
    return (
        f"no Slurm job of the sweep has started after {waited_s:.0f} s ({'; '.join(reasons)}); "
        "`sinfo -R` lists unavailable nodes, `scontrol update NodeName=NODE State=RESUME` "
        "brings a drained one back; Ctrl-C cancels the sweep's jobs"
    )
