"""dvc.yaml is the pipeline's one declaration: the stage runner reads what DVC reads, paths are
named once (templated from `paths`), and every stage's deps cover the code it loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flower_model.commands import stage_names
from flower_model.config import dvc_yaml, flatten
from flower_model.pipeline import stage as stages
from tests.conftest import REPO_ROOT, make_config

TEMPLATED = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
# The file as DVC reads it: ${paths.x} filled from params.yaml (the test below proves the stage
# runner fills them the same way).
RESOLVED = yaml.safe_load(
    dvc_yaml.TEMPLATE.sub(
        lambda match: str(
            flatten(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))[match[1]]
        ),
        (REPO_ROOT / "dvc.yaml").read_text(),
    )
)
PIPELINE = RESOLVED["stages"]
PLOTS = [item for item in RESOLVED["plots"] if isinstance(item, dict)]  # pictures: plain paths


def _paths(entries: list) -> set[str]:
    return {entry if isinstance(entry, str) else next(iter(entry)) for entry in entries}


CORE_DAG = ("download", "preprocess", "train", "export_onnx", "build_trt", "evaluate")


def test_stages_are_listed_in_dag_order():
    """Each stage's data deps are outs of stages listed before it (or sources), and the
    documented core DAG keeps its order (a new stage anywhere needs no edit here)."""
    produced: set[str] = set()
    for name, stage in PIPELINE.items():
        for dep in stage["deps"]:
            if dep.startswith(("flower_model", "pipeline_stages")):
                continue
            assert dep in produced or (REPO_ROOT / dep).exists(), f"{name}: {dep} comes later"
        for kind in ("outs", "metrics", "plots"):
            produced |= _paths(stage.get(kind, []))
    assert [name for name in PIPELINE if name in CORE_DAG] == list(CORE_DAG)


def test_every_dvc_stage_has_its_module_and_every_module_its_stage():
    assert set(PIPELINE) == set(stage_names())


@pytest.fixture(scope="module")
def dvc_index():
    """DVC's own reading of dvc.yaml, templates filled from params.yaml."""
    from dvc.repo import Repo

    with Repo(str(REPO_ROOT)) as repo:
        yield {
            stage.name: (
                [str(dep.def_path) for dep in stage.deps],
                [str(out.def_path) for out in stage.outs],
            )
            for stage in repo.index.stages
        }


@pytest.mark.parametrize("name", list(PIPELINE))
def test_the_stage_reads_what_dvc_reads_from_dvc_yaml(name, dvc_index):
    """One declaration: the stage runner's inputs and outs are DVC's, path for path."""
    declared = TEMPLATED["stages"][name]
    assert declared["cmd"] == f"python pipeline_stages/{name}.py"
    assert f"pipeline_stages/{name}.py" in declared["deps"]
    assert dvc_yaml.stage(name, REPO_ROOT).params == tuple(declared["params"])
    config = make_config()
    dvc_deps, dvc_outs = dvc_index[name]
    inputs = [str(path) for path in stages.inputs(name, config, REPO_ROOT)]
    code = ("flower_model/", "pipeline_stages/", "params.yaml")
    assert inputs == [dep for dep in dvc_deps if not dep.startswith(code)]
    assert sorted(str(path) for path in stages.outputs(name, config, REPO_ROOT)) == sorted(dvc_outs)
    produced = {out for _, outs in dvc_index.values() for out in outs}
    for dep in dvc_deps:
        assert (
            dep in produced or (REPO_ROOT / dep).exists() or dep == "params.yaml"
        ), f"{name}: dep {dep} is neither code nor an out"


def test_paths_are_named_once_in_dvc_yaml():
    """Artifact paths come from `paths` (configs/paths): no literal data/models/reports/plots
    folder in a stage's deps or outs."""
    literal = ("data/", "models/", "reports/", "plots/")
    for name, declared in TEMPLATED["stages"].items():
        for kind in ("deps", "outs", "metrics", "plots"):
            for path in _paths(declared.get(kind, [])):
                assert not path.startswith(literal), f"{name}: {kind} {path} is not templated"


def test_a_hand_run_stage_follows_overridden_paths():
    """`flower-model train paths.models_dir=elsewhere` writes where it says, as DVC would."""
    config = make_config(["paths.models_dir=elsewhere"])
    outputs = stages.outputs("train", config, REPO_ROOT)
    assert Path("elsewhere/model.ckpt") in outputs
    assert not any(str(path).startswith("models/") for path in outputs)


def test_a_missing_or_broken_dvc_yaml_is_a_one_line_error(tmp_path):
    from flower_model.config import ConfigError

    with pytest.raises(ConfigError, match="no dvc.yaml under .*run flower-model from the project"):
        dvc_yaml.stage("train", tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: [")
    with pytest.raises(ConfigError, match="is not a DVC pipeline file"):
        dvc_yaml.stage("train", tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {other: {cmd: x}}\n")
    with pytest.raises(ConfigError, match="stage train is not in"):
        dvc_yaml.stage("train", tmp_path)


# Shared plumbing every stage loads: it checks config, reports and writes atomically, but
# computes nothing a stage's outs depend on (dvc.yaml's header says so), so it is not a dep:
# changing it reruns nothing.
PLUMBING = {
    "flower_model/__init__.py",
    "flower_model/config/__init__.py",
    "flower_model/config/schema.py",
    "flower_model/config/loading.py",
    "flower_model/config/project_paths.py",  # which paths are allowed: checked, not computed
    "flower_model/config/strict_yaml.py",  # how params.yaml is read, not what it says
    "flower_model/constants.py",
    "flower_model/errors.py",
    "flower_model/io_utils.py",
    "flower_model/pipeline/__init__.py",
    "flower_model/cli.py",
    "flower_model/pipeline/stage.py",
    "flower_model/pipeline/stage_help.py",
    "flower_model/pipeline/workspace.py",  # the header's note on an applied experiment
    "flower_model/config/dvc_yaml.py",  # reads dvc.yaml itself
    "flower_model/pipeline/dvc_outs.py",
    "flower_model/pipeline/model_check.py",  # refuses damaged models; computes nothing
    "flower_model/pipeline/dvc_lock.py",  # reads dvc.lock, refuses a truncated one
    "flower_model/pipeline/fetch.py",
    "flower_model/naming.py",
}


def _project_imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere (function bodies too), as dotted names."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flower_model"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("flower_model")}
    return found


def _module_file(dotted: str) -> Path | None:
    base = REPO_ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, not a module


def _loaded_files(entry: Path) -> set[str]:
    """Every project file `entry` loads, following imports (and parent packages) statically."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        relative = path.relative_to(REPO_ROOT).as_posix()
        if relative in seen:
            continue
        seen.add(relative)
        for dotted in _project_imports(path):
            parts = dotted.split(".")
            for depth in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:depth]))
                if found is not None:
                    todo.append(found)
    return seen


@pytest.mark.parametrize("name", list(PIPELINE))
def test_deps_cover_every_project_module_the_stage_loads(name):
    """Code a stage runs is a dep, so changing it reruns the stage (plumbing aside)."""
    deps = PIPELINE[name]["deps"]
    loaded = _loaded_files(REPO_ROOT / "pipeline_stages" / f"{name}.py")
    uncovered = sorted(
        path
        for path in loaded - PLUMBING
        if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)
        and (REPO_ROOT / path).read_text().strip()  # an empty package __init__ computes nothing
    )
    assert not uncovered, f"dvc.yaml stage {name} runs {uncovered} but does not list them in deps"
    code = [dep for dep in deps if dep.startswith(("flower_model", "pipeline_stages"))]
    stale = [
        dep
        for dep in code
        if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for path in loaded)
    ]
    assert not stale, f"dvc.yaml stage {name} lists code deps it never loads: {stale}"


# test accuracy and macro-F1 (and the accuracy on reviewed labels, with how many photos a review
# changed), val loss, INT8 delta, latency per image
HEADLINE_METRICS = 7


@pytest.mark.slow
def test_dvc_shows_the_headline_metrics_only():
    """What `dvc exp show` and `dvc metrics diff` read: one metrics file of seven scalars (was 140
    columns from five files). Reads the committed reports/metrics.json, so works on a bare clone."""
    declared = {path for stage in PIPELINE.values() for path in _paths(stage.get("metrics", []))}
    assert declared == {"reports/metrics.json"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "exp", "show", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for revision in json.loads(result.stdout):  # the workspace and HEAD
        metrics = revision["data"]["metrics"]
        assert set(metrics) == {"reports/metrics.json"}, revision["rev"]
        columns = set(flatten(metrics["reports/metrics.json"]["data"]))
        assert len(columns) == HEADLINE_METRICS, (revision["rev"], columns)
        assert {"test.accuracy", "test.macro_f1"} <= columns


PLOT_TEMPLATES = REPO_ROOT / ".dvc" / "plots"


@pytest.mark.parametrize("definition", PLOTS, ids=lambda item: next(iter(item)))
def test_every_vega_plot_explains_itself(definition):
    """Title and axis titles on every vega plot; custom templates exist and draw DVC's data."""
    name, spec = next(iter(definition.items()))
    for key in ("title", "x_label", "y_label"):
        assert spec.get(key), f"plot {name} has no {key}"
    template = spec["template"]
    builtin = {"linear", "bar_horizontal", "confusion", "scatter", "smooth", "simple"}
    if template not in builtin:
        text = (PLOT_TEMPLATES / f"{template}.json").read_text()
        assert "<DVC_METRIC_DATA>" in text and "<DVC_METRIC_Y" in text, template
        json.loads(text)


def test_epoch_plots_count_from_one_on_an_integer_axis():
    template = json.loads((PLOT_TEMPLATES / "epochs.json").read_text())
    assert template["transform"][0]["calculate"] == "toNumber(datum.epoch) + 1"
    x_axis = template["spec"]["encoding"]["x"]
    assert x_axis["field"] == "epoch_number" and x_axis["axis"]["format"] == "d"
    assert template["spec"]["encoding"]["color"]["field"] == "field", "series in colours"
    assert template["resolve"]["scale"]["x"] == "independent", "one x scale per revision"
    confusion = json.loads((PLOT_TEMPLATES / "confusion_counts.json").read_text())
    assert confusion["params"][0] == {"name": "showValues", "bind": {"input": "checkbox"}} | {
        "value": True
    }


def test_the_class_distribution_is_drawn_coloured_by_split(tiny_processed):
    """The class-count plot's template colours bars by the `split` column, and the csv the
    preprocess stage writes (at the path the plot reads) has that column, with every split for
    every class, next to the plot's x and y fields."""
    import csv

    from flower_model.constants import SPLITS

    (definition,) = [item for item in PLOTS if "class_distribution" in item]
    spec = definition["class_distribution"]
    template = json.loads((PLOT_TEMPLATES / f"{spec['template']}.json").read_text())
    color = template["encoding"]["color"]
    assert color["field"] == "split" and color["type"] == "nominal"
    assert color["sort"] == list(SPLITS), "legend in pipeline order"
    ((path, y_field),) = spec["y"].items()
    rows = list(csv.DictReader((tiny_processed / path).open()))
    assert rows and {spec["x"], y_field, color["field"]} <= set(rows[0])
    classes = {row[y_field] for row in rows}
    pairs = sorted((row[y_field], row["split"]) for row in rows)
    assert pairs == sorted((name, split) for name in classes for split in SPLITS)
    assert all(int(row[spec["x"]]) > 0 for row in rows)
