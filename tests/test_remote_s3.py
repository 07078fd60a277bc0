"""The `s3` DVC remote (dvc-s3) against a real S3 server: SeaweedFS `weed mini` on loopback.

A small project runs the real download and preprocess stages on photos cut from the mirror,
pushes to S3, loses its cache and outs, and gets them back; a down or denying remote gives
DVC's error plus our hint and leaves the workspace as it was.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flower_model.pipeline.fetch import DENIED_HINT, UNREACHABLE_HINT, pull_outs
from tests.conftest import REPO_ROOT, TINY_SIZE, copy_reviews_folder

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
OUTS = ("data/raw/flower_photos", "data/processed")


def _env(project: Path, credentials: dict) -> dict:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, **credentials, "PATH": path, "PYTHONPATH": str(project)}


def _dvc(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [DVC, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _snapshot(project: Path) -> dict[str, dict[str, str]]:
    return {out: _tree_digest(project / out) for out in OUTS}


def _wipe(project: Path) -> None:
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)
    for out in OUTS:
        shutil.rmtree(project / out)


@pytest.fixture
def s3_project(tmp_path, s3_server, mini_tarball):
    """The real pipeline code and DVC config on the mini dataset at 32 px, with download and
    preprocess run and pushed to the committed `s3` remote (endpoint pointed at the fixture)."""
    endpoint, credentials, _ = s3_server
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache", "config.local")
    for name in ("configs", "pipeline_stages", "flower_model", ".dvc"):
        shutil.copytree(REPO_ROOT / name, project / name, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, project / name)
    copy_reviews_folder(project)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    digest = hashlib.sha256(mini_tarball.read_bytes()).hexdigest()
    params["data"]["sources"] = [{"name": "mini", "url": str(mini_tarball), "sha256": digest}]
    params["preprocess"].update(image_size=TINY_SIZE, num_workers=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(project, credentials)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, env, "remote", "modify", "--local", "s3", "endpointurl", endpoint)
    _dvc(project, env, "remote", "default", "--local", "s3")  # `dvc repro --pull` has no -r
    _dvc(project, env, "repro", "preprocess")
    _dvc(project, env, "push", "--with-deps", "-r", "s3", "preprocess")
    return project, env


def test_push_wipe_pull_gives_identical_outs(s3_project):
    project, env = s3_project
    before = _snapshot(project)
    lock_before = (project / "dvc.lock").read_text()
    _wipe(project)
    _dvc(project, env, "pull", "--with-deps", "-r", "s3", "preprocess")
    assert _snapshot(project) == before
    assert (project / "dvc.lock").read_text() == lock_before


def test_repro_pull_allow_missing_restores_instead_of_recomputing(s3_project):
    """A fresh machine with a changed preprocess param: download is unchanged, so its outs come
    from the remote (not a re-download) and only preprocess runs."""
    project, env = s3_project
    raw_before = _tree_digest(project / "data" / "raw")
    _wipe(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["preprocess"]["val_fraction"] = 0.2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _dvc(project, env, "repro", "--pull", "--allow-missing", "preprocess")
    output = result.stdout + result.stderr
    assert "Running stage 'download'" not in output, output
    assert "Running stage 'preprocess'" in output, output
    assert _tree_digest(project / "data" / "raw") == raw_before


def test_denied_and_down_remote_give_dvcs_error_our_hint_and_lose_nothing(
    s3_project, s3_server, monkeypatch
):
    project, env = s3_project
    _, credentials, stop = s3_server
    shutil.rmtree(project / "data" / "processed")
    shutil.rmtree(project / ".dvc" / "cache")
    kept = _tree_digest(project / "data" / "raw")
    params = (project / "params.yaml").read_bytes()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + credentials["AWS_SECRET_ACCESS_KEY"])
    denied = pull_outs([Path("data/processed")], project, remote="s3")
    assert denied is not None and "Forbidden" in denied and DENIED_HINT in denied

    cli = subprocess.run(
        [str(Path(sys.executable).with_name("flower-model")), "pull", "data/processed"]
        + ["--remote", "s3"],
        cwd=project,
        env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode != 0
    assert "ERROR" in cli.stderr and f"hint: {DENIED_HINT}" in cli.stderr

    stop()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials["AWS_SECRET_ACCESS_KEY"])
    down = pull_outs([Path("data/processed")], project, remote="s3")
    assert down is not None and UNREACHABLE_HINT in down

    assert not (project / "data" / "processed").exists()
    assert _tree_digest(project / "data" / "raw") == kept
    assert (project / "params.yaml").read_bytes() == params
