"""The way back after an experiment: DVC's run cache restores a stage this clone already ran
(the project's .dvcignore keeps Python's bytecode out of the code deps' hashes), and `flower-model
back` returns to HEAD's params and this clone's outputs without running a stage, or says in one
line why it cannot and leaves the outputs.

A toy pipeline stands in for the real one: its stage depends on a code package (as train does on
flower_model/training), writes a different output on every run (as training does on another CPU)
and logs each real execution outside the repository.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flower_model.pipeline.workspace import workspace_note
from tests.conftest import REPO_ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
FLOWER_MODEL = str(Path(sys.executable).with_name("flower-model"))
COMMAND_TIMEOUT_S = 120
TOY_STAGE = """\
import os
import sys
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, ".")
import toy_code.train  # noqa: E402  (the stage's code dep, as train's flower_model/training)

lr = yaml.safe_load(Path("params.yaml").read_text())["lr"]
with open(os.environ["TOY_RUN_LOG"], "a") as log:  # outside the repo: counts real executions
    log.write(f"{lr}\\n")
Path("models").mkdir(exist_ok=True)
Path("models/model.txt").write_text(f"lr {lr}, run {uuid.uuid4()}\\n")  # differs on every run
"""
TOY_DVC_YAML = """\
stages:
  train:
    cmd: python step.py
    deps: [step.py, toy_code]
    params: [lr]
    outs: [models/model.txt]
"""


def _run(project: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, cwd=project, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    if check:
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture
def origin(tmp_path, monkeypatch) -> Path:
    """A committed toy project whose dvc.lock names outputs of another "host" (its own run)."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # write bytecode, as users do
    monkeypatch.setenv("TOY_RUN_LOG", str(tmp_path / "runs.log"))
    for name, value in (("NAME", "test"), ("EMAIL", "test@localhost")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    project = tmp_path / "origin"
    (project / "toy_code").mkdir(parents=True)
    for module in ("__init__", "train", "tracking"):
        (project / "toy_code" / f"{module}.py").write_text(f"NAME = {module!r}\n")
    (project / "step.py").write_text(TOY_STAGE)
    (project / "dvc.yaml").write_text(TOY_DVC_YAML)
    (project / "params.yaml").write_text("lr: 1\n")
    (project / ".gitignore").write_text("/models/\n__pycache__/\n")
    _run(project, "git", "init", "-q")
    _run(project, DVC, "init", "-q")
    shutil.copy(REPO_ROOT / ".dvcignore", project / ".dvcignore")  # the project's, under test
    _run(project, DVC, "repro")
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-qm", "the committed pipeline")
    return project


def _clone(origin: Path, name: str) -> Path:
    clone = origin.with_name(name)
    _run(origin.parent, "git", "clone", "-q", str(origin), str(clone))
    return clone


def _runs(tmp_path: Path) -> int:
    return len((tmp_path / "runs.log").read_text().splitlines())


@pytest.mark.slow  # a dozen DVC commands: ~30 s
def test_after_an_experiment_the_run_cache_and_back_restore_without_running(origin, tmp_path):
    clone = _clone(origin, "clone")
    _run(clone, DVC, "repro")  # `make repro` here: trains, since origin's output is not here
    made_here = (clone / "models/model.txt").read_text()
    assert _runs(tmp_path) == 2

    # An experiment, then another command imports more of the code package (evaluate imports
    # flower_model/training/tracking.py): Python writes bytecode beside it.
    experiment = _run(clone, DVC, "exp", "run", "-S", "lr=2")
    assert _runs(tmp_path) == 3
    # The experiment stays applied: what reads the workspace says whose it is.
    name = re.search(r"Ran experiment\(s\): (\S+)", experiment.stdout)[1]
    applied = f"note: the workspace is experiment {name} (its params.yaml); `flower-model back`"
    assert (workspace_note(clone) or "").startswith(applied)
    infer = _run(clone, FLOWER_MODEL, "infer", "photo.jpg", check=False)
    assert infer.stderr.startswith(applied), infer.stderr
    _run(clone, sys.executable, "-c", "import toy_code.tracking")
    assert (clone / "toy_code/__pycache__").is_dir()

    # Params switched back by hand: `dvc repro` restores the stage from the run cache.
    _run(clone, "git", "checkout", "params.yaml")
    repro = _run(clone, DVC, "repro")
    assert "Stage 'train' is cached - skipping run" in repro.stdout, repro.stdout
    assert _runs(tmp_path) == 3, "dvc repro ran the stage instead of restoring it"
    assert (clone / "models/model.txt").read_text() == made_here

    # The way: HEAD's dvc.lock names origin's outputs, which this clone never made;
    # `flower-model back` still restores this clone's own run, and runs nothing.
    _run(clone, DVC, "exp", "run", "-S", "lr=2")
    assert _runs(tmp_path) == 3, "lr=2 again came from the run cache too"
    back = _run(clone, FLOWER_MODEL, "back")
    assert "stage train: restored from DVC's run cache (not run)" in back.stdout, back.stdout
    assert _runs(tmp_path) == 3
    assert (clone / "models/model.txt").read_text() == made_here
    assert (clone / "params.yaml").read_text() == "lr: 1\n"
    assert workspace_note(clone) is None
    status = _run(clone, DVC, "status")
    assert "Data and pipelines are up to date." in status.stdout, status.stdout


@pytest.mark.slow  # ~15 s
def test_back_without_outputs_of_heads_params_is_one_line_and_keeps_the_outputs(origin, tmp_path):
    clone = _clone(origin, "fresh")
    _run(clone, DVC, "exp", "run", "-S", "lr=2")  # an experiment first: lr=1 never ran here
    experiment_output = (clone / "models/model.txt").read_text()
    back = _run(clone, FLOWER_MODEL, "back", check=False)
    assert back.returncode != 0
    errors = [line for line in back.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, back.stderr
    assert errors[0].startswith("error: stage train: this clone has no outputs of HEAD's params")
    assert "`dvc pull`" in errors[0] and "&& dvc repro` to rerun train" in errors[0]
    assert errors[0].endswith("; nothing was changed"), errors[0]
    assert (clone / "models/model.txt").read_text() == experiment_output, "outputs were touched"
    assert (clone / "params.yaml").read_text() == "lr: 2\n", "the experiment's params are back"
    assert (workspace_note(clone) or "").startswith("note: the workspace is experiment ")
    assert _runs(tmp_path) == 2
