"""dvc.yaml agrees with the stage modules: same params keys, same outs, one hop to the code."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flower_model.commands import STAGE_NAMES
from tests.conftest import REPO_ROOT, make_config

PIPELINE = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _paths(entries: list) -> set[str]:
    return {entry if isinstance(entry, str) else next(iter(entry)) for entry in entries}


def test_stages_are_the_documented_dag_in_order():
    assert list(PIPELINE) == [name for name in STAGE_NAMES if name in PIPELINE]
    assert list(PIPELINE)[:2] == ["download", "preprocess"]


@pytest.mark.parametrize("name", list(PIPELINE))
def test_stage_matches_its_module(name):
    stage = importlib.import_module(f"pipeline_stages.{name}").STAGE
    declared = PIPELINE[name]
    assert declared["cmd"] == f"python pipeline_stages/{name}.py"
    assert f"pipeline_stages/{name}.py" in declared["deps"]
    assert declared["params"] == list(stage.sections)
    outs = set()
    for kind in ("outs", "metrics", "plots"):
        outs |= _paths(declared.get(kind, []))
    assert outs == {str(path) for path in stage.outputs(make_config())}
    produced = {
        path
        for stage in PIPELINE.values()
        for kind in ("outs", "metrics", "plots")
        for path in _paths(stage.get(kind, []))
    }
    for dep in declared["deps"]:
        assert (
            dep in produced or (REPO_ROOT / dep).exists()
        ), f"{name}: dep {dep} is neither code nor an out"


HEADLINE_METRICS = 5  # test accuracy and macro-F1, val loss, INT8 delta, latency per image


def test_dvc_shows_the_headline_metrics_only():
    """What `dvc exp show` and `dvc metrics diff` read: one metrics file of five scalars (was 140
    columns from five files). Runs on the committed reports/metrics.json, so on a bare clone."""
    declared = {path for stage in PIPELINE.values() for path in _paths(stage.get("metrics", []))}
    assert declared == {"reports/metrics.json"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "metrics", "show", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    shown = json.loads(result.stdout)
    files = next(iter(shown.values()))["data"]
    assert set(files) == {"reports/metrics.json"}
    leaves = {
        f"{section}.{key}"
        for section, values in files["reports/metrics.json"]["data"].items()
        for key in values
    }
    assert len(leaves) == HEADLINE_METRICS and {"test.accuracy", "test.macro_f1"} <= leaves
