"""`flower-model multirun`: a sweep as DVC experiments, expanded and run by DVC's own queue.

    flower-model multirun train.lr=0.001,0.003 model=small_cnn,mobilenet_v3_small [--jobs 2]

is `dvc exp run --queue -S train.lr=0.001,0.003 -S model=...` (DVC expands the Hydra sweep
syntax into one queued experiment per combination, params composed from configs/) and then
`dvc queue start -j 2`. What DVC's queue does not do, and this module adds: every combination's
params are validated before anything runs; a combination whose params already have an
experiment on this commit (succeeded, or still queued or running) is taken off the queue again,
so a restarted sweep runs only what is missing; the command waits, prints progress, names the
failures and exits non-zero on one; Ctrl-C stops the sweep (DVC's workers run detached and would
go on). `--launcher slurm` takes the same expanded grid to Slurm instead (slurm_sweep.py).
"""

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flower_model.config import flatten, validate
from flower_model.errors import FlowerModelError
from flower_model.pipeline.fetch import DVC_TIMED_OUT, run_dvc
from flower_model.pipeline.queue_stop import stop_queue
from flower_model.pipeline.stage import ERROR_PREFIX

LAUNCHERS = ("local", "slurm")
QUEUED_NAME = re.compile(r"Queued experiment '([^']+)'")
DVC_ADVERT = "Having any troubles?"  # the line DVC ends each error with
DONE_STATES = ("success", "failed")
PENDING_STATES = ("queued", "running")
SHOW_ATTEMPTS = 3  # `dvc exp show` tries while a queue worker's temporary workspace changes
SHOW_RETRY_S = 1.0
SHOW_TIMEOUT_S = 60.0  # `dvc exp show` answers in seconds; past this it is stuck (see below)
# How `dvc exp show` fails when a queue worker makes or removes a workspace or run file meanwhile
TEMP_WORKSPACE_RACES = ("does not exist", "No such file or directory")
# A dead worker (killed, machine slept) would leave the wait endless: this long with work
# pending and no state changing ends it with an error.
STALL_LIMIT_S = 600.0
# Metrics shown in the final table, as (file, dotted key).
TABLE_METRICS = (
    ("reports/metrics.json", "test.accuracy"),
    ("reports/metrics.json", "test.macro_f1"),
)


class MultirunError(FlowerModelError):
    """A sweep that cannot be queued, validated or finished."""


@dataclass
class Combination:
    name: str  # DVC experiment name
    params: dict  # its params.yaml, as DVC composed it
    values: dict[str, str]  # the value of each key the command line named
    state: str = "queued"  # queued | running | success | failed
    metrics: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.values.items())


def read_experiments(root: Path) -> dict[str, dict]:
    """Experiments of the current commit by name: state, params, metrics (`dvc exp show`)."""
    for _ in range(SHOW_ATTEMPTS):
        result = run_dvc(["exp", "show", "--json"], root, timeout_s=SHOW_TIMEOUT_S)
        # DVC fails ("directory '.dvc/tmp/exps/tmp.../.dvc' does not exist", a missing .run
        # file), or once hung on a lock for minutes, when a queue worker removes its temporary
        # workspace meanwhile: a moment later it works.
        raced = result.returncode == DVC_TIMED_OUT or any(
            race in result.stderr for race in TEMP_WORKSPACE_RACES
        )
        if result.returncode == 0 or not raced:
            break
        time.sleep(SHOW_RETRY_S)
    if result.returncode != 0:
        raise MultirunError(f"`dvc exp show --json` failed: {result.stderr.strip()}")
    found = {}
    for baseline in json.loads(result.stdout):
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                metrics = {
                    key: item.get("data", {}) for key, item in (data.get("metrics") or {}).items()
                }
                # A finished experiment that was not queued (no executor) has results: success.
                found[revision.get("name") or experiment.get("name")] = {
                    "state": executor.get("state") or ("success" if metrics else "failed"),
                    "params": (data.get("params") or {}).get("params.yaml", {}).get("data"),
                    "metrics": metrics,
                }
    return found


def _values(words: list[str], params: dict) -> dict[str, str]:
    """Each key on the command line -> its composed value (a config group by its name)."""
    flat, values = flatten(params), {}
    for word in words:
        key = word.split("=", 1)[0].lstrip("+~")
        value = flat.get(key, params.get(key))
        if isinstance(value, dict):
            value = value.get("name", json.dumps(value))
        values[key] = "null" if value is None else str(value).replace(" ", "")
    return values


def remove_from_queue(root: Path, names: list[str]) -> None:
    if names:
        run_dvc(["queue", "remove", *names], root)


def plan(
    root: Path, words: list[str], check: Callable[[dict], object] | None, adopt: tuple[str, ...]
) -> list[Combination]:
    """Queue DVC's grid, validate every combination, and swap each one that already has an
    experiment in an `adopt` state for that experiment. Nothing stays queued on an error."""
    queued = run_dvc(
        ["exp", "run", "--queue", *(arg for word in words for arg in ("-S", word))], root
    )
    names = QUEUED_NAME.findall(queued.stdout + queued.stderr)
    if queued.returncode != 0:
        remove_from_queue(root, names)  # DVC queues combination by combination until one fails
        said = " ".join(queued.stderr.split(DVC_ADVERT)[0].split())  # one line, without the
        said = said.split(" Config search path:")[0]  # ad, nor Hydra's search path
        raise MultirunError(f"cannot queue the sweep {' '.join(words)}: {said}")
    experiments = read_experiments(root)
    combinations, duplicates = [], []
    for name in names:
        params = experiments[name]["params"]
        combination = Combination(name, params, _values(words, params))
        try:
            if check is not None:
                check(params)
        except FlowerModelError as error:
            remove_from_queue(root, names)
            raise MultirunError(f"combination {combination.label}: {error}") from None
        earlier = [
            (other, found)
            for other, found in experiments.items()
            if other not in names and found["state"] in adopt and found["params"] == params
        ]
        if earlier:
            duplicates.append(name)
            other, found = max(earlier, key=lambda item: adopt.index(item[1]["state"]))
            combination.name, combination.state = other, found["state"]
            combination.metrics = found["metrics"]
        combinations.append(combination)
    remove_from_queue(root, duplicates)
    return combinations


def progress_line(combinations: list[Combination]) -> str:
    done = sum(item.state in DONE_STATES for item in combinations)
    failed = sum(item.state == "failed" for item in combinations)
    running = "; ".join(item.label for item in combinations if item.state == "running")
    line = f"[{done}/{len(combinations)} done" + (f", {failed} failed]" if failed else "]")
    return line + (f" running: {running}" if running else "")


def table(combinations: list[Combination]) -> str:
    """Plain-text table: experiment, state, one column per key of the command line, metrics."""
    rows = [["experiment", "state", *combinations[0].values, *(key for _, key in TABLE_METRICS)]]
    for item in combinations:
        # A failed DVC experiment lists the metrics its workspace started with: not its results.
        metrics = item.metrics if item.state == "success" else {}
        scores = [
            flatten(metrics.get(file_name) or {}).get(key) for file_name, key in TABLE_METRICS
        ]
        shown = [f"{score:.4f}" if isinstance(score, float) else "-" for score in scores]
        rows.append([item.name or "-", item.state, *item.values.values(), *shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def run_multirun(
    root: Path,
    words: list[str],
    jobs: int = 1,
    poll_s: float = 5.0,
    check: Callable[[dict], object] | None = validate,
    out=None,
    launcher: str = "local",
) -> list[Combination]:
    """Run the sweep's combinations that have no result yet with `jobs` DVC queue workers (or one
    Slurm job each with `launcher="slurm"`), report until done; the combinations, final states."""
    out = out or sys.stdout  # looked up per call: a redirected sys.stdout is honoured
    if jobs < 1:
        raise MultirunError(f"-j/--jobs must be at least 1, got {jobs}")
    if launcher not in LAUNCHERS:
        raise MultirunError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "slurm":
        from flower_model.pipeline import slurm_sweep

        slurm_sweep.check_controller()
    adopt = ("success",) if launcher == "slurm" else ("queued", "running", "success")
    combinations = plan(root, words, check, adopt)
    skipped = sum(item.state == "success" for item in combinations)
    if skipped:
        print(f"{skipped} of {len(combinations)} already have results: skipped", file=out)
    if launcher == "slurm":  # DVC's queue only expanded the grid: Slurm runs it
        remove_from_queue(root, [item.name for item in combinations if item.state == "queued"])
        slurm_sweep.run_on_slurm(root, combinations, poll_s, out)
    elif any(item.state in PENDING_STATES for item in combinations):
        for item in combinations:
            if item.state == "queued":
                print(f"queued {item.name}: {item.label}", file=out)
        try:  # `dvc queue start` returns once a worker runs: Ctrl-C may come before
            started = run_dvc(["queue", "start", "-j", str(jobs)], root)
            if started.returncode != 0:
                raise MultirunError(f"`dvc queue start` failed: {started.stderr.strip()}")
            _wait(root, combinations, poll_s, out)
        except KeyboardInterrupt:
            print("interrupted: stopping the sweep's experiments", file=out, flush=True)
            stop_queue(root, {item.name for item in combinations if item.state in PENDING_STATES})
            raise
    print(table(combinations), file=out)
    return combinations


def _wait(root: Path, combinations: list[Combination], poll_s: float, out) -> None:
    last_line, last_change = "", time.monotonic()
    while any(item.state in PENDING_STATES for item in combinations):
        time.sleep(poll_s)
        experiments = read_experiments(root)
        for item in combinations:
            found = experiments.get(item.name, {"state": item.state, "metrics": item.metrics})
            if found["state"] == "failed" and item.state != "failed":
                print(f"failed: {item.label}: {_failure(root, item.name)}", file=out, flush=True)
            item.state, item.metrics = found["state"], found["metrics"]
        line = progress_line(combinations)
        if line != last_line or "running:" in line:
            last_change = time.monotonic()
        if line != last_line:
            print(line, file=out, flush=True)
            last_line = line
        if time.monotonic() - last_change > STALL_LIMIT_S:
            raise MultirunError(
                f"experiments are queued but none has run for {STALL_LIMIT_S:.0f} s: check "
                "`dvc queue status` and `dvc queue logs <name>`, then `dvc queue start`"
            )


def _failure(root: Path, name: str) -> str:
    """The stage's own one-line error from the experiment's log (DVC's last line only names the
    stage), and where the whole log is."""
    log = run_dvc(["queue", "logs", name], root).stdout.splitlines()
    errors = [line for line in log if line.startswith(ERROR_PREFIX)]
    return (errors[-1] + "; " if errors else "") + f"log: `dvc queue logs {name}`"
