"""`flower-model multirun ... --launcher slurm`: one Slurm job per combination of DVC's grid.

Each job runs one `dvc exp run --temp` (as DVC's queue workers do), so every result lands as a
DVC experiment and an MLflow run, exactly like the local queue. Resources are each combination's
`slurm` config group, so a sweep can set or sweep them. The controller must answer before
anything is queued, and every request must fit a node of its partition (`sinfo`) before anything
is submitted: sbatch's own refusal is a submitit traceback, or a job that pends forever. Job
files go to a fresh folder per sweep under multirun/ (job ids restart when a cluster is wiped).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flower_model.config import compose_raw, flatten
from flower_model.errors import FlowerModelError
from flower_model.pipeline.slurm_queue import PENDING_NOTICE_S, pending_notice, slurm_command
from flower_model.pipeline.stage import ERROR_PREFIX

RAN_NAME = re.compile(r"Ran experiment\(s\): (\S+)")
JOBS_DIR = Path("multirun")
# The `slurm` config keys are submitit AutoExecutor parameters by name, but for this one.
SUBMITIT_RENAMED = {"partition": "slurm_partition"}
SUBMITIT_NOTICE_S = 90  # submitit's default signal_delay_s: its time-out notice before the limit
WORKSPACE_WAIT_S = 30.0  # < SUBMITIT_NOTICE_S: for `dvc exp run --temp` to enter its workspace
LOG_TAIL_LINES = 20
MIB_PER_GB = 1024
# How long the accounting may lag behind a job's result file before its state is final.
ACCOUNTING_WAIT_S = 30.0
UNFINISHED_STATES = ("", "PENDING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")
# `dvc exp run --temp` works in a folder under here and leaves it behind when it is killed
TEMP_WORKSPACES = Path(".dvc") / "tmp" / "exps" / "standalone"
START_CLUSTER = "start a local cluster with `sudo scripts/slurm_cluster.sh up`"


class SlurmSweepError(FlowerModelError):
    """A Slurm sweep that cannot be submitted."""


def check_controller() -> None:
    """`sbatch` on PATH and the controller answering, before any work."""
    if shutil.which("sbatch") is None:
        raise SlurmSweepError(
            f"--launcher slurm: no `sbatch` on PATH; run on a Slurm login node, or {START_CLUSTER}"
        )
    ping = slurm_command("scontrol", "ping")
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().replace("\n", "; ")
        raise SlurmSweepError(
            f"--launcher slurm: the Slurm controller does not answer (`scontrol ping`: {said}); "
            f"start slurmctld, or {START_CLUSTER}"
        )


def resources(params: dict) -> dict:
    """submitit parameters from a combination's composed `slurm` section."""
    settings = params.get("slurm")
    if not isinstance(settings, dict):
        raise SlurmSweepError(
            "--launcher slurm: the composed config has no `slurm` section (configs/slurm/)"
        )
    return {
        SUBMITIT_RENAMED.get(key, key): value
        for key, value in settings.items()
        if value is not None
    }


def _nodes() -> tuple[dict[str, list[dict]], str | None]:
    """Partition -> its nodes' CPUs, memory (MiB) and GPUs, from `sinfo`; the default partition."""
    listed = slurm_command("sinfo", "-h", "-N", "-o", "%P|%c|%m|%G")
    if listed.returncode != 0:
        raise SlurmSweepError(f"--launcher slurm: `sinfo` failed: {listed.stderr.strip()}")
    partitions: dict = {}
    default = None
    for line in listed.stdout.split():
        partition, cpus, memory, gres = line.split("|")
        gpus = re.search(r"gpu(?::[^:,(]+)?:(\d+)", gres)
        node = {"cpus": int(cpus), "mem_mib": int(memory), "gpus": int(gpus[1]) if gpus else 0}
        partitions.setdefault(partition.rstrip("*"), []).append(node)
        default = partition.rstrip("*") if partition.endswith("*") else default
    return partitions, default


def check_fits(settings: dict, partitions: dict[str, list[dict]], default: str | None) -> None:
    """One line naming the `slurm.*` keys no node of the partition can satisfy."""
    partition = settings.get("partition") or default
    nodes = partitions.get(partition)
    if not nodes:
        known = ", ".join(sorted(partitions)) or "none"
        raise SlurmSweepError(
            f"slurm.partition={partition}: no such partition (Slurm has {known}; null: the default)"
        )
    need = {  # `slurm` key -> (what a node has, how much of it the key asks for)
        "cpus_per_task": ("cpus", settings["cpus_per_task"] * settings["tasks_per_node"]),
        "mem_gb": ("mem_mib", settings["mem_gb"] * MIB_PER_GB),
        "gpus_per_node": ("gpus", settings["gpus_per_node"]),
    }
    fitting = [node for node in nodes if all(node[has] >= asked for has, asked in need.values())]
    if len(fitting) >= settings["nodes"]:
        return
    largest = {has: max(node[has] for node in nodes) for has, _ in need.values()}
    over = [
        f"slurm.{key}={settings[key]}" for key, (has, asked) in need.items() if asked > largest[has]
    ]
    over = over or [f"slurm.nodes={settings['nodes']}"]
    raise SlurmSweepError(
        f"{' '.join(over)} fits no node of partition {partition} "
        f"({len(nodes)} node(s), largest {largest['cpus']} CPUs, "
        f"{largest['mem_mib'] / MIB_PER_GB:.1f} GB, {largest['gpus']} GPUs; CPUs asked are "
        "cpus_per_task x tasks_per_node): ask for less on the command line or in configs/slurm/"
    )


def hydra_overrides(params: dict, baseline: dict) -> list[str]:
    """The overrides that turn the default composition into `params` (`++key=value`, `~key`):
    what the job hands to `dvc exp run --temp -S`, so DVC composes the combination again."""
    wanted, default = flatten(params), flatten(baseline)
    changed = [
        f"++{key}={json.dumps(value)}"
        for key, value in wanted.items()
        if default.get(key, ...) != value
    ]
    return changed + [f"~{key}" for key in default if key not in wanted]


def _temp_workspace(pid: int, root: Path) -> Path | None:
    """The `--temp` workspace DVC process `pid` works in: it names it nowhere but its cwd."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    temp = (root / TEMP_WORKSPACES).resolve()
    return (
        temp / cwd.relative_to(temp).parts[0] if cwd.is_relative_to(temp) and cwd != temp else None
    )


def remove_temp_run(workspace: Path) -> None:
    """What a killed `dvc exp run --temp` leaves: its workspace and its run record (a file under
    `standalone/run/` that names the workspace). DVC removes both when a run ends by itself and
    has no command for a killed one (`dvc exp clean` cleans only its Celery queue's messages)."""
    shutil.rmtree(workspace, ignore_errors=True)
    for record in (workspace.parent / "run").glob("*/*.run"):
        if str(workspace) in record.read_text(errors="replace"):
            shutil.rmtree(record.parent, ignore_errors=True)


def run_experiment(root: str, overrides: list[str]) -> dict:
    """Inside the Slurm job: one `dvc exp run --temp` of the combination, its output to the job's
    log; DVC's exit code, the experiment name and the last lines of output, and why it was
    stopped, if it was. A killed run (scancel: Slurm's SIGTERM; the time limit: submitit's notice
    `signal_delay_s` before it) leaves its temp workspace behind: removed here."""
    import submitit

    args = ["dvc", "exp", "run", "--temp", *(arg for item in overrides for arg in ("-S", item))]
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    workspace, stopped = None, None
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            args, cwd=root, stdout=output, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            while process.poll() is None:
                workspace = workspace or _temp_workspace(process.pid, Path(root))
                time.sleep(0.5)
        except submitit.core.utils.UncompletedJobError as error:  # timed out, or preempted
            stopped = str(error)
            # The notice leaves time to learn the workspace of a run still setting it up.
            deadline = time.monotonic() + WORKSPACE_WAIT_S
            while workspace is None and process.poll() is None and time.monotonic() < deadline:
                workspace = _temp_workspace(process.pid, Path(root))
                time.sleep(0.5)
            process.terminate()
            process.wait()
        output.seek(0)
        text = output.read()
    if process.returncode != 0 and workspace is not None:
        remove_temp_run(workspace)
    print(text, flush=True)
    found = RAN_NAME.search(text)
    return {
        "returncode": process.returncode,
        "stopped": stopped,
        "name": found.group(1) if found else None,
        "tail": text.strip().splitlines()[-LOG_TAIL_LINES:],
    }


def final_state(job_id: str) -> str:
    """Slurm's own final word on a job (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) from sacct,
    waiting for the accounting to catch up with the job's result file."""
    deadline = time.monotonic() + ACCOUNTING_WAIT_S
    while True:
        listed = slurm_command("sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id))
        state = (listed.stdout.split() or [""])[0]  # "CANCELLED by 0" -> CANCELLED
        if state not in UNFINISHED_STATES or time.monotonic() > deadline:
            return state or "UNKNOWN"
        time.sleep(1)


def _outcome(job) -> tuple[str, str | None, str]:
    """(state, experiment name, why) of a finished job."""
    log = job.paths.stdout
    state = final_state(job.job_id)
    if state not in ("COMPLETED", "FAILED"):  # Slurm ended it: its state says why, not our log
        return "failed", None, f"Slurm job {job.job_id} {state}; log {log}"
    try:
        result = job.result()
    except Exception as error:  # submitit's FailedJobError/UncompletedJobError and the like
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return "failed", None, f"Slurm job {job.job_id} {state}: {reason}; log {log}"
    if result.get("stopped"):
        state = "TIMEOUT" if "timed-out" in result["stopped"] else "PREEMPTED"
        limit = f"its time limit (slurm.timeout_min; submitit stops it {SUBMITIT_NOTICE_S} s early)"
        why = f"stopped at {limit}" if state == "TIMEOUT" else result["stopped"]
        return "failed", None, f"Slurm job {job.job_id} {state}: {why}; log {log}"
    if result["returncode"] != 0:
        # The stage's own one-line error says what to fix; DVC's last line only names the stage.
        errors = [line for line in result["tail"] if line.startswith(ERROR_PREFIX)]
        last = (errors or result["tail"] or [""])[-1]
        code = result["returncode"]
        why = f"Slurm job {job.job_id}: `dvc exp run` exited {code} ({last}); log {log}"
        return "failed", result["name"], why
    return "success", result["name"], ""


def _submit(root: Path, combinations: list, out) -> dict:
    """One job per combination without a result; all or none (sbatch's refusal, one line)."""
    import submitit

    partitions, default = _nodes()
    todo = [item for item in combinations if item.state != "success"]
    for item in todo:
        check_fits(item.params["slurm"], partitions, default)
    baseline = compose_raw(root)
    folder = root / JOBS_DIR / f"slurm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    jobs = {}
    for item in todo:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(name="flower-model-sweep", **resources(item.params))
        try:
            job = executor.submit(run_experiment, str(root), hydra_overrides(item.params, baseline))
        except (submitit.core.utils.FailedJobError, KeyboardInterrupt) as error:
            for submitted in jobs.values():
                submitted.cancel(check=False)
            if isinstance(error, KeyboardInterrupt):  # Ctrl-C, SIGTERM: none of it stays queued
                raise
            said = str(error).strip().splitlines()[-1]
            raise SlurmSweepError(f"sbatch refused the job of {item.label}: {said}") from None
        jobs[item.name] = job
        item.state = "queued"
        print(f"submitted Slurm job {job.job_id}: {item.label}", file=out, flush=True)
    return jobs


def run_on_slurm(root: Path, combinations: list, poll_s: float, out) -> None:
    """Submit one job per combination that has no result, report progress until all ended."""
    from flower_model.pipeline.multirun import progress_line, read_experiments

    jobs = _submit(root, combinations, out)
    pending = {item.name: item for item in combinations if item.name in jobs}
    last_line, submitted = "", time.monotonic()
    last_notice = submitted
    try:
        while pending:
            time.sleep(poll_s)
            now = time.monotonic()
            if now - last_notice >= PENDING_NOTICE_S and all(
                item.state == "queued" for item in combinations if item.name in jobs
            ):
                ids = [str(job.job_id) for job in jobs.values()]
                print(pending_notice(ids, now - submitted), file=out, flush=True)
                last_notice = now
            for key, item in list(pending.items()):
                job = jobs[key]
                if job.done():
                    item.state, item.name, why = _outcome(job)
                    del pending[key]
                    if why:
                        print(f"failed: {item.label}: {why}", file=out, flush=True)
                elif job.state == "RUNNING":
                    item.state = "running"
            line = progress_line(combinations)
            if line != last_line:
                print(line, file=out, flush=True)
                last_line = line
    except KeyboardInterrupt:
        for job in jobs.values():
            if not job.done():
                job.cancel(check=False)
        raise
    experiments = read_experiments(root)
    for item in combinations:
        item.metrics = experiments.get(item.name, {}).get("metrics", item.metrics)
