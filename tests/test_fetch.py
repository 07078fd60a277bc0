"""Missing stage inputs are fetched with `dvc pull` from a real (local) DVC remote."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flower_model.errors import MissingInputError
from flower_model.pipeline.fetch import pull_outs
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
