"""`flower-model report BASE TARGET`: what a change did to the model, as Markdown for a pull
request comment or a CI job summary, readable in a terminal (at most 100 columns).

Each side is a branch, commit, DVC experiment or the workspace. Its headline metrics and params
are git-tracked files read at that revision (`git show`); its test predictions are a DVC out, read
through `dvc.api` (the local cache, else the remote). Whether the accuracy change is more than
noise is McNemar's exact test on the photos the two sides classified differently.
"""

import csv
import io
import json
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

from flower_model.config import flatten
from flower_model.errors import FlowerModelError
from flower_model.pipeline.fetch import remote_hint
from flower_model.pipeline.results import COLUMNS, METRICS_FILE, PARAMS_FILE, SHORT_REV, WIDTH

WORKSPACE = "workspace"
PREDICTIONS_FILE = "reports/predictions.csv"
LOCK_FILE = "dvc.lock"
# The shipped fp32 ONNX model's column in evaluate's predictions.csv (evaluate.REFERENCE; that
# module is not imported: it loads torch, seconds for one string).
PREDICTED = "onnx_fp32_predicted"
SIGNIFICANCE = 0.05  # McNemar's p-value below this calls the accuracy change significant
NULL_PROBABILITY = 0.5  # under "no difference" a flipped photo is equally likely to go either way
EXPERIMENT_REFS = "refs/exps"  # where DVC keeps experiments: refs/exps/../<baseline>/<name>
METRIC_WIDTH = 14  # the metric column: the longest title, "INT8 Δ", padded to line up


@dataclass(frozen=True)
class Side:
    """One side of the comparison: the name the user gave and the commit (None: workspace)."""

    name: str
    commit: str | None

    @property
    def label(self) -> str:
        if self.commit is None or self.commit.startswith(self.name):
            return self.name[:SHORT_REV] if self.commit else self.name
        return f"{self.name} ({self.commit[:SHORT_REV]})"


class DifferentTestSets(FlowerModelError):
    """The two sides classified different test photos: there are no pairs to test."""


@dataclass(frozen=True)
class Flips:
    """McNemar's test on paired predictions: photos only one side classified right."""

    photos: int
    base_only: int  # right at base, wrong at target
    target_only: int  # wrong at base, right at target
    p_value: float


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def resolve(root: Path, name: str) -> Side:
    """A branch, tag, commit or DVC experiment name -> its commit; `workspace` -> None."""
    if name == WORKSPACE:
        return Side(name, None)
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if found.returncode == 0:
        return Side(name, found.stdout.strip())
    refs = _git(root, "for-each-ref", "--format=%(objectname) %(refname)", EXPERIMENT_REFS)
    for line in refs.stdout.splitlines():
        commit, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == name:
            return Side(name, commit)
    raise FlowerModelError(
        f"unknown revision {name!r}: give a branch, commit, DVC experiment or `workspace` "
        "(`git branch -a` and `flower-model results` list them; in CI fetch it first)"
    )


def _tracked(root: Path, side: Side, path: str) -> str | None:
    """A git-tracked file at `side` (None when it is not there)."""
    if side.commit is None:
        return (root / path).read_text() if (root / path).is_file() else None
    shown = _git(root, "show", f"{side.commit}:{path}")
    return shown.stdout if shown.returncode == 0 else None


def read_out(root: Path, side: Side, path: str, binary: bool = False) -> str | bytes:
    """A DVC out at `side`: the workspace file, else the cache or the default remote."""
    if side.commit is None and (root / path).is_file():
        return (root / path).read_bytes() if binary else (root / path).read_text()
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError

    try:
        return dvc.api.read(path, repo=str(root), rev=side.commit, mode="rb" if binary else "r")
    except PathMissingError:
        reason = "it is not in the DVC cache or on the default remote"
    except DvcException as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        reason = f"{message}; {remote_hint(message) or 'check the DVC remote'}"
    raise FlowerModelError(
        f"cannot read {path} of {side.label}: {reason}; make the remote that holds it the "
        "default (`dvc remote default NAME`), or run the pipeline there and `dvc push`"
    )


def metrics_of(root: Path, side: Side) -> dict:
    text = _tracked(root, side, METRICS_FILE)
    if text is None:
        raise FlowerModelError(
            f"{side.label} has no {METRICS_FILE}: run the pipeline there (`dvc repro`, or "
            "`dvc exp run`) and commit it, or compare another revision"
        )
    try:
        return flatten(json.loads(text))
    except (json.JSONDecodeError, AttributeError):  # not JSON, or not an object of metrics
        raise FlowerModelError(
            f"{METRICS_FILE} of {side.label} is not a JSON object of metrics: rerun evaluate there"
        ) from None


def predictions_of(root: Path, side: Side) -> dict[str, tuple[str, str]]:
    """file -> (true label, the shipped model's prediction)."""
    rows = csv.DictReader(io.StringIO(str(read_out(root, side, PREDICTIONS_FILE))))
    if rows.fieldnames is None or PREDICTED not in rows.fieldnames:
        raise FlowerModelError(
            f"{PREDICTIONS_FILE} of {side.label} has no {PREDICTED} column: rerun evaluate there"
        )
    return {row["file"]: (row["label"], row[PREDICTED]) for row in rows}


def mcnemar(base: dict[str, tuple[str, str]], target: dict[str, tuple[str, str]]) -> Flips:
    """Exact (binomial) McNemar test over the photos both sides classified, or a one-line
    error when the two were not evaluated on the same labelled test photos."""
    from scipy.stats import binomtest

    if base.keys() != target.keys() or any(base[key][0] != target[key][0] for key in base):
        only = sorted(base.keys() ^ target.keys())
        raise DifferentTestSets(
            f"the two sides were evaluated on different test photos ({len(base)} and "
            f"{len(target)}{', e.g. ' + only[0] if only else ', labels differ'}): McNemar's "
            "test pairs the same photos; compare revisions with the same data and preprocess"
        )
    base_right = {key for key, (label, predicted) in base.items() if label == predicted}
    target_right = {key for key, (label, predicted) in target.items() if label == predicted}
    base_only, target_only = len(base_right - target_right), len(target_right - base_right)
    flipped = base_only + target_only
    p_value = binomtest(base_only, flipped, NULL_PROBABILITY).pvalue if flipped else 1.0
    return Flips(len(base), base_only, target_only, float(p_value))


def changed_params(base: dict, target: dict) -> list[tuple[str, object, object]]:
    """(key, base value, target value) for every flat param that differs, params.yaml order."""
    keys = [*target, *(key for key in base if key not in target)]
    return [
        (key, base.get(key), target.get(key)) for key in keys if base.get(key) != target.get(key)
    ]


def changed_stages(base_lock: str | None, target_lock: str | None) -> list[str]:
    """Stages whose dvc.lock entry (deps, params, outs hashes) differs: the stages that reran."""
    base = (yaml.safe_load(base_lock or "") or {}).get("stages", {})
    target = (yaml.safe_load(target_lock or "") or {}).get("stages", {})
    return [name for name in target if target[name] != base.get(name)]


def _metric_rows(base: dict, target: dict) -> list[str]:
    rows = ["| metric         |       base |     target |     change |", "|---|---:|---:|---:|"]
    for key, title, pattern in COLUMNS:
        old, new = base.get(key), target.get(key)
        numbers = isinstance(old, (int, float)) and isinstance(new, (int, float))
        cells = [
            pattern.format(value) if isinstance(value, (int, float)) else "-"
            for value in (old, new)
        ]
        signed = "{:+" + pattern.removeprefix("{:").removeprefix("+")  # a change shows its sign
        change = signed.format(new - old) if numbers else "-"
        rows.append(f"| {title:<{METRIC_WIDTH}} | {cells[0]:>10} | {cells[1]:>10} | {change:>10} |")
    return rows


def significance_text(flips: Flips) -> str:
    verdict = "significant" if flips.p_value < SIGNIFICANCE else "not significant"
    return (
        f"**Accuracy change: {verdict}** at {SIGNIFICANCE} (McNemar's exact test, p = "
        f"{flips.p_value:.4g}). Of {flips.photos} test photos, {flips.target_only} went wrong → "
        f"right and {flips.base_only} right → wrong; the others were classified alike."
    )


def _wrapped(text: str, indent: str = "") -> list[str]:
    """Lines of at most WIDTH characters; a longer word (a URL) goes on over the next lines."""
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)


def render(
    base: Side,
    target: Side,
    metrics: tuple[dict, dict],
    significance: str,
    params: list[tuple[str, object, object]],
    stages: list[str],
) -> str:
    lines = [f"## Model report: {base.label[:40]} → {target.label[:40]}", ""]
    lines += _wrapped(f"base: `{base.label}` · target: `{target.label}`") + [""]
    lines += _metric_rows(*metrics) + [""]
    lines += _wrapped(significance) + ["", "### Params that differ", ""]
    for key, old, new in params:
        lines += _wrapped(f"- `{key}`: {old} → {new}", indent="  ")
    if not params:
        lines.append("none")
    lines += ["", "### Stages whose results differ (their dvc.lock entries)", ""]
    lines += _wrapped(", ".join(stages) if stages else "none")
    return "\n".join(lines) + "\n"


def build_report(root: Path, base_name: str, target_name: str, pictures: Path | None = None) -> str:
    """The Markdown report; every input is checked (one-line errors) before any is compared.
    With `pictures`, a folder, the plots that changed are saved there (report_plots.py)."""
    from flower_model.pipeline.report_plots import changed_pictures, picture_section

    base, target = resolve(root, base_name), resolve(root, target_name)
    metrics = (metrics_of(root, base), metrics_of(root, target))
    predictions = predictions_of(root, base), predictions_of(root, target)
    try:
        significance = significance_text(mcnemar(*predictions))
    except DifferentTestSets as error:  # e.g. a change to the split: still worth a report
        significance = f"**Accuracy change: not tested**: {error}."
    base_params = flatten(yaml.safe_load(_tracked(root, base, PARAMS_FILE) or "") or {})
    target_params = flatten(yaml.safe_load(_tracked(root, target, PARAMS_FILE) or "") or {})
    locks = _tracked(root, base, LOCK_FILE), _tracked(root, target, LOCK_FILE)
    text = render(
        base,
        target,
        metrics,
        significance,
        changed_params(base_params, target_params),
        changed_stages(*locks),
    )
    plots = picture_section(root, (base, target), changed_pictures(*locks), pictures)
    return text + "\n".join(plots) + "\n"
