"""A stage that fails under `dvc repro` leaves the previous outs usable (issue 16).

DVC deletes a stage's outs before running it. The stage here is a real
stage module (`stage_main`) run by a real `dvc repro` in a throwaway DVC project (with the
project's configs/ and params.yaml), so the whole path is exercised: DVC removes, the stage
fails, the stage restores.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
STEP = """\
from pathlib import Path

from flower_model.pipeline.stage import stage_main


def run(config, root, params):
    mode = Path("mode").read_text().strip()
    (root / "out").mkdir()
    (root / "out" / "a.txt").write_text(mode)
    if mode == "bug":
        raise RuntimeError("a bug after writing out/")
    if mode == "interrupt":
        raise KeyboardInterrupt
    (root / "single.txt").write_text(mode)
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "metrics.json").write_text('{"score": %d}' % len(mode))


if __name__ == "__main__":
    stage_main(run)  # the stage's name is its file name; params and outs: dvc.yaml below
"""
DVC_YAML = """\
stages:
  step:
    cmd: python step.py
    deps: [step.py, mode]
    params: [train.lr]
    outs: [out, single.txt]
    metrics: [{reports/metrics.json: {cache: false}}]
"""


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), cwd=project, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def dvc_project(tmp_path, monkeypatch) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    (project / "step.py").write_text(STEP)
    (project / "dvc.yaml").write_text(DVC_YAML)
    (project / "mode").write_text("first\n")
    for name, value in (("NAME", "test"), ("EMAIL", "test@localhost")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    # the stages' `python` is this environment's, as with the venv activated (`.venv/bin/pytest`
    # run without activating it would otherwise start the system Python)
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    for command in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "repro", "-q"]):
        assert _run(project, *command).returncode == 0
    assert _run(project, "git", "add", "-A").returncode == 0
    assert _run(project, "git", "commit", "-qm", "first").returncode == 0
    return project


def _assert_previous_outs(project: Path) -> None:
    assert (project / "out" / "a.txt").read_text() == "first"
    assert (project / "single.txt").read_text() == "first"
    assert json.loads((project / "reports" / "metrics.json").read_text()) == {"score": 5}
    status = _run(project, DVC, "status", "--json")
    changes = json.loads(status.stdout)["step"]
    assert all("changed outs" not in change for change in changes), changes


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bug", "interrupt"])
def test_a_stage_failing_after_writing_restores_the_previous_outs_and_keeps_its_own(
    dvc_project, mode
):
    (dvc_project / "mode").write_text(f"{mode}\n")
    failed = _run(dvc_project, DVC, "repro")
    assert failed.returncode != 0
    assert "stage step failed: kept what the failed run wrote in out.failed\n" in failed.stderr
    assert "stage step failed: restored the previous out, single.txt from the DVC cache\n" in (
        failed.stderr
    )
    assert "stage step failed: restored the previous reports/metrics.json from git HEAD\n" in (
        failed.stderr
    )
    _assert_previous_outs(dvc_project)
    assert (dvc_project / "out.failed" / "a.txt").read_text() == mode


@pytest.mark.slow
def test_a_config_error_under_dvc_names_the_key_and_loses_no_out(dvc_project):
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["train"]["lr"] = -1
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params))
    failed = _run(dvc_project, DVC, "repro")
    assert failed.returncode != 0
    assert "error: invalid config:\n  train.lr = -1: Input should be greater than 0" in (
        failed.stderr
    )
    assert "Traceback" not in failed.stderr
    _assert_previous_outs(dvc_project)
    assert not (dvc_project / "out.failed").exists()


@pytest.mark.slow
def test_outside_dvc_a_failing_stage_touches_nothing(dvc_project):
    """Run by hand, DVC deleted nothing, so there is nothing to restore or move aside."""
    (dvc_project / "mode").write_text("bug\n")
    shutil.rmtree(dvc_project / "out")
    env = {key: value for key, value in os.environ.items() if key != "DVC_STAGE"}
    failed = subprocess.run(
        [sys.executable, "step.py"], cwd=dvc_project, capture_output=True, text=True, env=env
    )
    assert failed.returncode != 0 and "a bug after writing out/" in failed.stderr
    assert "restored" not in failed.stderr
    assert (dvc_project / "out" / "a.txt").read_text() == "bug"


# The same step reading a path key (the keys of `paths` are what a stage deletes and writes).
PATH_DVC_YAML = DVC_YAML.replace("params: [train.lr]", "params: [paths.processed_dir]")


@pytest.mark.slow
@pytest.mark.parametrize("value", [".", "..", "configs"])
def test_dvc_exp_run_with_a_path_naming_the_project_changes_nothing(dvc_project, value):
    """`dvc exp run -S` with DVC's Hydra mode on, as the project has it: the stage reading the
    path refuses it before any work, and every file of the project stays as it was (DVC's own
    .git/.dvc bookkeeping of the experiment aside)."""
    hydra = {"enabled": "true", "config_dir": "configs", "config_name": "config"}
    for option, setting in hydra.items():  # as the project's .dvc/config sets it
        assert _run(dvc_project, DVC, "config", f"hydra.{option}", setting).returncode == 0
    (dvc_project / "dvc.yaml").write_text(PATH_DVC_YAML)
    assert _run(dvc_project, DVC, "repro", "-q").returncode == 0
    _run(dvc_project, "git", "add", "-A")
    assert _run(dvc_project, "git", "commit", "-qm", "hydra").returncode == 0
    project_files = _project_files(dvc_project)
    failed = _run(dvc_project, DVC, "exp", "run", "-S", f"paths.processed_dir={value}")
    assert failed.returncode != 0
    assert f"paths.processed_dir = '{value}': Value error, " in failed.stderr
    assert "Traceback" not in failed.stderr
    _run(dvc_project, "git", "checkout", "params.yaml")  # -S wrote the value there
    assert _project_files(dvc_project) == project_files  # the outs too, restored by the stage
    assert json.loads(_run(dvc_project, DVC, "status", "--json").stdout) == {}


def _project_files(project: Path) -> dict[Path, bytes]:
    return {
        path.relative_to(project): path.read_bytes()
        for path in sorted(project.rglob("*"))
        if path.is_file() and path.relative_to(project).parts[0] not in (".git", ".dvc")
    }
