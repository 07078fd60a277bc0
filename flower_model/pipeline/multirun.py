"""`flower-model multirun`: a Hydra-style sweep run as a grid of queued DVC experiments.

    flower-model multirun train.lr=0.001,0.003 model=small_cnn,mobilenet_v3_small [-j 2]

Each combination becomes one `dvc exp run --queue -S key=value ...`, so results live where every
other experiment lives (`dvc exp show`, `dvc exp apply`, `dvc plots diff`) and DVC's run cache
restores any stage it has run before with the same inputs instead of recomputing it. State is
read back from `dvc exp show --json` (experiments of the current commit), which is what makes a
restarted sweep skip combinations that already succeeded, or are still queued or running.
"""

import itertools
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flower_model.config import flatten, validate
from flower_model.errors import FlowerModelError
from flower_model.pipeline.compose import compose_params
from flower_model.pipeline.fetch import run_dvc

LAUNCHERS = ("local", "slurm")
QUEUED_NAME = re.compile(r"Queued experiment '([^']+)'")
DONE_STATES = ("success", "failed")
PENDING_STATES = ("queued", "running")
# A worker that died (killed, machine slept) would leave the loop waiting forever: this long with
# work pending, nothing running and no state changing ends the wait with an error.
STALL_LIMIT_S = 600.0
# Metrics shown in the final table, as (file, dotted key, column header).
TABLE_METRICS = (
    ("reports/metrics.json", "test.accuracy", "test.accuracy"),
    ("reports/metrics.json", "test.macro_f1", "test.macro_f1"),
)


class MultirunError(FlowerModelError):
    """A sweep that cannot be parsed, queued or finished."""


@dataclass
class Combination:
    overrides: list[str]  # one `key=value` per swept or fixed key, in the order given
    params: dict  # the params.yaml DVC will write for it (configs/ + overrides)
    name: str | None = None  # DVC experiment name, once queued or found
    state: str = "new"  # new | queued | running | success | failed
    metrics: dict = field(default_factory=dict)

    def label(self) -> str:
        return " ".join(self.overrides)


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep syntax (`k=a,b`, `k=range(1,4)`, `k=choice(a,b)`) -> the cartesian grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise MultirunError(f"cannot parse the sweep {overrides}: {error}") from None
    axes = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        axes.append([f"{key}={value}" for value in values])
    return [list(combination) for combination in itertools.product(*axes)]


def plan(
    root: Path, overrides: list[str], check: Callable[[dict], object] | None = validate
) -> list[Combination]:
    """Compose (and by default validate) every combination before anything is queued."""
    combinations = []
    for combination in expand_grid(overrides):
        try:
            params = yaml.safe_load(compose_params(root, combination))
            if check is not None:
                check(params)
        except FlowerModelError as error:
            raise MultirunError(f"combination {' '.join(combination)}: {error}") from None
        combinations.append(Combination(combination, params))
    return combinations


def read_experiments(root: Path) -> list[dict]:
    """Experiments of the current commit: name, state, params, metrics (from `dvc exp show`)."""
    result = run_dvc(["exp", "show", "--json"], root)
    if result.returncode != 0:
        raise MultirunError(f"`dvc exp show --json` failed: {result.stderr.strip()}")
    found = []
    for baseline in json.loads(result.stdout):
        if baseline.get("rev") == "workspace":
            continue
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data")
                metrics = {
                    name: entry.get("data", {})
                    for name, entry in (data.get("metrics") or {}).items()
                }
                # A finished experiment that was not queued (no executor) has results: success.
                state = executor.get("state") or ("success" if metrics else "failed")
                found.append(
                    {
                        "name": revision.get("name") or experiment.get("name"),
                        "state": state,
                        "params": params,
                        "metrics": metrics,
                    }
                )
    return found


def match(combinations: list[Combination], experiments: list[dict]) -> None:
    """Give each combination the best state among experiments with exactly its params."""
    rank = {"failed": 1, "queued": 2, "running": 3, "success": 4}
    for combination in combinations:
        for experiment in experiments:
            if experiment["params"] != combination.params:
                continue
            if rank.get(experiment["state"], 0) > rank.get(combination.state, 0):
                combination.name = experiment["name"]
                combination.state = experiment["state"]
                combination.metrics = experiment["metrics"]


def queue(root: Path, combination: Combination) -> None:
    args = ["exp", "run", "--queue"]
    for override in combination.overrides:
        args += ["-S", override]
    result = run_dvc(args, root)
    found = QUEUED_NAME.search(result.stdout + result.stderr)
    if result.returncode != 0 or found is None:
        raise MultirunError(
            f"cannot queue {combination.label()}: {(result.stderr or result.stdout).strip()}"
        )
    combination.name, combination.state = found.group(1), "queued"


def progress_line(combinations: list[Combination]) -> str:
    done = sum(combination.state in DONE_STATES for combination in combinations)
    running = [
        combination.label() for combination in combinations if combination.state == "running"
    ]
    failed = sum(combination.state == "failed" for combination in combinations)
    line = f"[{done}/{len(combinations)} done"
    line += f", {failed} failed]" if failed else "]"
    return line + (f" running: {'; '.join(running)}" if running else "")


def _metric(metrics: dict, file_name: str, key: str) -> str:
    value = flatten(metrics.get(file_name) or {}).get(key)
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def table(combinations: list[Combination]) -> str:
    """Plain-text table: experiment, state, one column per override key, the test metrics."""
    keys = [override.split("=", 1)[0] for override in combinations[0].overrides]
    header = ["experiment", "state", *keys, *(title for _, _, title in TABLE_METRICS)]
    rows = [header]
    for combination in combinations:
        values = [override.split("=", 1)[1] for override in combination.overrides]
        # A failed DVC experiment still lists the metrics files its workspace started with (the
        # baseline's): they are not its results.
        metrics = combination.metrics if combination.state == "success" else {}
        scores = [_metric(metrics, name, key) for name, key, _ in TABLE_METRICS]
        rows.append([combination.name or "-", combination.state, *values, *scores])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def run_multirun(
    root: Path,
    overrides: list[str],
    jobs: int = 1,
    poll_s: float = 5.0,
    check: Callable[[dict], object] | None = validate,
    out=None,
    launcher: str = "local",
) -> list[Combination]:
    """Queue what has no result yet, run the queue with `jobs` workers (or submit one Slurm job
    per combination with `launcher="slurm"`), report until done."""
    out = out or sys.stdout  # looked up per call: a redirected sys.stdout is honoured
    if jobs < 1:
        raise MultirunError(f"-j/--jobs must be at least 1, got {jobs}")
    if launcher not in LAUNCHERS:
        raise MultirunError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "slurm":
        from flower_model.pipeline.slurm_sweep import require_slurm

        require_slurm()
    combinations = plan(root, overrides, check)
    match(combinations, read_experiments(root))
    skipped = [combination for combination in combinations if combination.state == "success"]
    if skipped:
        print(f"{len(skipped)} of {len(combinations)} already have results: skipped", file=out)
    if launcher == "slurm":
        from flower_model.pipeline.slurm_sweep import run_on_slurm

        run_on_slurm(root, combinations, poll_s, out)
        print(table(combinations), file=out)
        return combinations
    for combination in combinations:
        if combination.state in ("new", "failed"):
            queue(root, combination)
            print(f"queued {combination.name}: {combination.label()}", file=out)
    if any(combination.state in PENDING_STATES for combination in combinations):
        started = run_dvc(["queue", "start", "-j", str(jobs)], root)
        if started.returncode != 0:
            raise MultirunError(f"`dvc queue start` failed: {started.stderr.strip()}")
        try:
            _wait(root, combinations, poll_s, out)
        except KeyboardInterrupt:
            stop_pending(root, combinations)
            raise
    print(table(combinations), file=out)
    return combinations


def _wait(root: Path, combinations: list[Combination], poll_s: float, out) -> None:
    last_line, last_change = "", time.monotonic()
    while any(combination.state in PENDING_STATES for combination in combinations):
        time.sleep(poll_s)
        by_name = {experiment["name"]: experiment for experiment in read_experiments(root)}
        for combination in combinations:
            experiment = by_name.get(combination.name)
            if experiment is not None:
                combination.state, combination.metrics = experiment["state"], experiment["metrics"]
        line = progress_line(combinations)
        running = any(combination.state == "running" for combination in combinations)
        if line != last_line or running:
            last_change = time.monotonic()
        if line != last_line:
            print(line, file=out, flush=True)
            last_line = line
        if time.monotonic() - last_change > STALL_LIMIT_S:
            raise MultirunError(
                f"experiments are queued but none has run for {STALL_LIMIT_S:.0f} s: check "
                "`dvc queue status` and `dvc queue logs <name>`, then `dvc queue start`"
            )


def stop_pending(root: Path, combinations: list[Combination]) -> None:
    """Ctrl-C: drop this sweep's queued experiments and kill its running ones (they read as
    failed, so starting the sweep again requeues them); finished results stay."""
    queued = [item.name for item in combinations if item.state == "queued" and item.name]
    running = [item.name for item in combinations if item.state == "running" and item.name]
    if queued:
        run_dvc(["queue", "remove", *queued], root)
    if running:
        run_dvc(["queue", "kill", *running], root)
