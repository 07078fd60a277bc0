"""Missing stage inputs are fetched with `dvc pull` from a real (local) DVC remote."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_model.errors import MissingInputError
from flower_model.pipeline.fetch import UNREACHABLE_HINT, pull_outs, transfer
from flower_model.pipeline.stage import execute
from pipeline_stages import preprocess
from tests.conftest import REPO_ROOT, copy_pipeline

DVC = str(Path(sys.executable).with_name("dvc"))


def _run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=120)


def _project_with_pushed_photos(tmp_path: Path, mini_dataset: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(mini_dataset, project / "data" / "raw" / "flower_photos")
    shutil.copytree(REPO_ROOT / "configs", project / "configs")
    params = (REPO_ROOT / "params.yaml").read_text().replace("image_size: 224", "image_size: 32")
    (project / "params.yaml").write_text(params)
    _run(["git", "init", "-q"], project)
    _run([DVC, "init", "-q"], project)
    _run([DVC, "remote", "add", "-d", "store", str(tmp_path / "remote")], project)
    _run([DVC, "add", "-q", "data/raw/flower_photos"], project)
    _run([DVC, "push", "-q"], project)
    shutil.rmtree(project / "data" / "raw" / "flower_photos")
    shutil.rmtree(project / ".dvc" / "cache")
    copy_pipeline(project, "preprocess")  # the photos are a `dvc add`ed folder here
    return project


@pytest.mark.slow
def test_pull_outs_restores_a_pushed_out(tmp_path, mini_dataset):
    project = _project_with_pushed_photos(tmp_path, mini_dataset)
    assert pull_outs([Path("data/raw/flower_photos")], project) is None
    some = sorted((mini_dataset / "daisy").glob("*.jpg"))[0]
    assert (
        project / "data" / "raw" / "flower_photos" / "daisy" / some.name
    ).read_bytes() == some.read_bytes()


@pytest.mark.slow
def test_stage_fetches_missing_inputs_before_running(tmp_path, mini_dataset):
    project = _project_with_pushed_photos(tmp_path, mini_dataset)
    execute("preprocess", preprocess.run, [], root=project)
    assert (project / "data" / "processed" / "train_images.npy").is_file()


@pytest.mark.slow
def test_unfetchable_input_is_a_clear_error(tmp_path, capsys):
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    copy_pipeline(tmp_path)
    with pytest.raises(MissingInputError) as raised:
        execute("preprocess", preprocess.run, [], root=tmp_path)
    assert "dvc pull" in str(raised.value) and "data/raw/flower_photos" in str(raised.value)
    assert "dvc pull" in capsys.readouterr().err  # the pull was tried and its failure said


@pytest.mark.slow
@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_a_remote_folder_that_does_not_exist_is_named_with_the_fix(
    tmp_path, mini_dataset, relative
):
    """A fresh clone's default remote is a folder nobody pushed to: DVC itself only says
    `Checkout failed for following targets:.`; we name the remote, its folder and the fix."""
    project = _project_with_pushed_photos(tmp_path, mini_dataset)
    shutil.rmtree(tmp_path / "remote")
    if relative:  # DVC stores it relative to .dvc/ (../../remote) and resolves it from there
        _run([DVC, "remote", "modify", "store", "url", "../remote"], project)
    reason = pull_outs([Path("data/raw/flower_photos")], project)
    assert reason.startswith(f"the DVC remote 'store' is the folder {tmp_path / 'remote'}")
    assert "does not exist" in reason and "dvc remote add -d" in reason
    assert "following targets" not in reason


STALL_S = 5.0  # the pull's bound in these tests (PULL_STALL_S is minutes)
SPEAK_LIMIT_S = 60  # the promise: every wait on an outside service ends or speaks within this


def silent_remote_project(folder: Path, endpoint: str) -> Path:
    """A DVC project with one `dvc add`ed file, not in the cache, and its default remote an S3
    bucket at `endpoint`."""
    folder.mkdir()
    _run(["git", "init", "-q"], folder)
    _run([DVC, "init", "-q"], folder)
    (folder / "photo.txt").write_text("a photo\n")
    _run([DVC, "add", "-q", "photo.txt"], folder)
    (folder / "photo.txt").unlink()
    shutil.rmtree(folder / ".dvc" / "cache")
    _run([DVC, "remote", "add", "-d", "s3", "s3://flower-model/store"], folder)
    _run([DVC, "remote", "modify", "s3", "endpointurl", endpoint], folder)
    return folder


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "silent", "AWS_SECRET_ACCESS_KEY": "silent-secret"}


@pytest.mark.slow
def test_a_pull_from_a_remote_that_never_answers_is_stopped(
    tmp_path, silent_endpoint, monkeypatch, capsys
):
    endpoint, accepted = silent_endpoint
    project = silent_remote_project(tmp_path / "project", endpoint)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = transfer("pull", [], None, project, stall_s=STALL_S)
    elapsed = time.monotonic() - started
    errors = capsys.readouterr().err
    assert accepted, "DVC never reached the server"
    assert code != 0 and STALL_S <= elapsed < SPEAK_LIMIT_S, (code, elapsed, errors)
    assert f"ERROR: no data from the remote for {STALL_S:.0f} s: stopped" in errors, errors
    assert errors.strip().splitlines()[-1] == f"hint: {UNREACHABLE_HINT}", errors
    assert not (project / "photo.txt").exists()
    reason = pull_outs([Path("photo.txt")], project, stall_s=STALL_S)
    assert reason and "timed out" in reason and UNREACHABLE_HINT in reason, reason
