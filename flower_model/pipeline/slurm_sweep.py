"""`flower-model multirun ... --launcher slurm`: one Slurm job per combination.

Each job runs one DVC experiment of its combination in a temporary workspace of its own
(`dvc exp run --temp`, as DVC's queue workers do), so every result lands as a DVC experiment
(`dvc exp show`, `dvc exp apply`, `dvc plots diff`) and an MLflow run, exactly like the local
queue. Three concurrent `dvc exp run --temp` in one repository were measured to finish cleanly.
Resources are each combination's `slurm` config group (configs/slurm/), so a sweep can set or
even sweep them (`slurm.gpus_per_node=0`). Jobs go through submitit into a fresh folder per sweep
under multirun/ (Slurm job ids restart when a cluster's state is wiped).
"""

import os
import re
import shutil
import time
from pathlib import Path

from flower_model.errors import FlowerModelError
from flower_model.pipeline.fetch import run_dvc
from flower_model.pipeline.stage import ERROR_PREFIX

RAN_NAME = re.compile(r"Ran experiment\(s\): (\S+)")
JOBS_DIR = Path("multirun")
# `slurm` config key -> submitit AutoExecutor parameter
SUBMITIT_NAMES = {
    "timeout_min": "timeout_min",
    "nodes": "nodes",
    "tasks_per_node": "tasks_per_node",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "partition": "slurm_partition",
}
LOG_TAIL_LINES = 20


class SlurmSweepError(FlowerModelError):
    """A Slurm sweep that cannot be submitted."""


def resources(params: dict) -> dict:
    """submitit parameters from a combination's composed `slurm` section."""
    settings = params.get("slurm")
    if not isinstance(settings, dict):
        raise SlurmSweepError(
            "--launcher slurm: the composed config has no `slurm` section (configs/slurm/)"
        )
    return {
        SUBMITIT_NAMES[key]: value
        for key, value in settings.items()
        if key in SUBMITIT_NAMES and value is not None
    }


def run_experiment(root: str, overrides: list[str]) -> dict:
    """Inside the Slurm job: one `dvc exp run --temp` of the combination; its output goes to the
    job's log. Returns DVC's exit code, the experiment name and the last lines of output."""
    args = ["exp", "run", "--temp"]
    for override in overrides:
        args += ["-S", override]
    result = run_dvc(args, Path(root))
    text = result.stdout + result.stderr
    print(text, flush=True)
    found = RAN_NAME.search(text)
    return {
        "returncode": result.returncode,
        "name": found.group(1) if found else None,
        "tail": text.strip().splitlines()[-LOG_TAIL_LINES:],
    }


def _executor(folder: Path, parameters: dict):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(name="flower-model-sweep", **parameters)
    return executor


def _outcome(job) -> tuple[str, str | None, str]:
    """(state, experiment name, why) of a finished job."""
    log = job.paths.stdout
    try:
        result = job.result()
    except Exception as error:  # submitit's FailedJobError/UncompletedJobError and the like
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return "failed", None, f"Slurm job {job.job_id} {job.state}: {reason}; log {log}"
    if result["returncode"] != 0:
        # The stage's own one-line error says what to fix; DVC's last line only names the stage.
        errors = [line for line in result["tail"] if line.startswith(ERROR_PREFIX)]
        last = (errors or result["tail"] or [""])[-1]
        code = result["returncode"]
        why = f"Slurm job {job.job_id}: `dvc exp run` exited {code} ({last}); log {log}"
        return "failed", result["name"], why
    return "success", result["name"], ""


def run_on_slurm(root: Path, combinations: list, poll_s: float, out) -> None:
    """Submit one job per combination that has no result, report progress until all ended."""
    from flower_model.pipeline.multirun import progress_line, read_experiments

    folder = root / JOBS_DIR / f"slurm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    jobs = {}
    for combination in combinations:
        if combination.state in ("new", "failed"):
            executor = _executor(folder, resources(combination.params))
            job = executor.submit(run_experiment, str(root), combination.overrides)
            jobs[id(combination)] = job
            combination.state = "queued"
            print(f"submitted Slurm job {job.job_id}: {combination.label()}", file=out, flush=True)
    last_line = ""
    try:
        while any(combination.state in ("queued", "running") for combination in combinations):
            time.sleep(poll_s)
            for combination in combinations:
                job = jobs.get(id(combination))
                if job is None or combination.state not in ("queued", "running"):
                    continue
                if job.done():
                    combination.state, combination.name, why = _outcome(job)
                    if why:
                        print(f"failed: {combination.label()}: {why}", file=out, flush=True)
                elif job.state == "RUNNING":
                    combination.state = "running"
            line = progress_line(combinations)
            if line != last_line:
                print(line, file=out, flush=True)
                last_line = line
    except KeyboardInterrupt:
        for job in jobs.values():
            if not job.done():
                job.cancel(check=False)
        raise
    by_name = {experiment["name"]: experiment for experiment in read_experiments(root)}
    for combination in combinations:
        found = by_name.get(combination.name)
        if found is not None:
            combination.metrics = found["metrics"]


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise SlurmSweepError(
            "--launcher slurm: no `sbatch` on PATH; run on a Slurm login node, or start a local "
            "cluster with `sudo scripts/slurm_cluster.sh up`"
        )
