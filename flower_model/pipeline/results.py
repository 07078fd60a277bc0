"""`flower-model results`: DVC's experiments as a table a person can read at 100 columns.

`dvc exp show` lists every param and dependency hash (about 160 columns), so piped or at a normal
terminal width its cells collapse to `…`. This reads the same data (`dvc exp show --json`, DVC's
public output) and prints the headline metrics plus, under each row, only the params that differ
from the first row.
"""

import json
import textwrap
from pathlib import Path

from flower_model.config import flatten
from flower_model.errors import FlowerModelError
from flower_model.pipeline.fetch import run_dvc

METRICS_FILE = "reports/metrics.json"
# (metrics.json key, column title, format): the headline scalars evaluate writes.
COLUMNS = (
    ("test.accuracy", "test acc", "{:.4f}"),
    ("test.macro_f1", "macro-F1", "{:.4f}"),
    ("int8.accuracy_delta", "INT8 Δ", "{:+.4f}"),
    ("latency.p50_ms_per_image", "p50 ms", "{:.2f}"),
    ("val.loss", "val loss", "{:.4f}"),
)
WIDTH = 100
NAME_WIDTH = 18
SHORT_REV = 7
PARAMS_FILE = "params.yaml"
INDENT = "    "
FAILED = "failed"  # shown in the first metric column of a run that failed


def _rows(shown: list[dict]) -> list[tuple[str, dict, dict]]:
    """(label, flat params, flat metrics) for the workspace, each commit and its experiments."""
    rows = []
    for entry in shown:
        items = [entry]
        for group in entry.get("experiments") or []:
            items += group.get("revs") or []
        for item in items:
            data = item.get("data") or {}
            label = item.get("name") or item.get("rev", "?")
            if label == item.get("rev") and label != "workspace":
                label = label[:SHORT_REV]
            params = (data.get("params") or {}).get(PARAMS_FILE, {}).get("data") or {}
            metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data") or {}
            if item.get("error"):  # DVC keeps the baseline's metrics file in a failed run
                metrics = {COLUMNS[0][0]: FAILED}
            rows.append((label, flatten(params), flatten(metrics)))
    return rows


def _short(key: str) -> str:
    """`train.augment.scale_min` -> `augment.scale_min`: the last two parts say enough."""
    return ".".join(key.split(".")[-2:])


def _shown(value: object) -> object:
    """A list of named entries (`data.sources`: name, url, sha256 each) as its names, `[mine]`:
    the whole list with its URLs and sha256s filled several lines under a row."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, dict) and "name" in item for item in value)
    ):
        return "[" + ",".join(str(item["name"]) for item in value) + "]"
    return value


def _cell(value: object, pattern: str) -> str:
    if value == FAILED:
        return FAILED
    return pattern.format(value) if isinstance(value, (int, float)) else "-"


def render(rows: list[tuple[str, dict, dict]]) -> str:
    """The table; every line at most WIDTH characters. Under each row, indented, the params in
    which it differs from the first row (wrapped, never cut)."""
    if not rows:
        return "no experiments: run `dvc repro` or `dvc exp run -S KEY=VALUE` first\n"
    base_label, base, _ = rows[0]
    header = f"{'experiment':<{NAME_WIDTH}}" + "".join(f" {title:>9}" for _, title, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for label, params, metrics in rows:
        differ = [
            f"{_short(key)}={_shown(params.get(key))}"
            for key in [*params, *(key for key in base if key not in params)]  # params.yaml order
            if params.get(key) != base.get(key)
        ]
        cells = "".join(f" {_cell(metrics.get(key), pattern):>9}" for key, _, pattern in COLUMNS)
        lines.append(f"{label[:NAME_WIDTH]:<{NAME_WIDTH}}{cells}")
        lines += textwrap.wrap(
            " ".join(differ), WIDTH, initial_indent=INDENT, subsequent_indent=INDENT
        )
    lines.append(f"(indented: the params in which a row differs from {base_label})")
    return "\n".join(lines) + "\n"


def load_rows(root: Path, revisions: list[str]) -> list[tuple[str, dict, dict]]:
    """Rows from `dvc exp show --json` (all commits when `revisions` picks some)."""
    args = ["exp", "show", "--json", *(["--all-commits"] if revisions else [])]
    result = run_dvc(args, root)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise FlowerModelError(f"`dvc {' '.join(args)}` failed: {lines[-1]}")
    rows = _rows(json.loads(result.stdout or "[]"))
    if revisions:
        rows = [row for row in rows if any(row[0].startswith(rev) for rev in revisions)]
        if not rows:
            raise FlowerModelError(
                f"no experiment or commit named {revisions}; `flower-model results` lists them"
            )
    return rows


def print_results(root: Path, revisions: list[str]) -> None:
    print(render(load_rows(root, revisions)), end="")
