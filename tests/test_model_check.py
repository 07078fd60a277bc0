"""Models checked before use (issue 38): a DVC out of the project must hold the bytes dvc.lock
(or the last hand run of its stage) records; infer, serve and evaluate refuse others in one line.
A user's own model outside the project's outs is only checked to load."""

import shutil

import pytest
import yaml

from flower_model.errors import FlowerModelError
from flower_model.pipeline.model_check import (
    DamagedModelError,
    file_md5,
    record_hand_run,
    verify_out,
)
from tests.helpers.cli import run_in_process

MODEL = "models/model.onnx"


def _flip_bytes(path, offset_fraction: float = 0.5, count: int = 16) -> None:
    """Flip bytes inside the weights (the middle of the file): ONNX Runtime still loads it."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    for index in range(start, start + count):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def dvc_project(project, tiny_onnx):
    """The project with models/model.onnx as export_onnx's out, recorded in dvc.lock."""
    models = project / "models"
    models.mkdir()
    shutil.copy(tiny_onnx, models / "model.onnx")
    (project / ".dvc").mkdir()
    outs = [{"path": MODEL, "hash": "md5", "md5": file_md5(models / "model.onnx"), "size": 1}]
    lock = {"schema": "2.0", "stages": {"export_onnx": {"cmd": "x", "outs": outs}}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    return project


@pytest.fixture
def photo(dvc_project, mini_dataset):
    target = dvc_project / "photos" / "daisy.jpg"
    target.parent.mkdir()
    shutil.copy(sorted((mini_dataset / "daisy").glob("*.jpg"))[0], target)
    return target


class TestDvcOutsChecked:
    def test_an_intact_out_is_used(self, dvc_project, photo):
        code, out, err = run_in_process(dvc_project, "infer", str(photo))
        assert code == 0 and out.startswith("path,predicted"), err

    @pytest.mark.parametrize("command", ["infer", "serve"])
    def test_flipped_bytes_are_refused_in_one_line(self, dvc_project, photo, command):
        _flip_bytes(dvc_project / MODEL)
        arguments = [str(photo)] if command == "infer" else ["serve.http_port=1"]
        code, out, err = run_in_process(dvc_project, command, *arguments)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"error: {MODEL} is damaged")
        assert f"dvc checkout {MODEL}" in lines[0] and f"dvc pull {MODEL}" in lines[0]
        assert "dvc repro export_onnx" in lines[0]
        assert out == "", "nothing classified with a damaged model"

    def test_evaluate_refuses_a_damaged_checkpoint_before_any_work(self, dvc_project, tiny_onnx):
        from flower_model.evaluation.evaluate import evaluate
        from tests.conftest import make_config

        checkpoint = dvc_project / "models" / "model.ckpt"
        checkpoint.write_bytes(b"a checkpoint")
        lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())
        outs = [{"path": "models/model.ckpt", "md5": file_md5(checkpoint)}]
        lock["stages"]["train"] = {"cmd": "x", "outs": outs}
        (dvc_project / "dvc.lock").write_text(yaml.safe_dump(lock))
        checkpoint.write_bytes(b"a checkpoinT")
        with pytest.raises(DamagedModelError, match="dvc repro train"):
            evaluate(make_config(), dvc_project)  # no processed data: refused before reading it

    def test_a_hand_run_stage_records_what_it_wrote(self, dvc_project):
        model = dvc_project / MODEL
        _flip_bytes(model)  # as a new export written by `flower-model export_onnx`
        with pytest.raises(DamagedModelError):
            verify_out(model, dvc_project)
        record_hand_run([model], dvc_project)
        verify_out(model, dvc_project)
        _flip_bytes(model, 0.3)  # damaged after the hand run: refused again
        with pytest.raises(DamagedModelError):
            verify_out(model, dvc_project)

    def test_an_unreadable_lock_skips_the_check(self, dvc_project):
        (dvc_project / "dvc.lock").write_text("stages: [unclosed")
        _flip_bytes(dvc_project / MODEL)
        verify_out(dvc_project / MODEL, dvc_project)


class TestOwnModels:
    def test_a_model_outside_the_outs_is_only_checked_to_load(self, dvc_project, photo):
        own = dvc_project / "other.onnx"
        shutil.copy(dvc_project / MODEL, own)
        code, out, err = run_in_process(dvc_project, "infer", str(photo), "--model", str(own))
        assert code == 0 and out.startswith("path,predicted"), err
        own.write_bytes(own.read_bytes()[:2000])
        with pytest.raises(FlowerModelError, match="is not a usable flower-model ONNX model"):
            from flower_model.serving.infer import OnnxClassifier

            OnnxClassifier(own)
