"""scripts/ci_reproduce.sh, the reproduce workflow's one script, run here as the forge runs it.

A small copy of the project (the real stages and dvc.yaml; the tiny model for one epoch on the
mini photo set at 32 px) runs the whole pipeline, commits dvc.lock on `main` and pushes its outs
to a local-folder DVC remote. A fresh clone is the CI runner: unchanged, the script runs no
stage; on a branch that changes one train param it reruns train -> evaluate and its report
shows the change with McNemar's p-value, equal to scipy's on the two predictions files.
"""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy.stats import binomtest

from flower_model.config import compose_raw
from tests.conftest import REPO_ROOT, TINY_MODEL, TINY_SIZE, copy_reviews_folder

pytestmark = pytest.mark.slow
SCRIPT = REPO_ROOT / "scripts" / "ci_reproduce.sh"
DVC = str(Path(sys.executable).with_name("dvc"))
RETRAINED = ["train", "export_onnx", "build_trt", "evaluate"]
TINY_OVERRIDES = [
    "model=small_cnn",
    f"model.widths={TINY_MODEL['widths']}".replace(" ", ""),
    "train=scratch",
    "train.max_epochs=1",
    "train.warmup_epochs=0",
    "train.batch_size=8",
    "trainer=ci",
    "trainer.accelerator=cpu",
    "export=ci",
    "evaluate=ci",
    f"preprocess.image_size={TINY_SIZE}",
    "preprocess.num_workers=0",
]
CHANGED_LR = 0.01


def _run(command: list[str], cwd: Path, env: dict, check: bool = True):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def pushed_main(tmp_path, mini_tarball):
    """(project on `main` with its pipeline run and committed, remote folder holding its outs,
    environment the stages and the script run with)."""
    project, remote = tmp_path / "project", tmp_path / "remote"
    ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache", "config.local")
    for name in ("configs", "pipeline_stages", "flower_model", ".dvc", "scripts"):
        shutil.copytree(REPO_ROOT / name, project / name, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, project / name)
    copy_reviews_folder(project)
    params = compose_raw(REPO_ROOT, TINY_OVERRIDES)
    digest = hashlib.sha256(mini_tarball.read_bytes()).hexdigest()
    params["data"]["sources"] = [{"name": "mini", "url": str(mini_tarball), "sha256": digest}]
    # Not a param of any stage (dvc.yaml): a file store outside the project, no server needed.
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PYTHONPATH": str(project),
        **{
            f"GIT_{who}_{what}": value
            for who in ("AUTHOR", "COMMITTER")
            for what, value in (("NAME", "ci"), ("EMAIL", "ci@localhost"))
        },
    }
    env.pop("CI_EXPECT_UNCHANGED", None)
    _run(["git", "init", "-q", "-b", "main"], project, env)
    _run([DVC, "remote", "add", "--local", "-d", "folder", str(remote)], project, env)
    _run([DVC, "repro"], project, env)
    _run(["git", "add", "-A"], project, env)
    _run(["git", "commit", "-qm", "pipeline"], project, env)
    _run([DVC, "push"], project, env)
    return project, remote, env


def _script(clone: Path, remote: Path, env: dict, **extra: str):
    command = [str(clone / "scripts" / "ci_reproduce.sh"), str(remote)]
    return _run(command, clone, {**env, **extra}, check=False)


def _predictions(text: str) -> dict[str, bool]:
    """file -> whether the shipped model classified it right."""
    return {
        row["file"]: row["label"] == row["onnx_fp32_predicted"]
        for row in csv.DictReader(text.splitlines())
    }


def test_unchanged_reruns_nothing_and_a_param_change_retrains_and_is_reported(
    pushed_main, tmp_path
):
    project, remote, env = pushed_main
    clone = tmp_path / "runner"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    reports = tmp_path / "ci-report"  # the workflow's default, ci-report/, is git-ignored
    env = {**env, "PYTHONPATH": str(clone), "CI_REPORT_DIR": str(reports)}

    unchanged = _script(clone, remote, env, CI_EXPECT_UNCHANGED="1")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert (reports / "reran.txt").read_text() == ""
    report = (reports / "report.md").read_text()
    assert max(len(line) for line in report.splitlines()) <= 100
    report = " ".join(report.split())  # the sentences as read, not as wrapped
    assert "p = 1)" in report and "0 went wrong → right and 0 right → wrong" in report
    _run([DVC, "status"], clone, env)  # still a valid DVC repository
    assert not _run(["git", "status", "--porcelain"], clone, env).stdout.strip()

    # A pull request: one train param changed, dvc.lock not rerun.
    _run(["git", "checkout", "-qb", "change"], clone, env)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["lr"] = CHANGED_LR
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-qam", "lr"], clone, env)

    strict = _script(clone, remote, env, CI_EXPECT_UNCHANGED="1")
    assert strict.returncode != 0
    assert "FAILED at step 3: dvc.lock is not in step" in strict.stderr
    assert "train" in strict.stderr

    changed = _script(clone, remote, env)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert (reports / "reran.txt").read_text().split() == RETRAINED
    table = (reports / "report.md").read_text()
    report = " ".join(table.split())
    base_lr = yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"]
    assert f"- `train.lr`: {base_lr} → {CHANGED_LR}" in report
    assert "Stages run by this CI job " + " ".join(RETRAINED) in report

    # The pictures that changed, side by side beside the Markdown.
    assert "![target](report_plots/target-confusion.png)" in report
    assert (reports / "report_plots" / "target-confusion.png").read_bytes() == (
        clone / "plots" / "confusion.png"
    ).read_bytes()
    assert (reports / "report_plots" / "base-confusion.png").read_bytes() == (
        project / "plots" / "confusion.png"
    ).read_bytes()

    # McNemar from the two predictions files, computed here.
    base = _predictions((project / "reports" / "predictions.csv").read_text())
    target = _predictions((clone / "reports" / "predictions.csv").read_text())
    base_only = sum(base[key] and not target[key] for key in base)
    target_only = sum(target[key] and not base[key] for key in base)
    flipped = base_only + target_only
    p_value = binomtest(base_only, flipped, 0.5).pvalue if flipped else 1.0
    assert f"McNemar's exact test, p = {p_value:.4g})" in report
    assert f"{target_only} went wrong → right and {base_only} right → wrong" in report

    # The metric table agrees with `dvc metrics diff`.
    diff = json.loads(_run([DVC, "metrics", "diff", "main", "--json"], clone, env).stdout)
    accuracy = diff["reports/metrics.json"]["test.accuracy"]
    row = next(line for line in table.splitlines() if line.startswith("| test acc"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:] == [
        f"{accuracy['old']:.4f}",
        f"{accuracy['new']:.4f}",
        f"{accuracy['new'] - accuracy['old']:+.4f}",
    ]
