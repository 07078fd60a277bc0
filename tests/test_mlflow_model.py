"""The registered MLflow model as its users load it: a real MLflow server, the tiny exported model
registered by `register_onnx_model`, and `mlflow.pyfunc.load_model(...).predict(...)` in a fresh
Python process on full-size photo files, compared with what `infer` answers for the same files."""

import ast
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from flower_model.evaluation.tracking import CLASS_NAMES_TAG, MODEL_DIGEST_TAG
from tests.conftest import CLASS_NAMES, REPO_ROOT, make_config
from tests.test_evaluate import resave_onnx

MODEL_NAME = "flower_classifier_pyfunc_test"  # its own name: other tests register too
FULL_SIZE = (3024, 4032)  # a phone photo, width x height
PNG_SIZE = (517, 389)  # another size and format
LOAD_TIMEOUT_S = 300
# The README's three lines (its python block), then one line reporting where the flower_model
# code came from.
README_LINES = re.search(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)[1]
ORIGIN_LINE = 'import sys; print(sys.modules["flower_model"].__file__)\n'


def _photo(path, size, seed: int) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    picture = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    picture.save(path)  # the format from the suffix


def _project(folder, tiny_processed, onnx, run_id: str):
    shutil.copytree(tiny_processed / "data", folder / "data")
    (folder / "models").mkdir()
    shutil.copy(onnx, folder / "models" / "model.onnx")
    (folder / "models" / "train_run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    return folder


@contextlib.contextmanager
def tracking_at(uri: str):
    """MLflow's process-wide tracking URI set to `uri` for the block, then put back."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_processed, tiny_onnx, mlflow_server):
    """The tiny model registered once under MODEL_NAME; (project root, config, client, aliases)."""
    import mlflow

    from flower_model.evaluation.tracking import register_onnx_model

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("flower-model") or client.get_experiment(
        client.create_experiment("flower-model")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    root = _project(tmp_path_factory.mktemp("pyfunc"), tiny_processed, tiny_onnx, run_id)
    config = make_config(
        [f"mlflow.tracking_uri={mlflow_server}", f"mlflow.registered_model_name={MODEL_NAME}"]
    )
    with tracking_at(mlflow.get_tracking_uri()):  # register_onnx_model sets the process's URI
        aliases = register_onnx_model(config, root, 0.5)
    return root, config, client, aliases


@pytest.mark.slow
def test_the_registered_model_carries_signature_example_and_class_names(registered, mlflow_server):
    from mlflow.models import get_model_info

    _, _, client, aliases = registered
    assert aliases == {"latest": "1", "best": "1"}
    version = client.get_model_version(MODEL_NAME, "1")
    assert json.loads(version.tags[CLASS_NAMES_TAG]) == CLASS_NAMES
    with tracking_at(mlflow_server):
        info = get_model_info(f"models:/{MODEL_NAME}@best")
    assert info.signature.inputs.to_dict() == [{"type": "binary", "required": True}]
    assert info.signature.outputs.to_dict() == [{"type": "string", "required": True}]
    assert info.metadata["class_names"] == CLASS_NAMES
    assert info.saved_input_example_info["type"] == "json_object"
    assert "onnx" not in info.flavors, "the pyfunc runs ONNX Runtime on the CPU itself"


@pytest.mark.slow
def test_three_lines_predict_class_names_for_full_size_photos(
    registered, tiny_onnx, mlflow_server, tmp_path
):
    """A fresh Python process (not this checkout's path: the model carries its code) loads
    `models:/<name>@best` and names full-size photos like `infer` does, with no warning."""
    from flower_model.serving.infer import OnnxClassifier, classify

    paths = [tmp_path / "photo.jpg", tmp_path / "small.png"]
    _photo(paths[0], FULL_SIZE, 1)
    _photo(paths[1], PNG_SIZE, 2)
    lines = README_LINES.replace("flower_classifier@best", f"{MODEL_NAME}@best")
    assert len(lines.splitlines()) == 3 and '"photo.jpg"' in lines, "three lines a user types"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    env["TMPDIR"] = str(tmp_path)  # load_model downloads the model into a temporary folder
    answers = []
    for path in paths:
        result = subprocess.run(
            [sys.executable, "-c", lines.replace("photo.jpg", path.name) + ORIGIN_LINE],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr
        printed, package = result.stdout.splitlines()[-2:]
        answers += ast.literal_eval(printed)
        assert "/code/flower_model/" in package, f"flower_model came from {package}, not the model"
        assert "CUDAExecutionProvider" not in result.stderr, result.stderr
        assert "WARNING" not in result.stderr and "Warning" not in result.stderr, result.stderr
    expected = [item.predicted for item in classify(paths, OnnxClassifier(tiny_onnx), top_k=1)]
    assert answers == expected and set(answers) <= set(CLASS_NAMES)


@pytest.mark.slow
def test_a_file_that_is_no_photo_is_named_in_the_error(registered, mlflow_server, tmp_path):
    import mlflow

    _photo(tmp_path / "fine.png", PNG_SIZE, 3)
    with tracking_at(mlflow_server):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@best", dst_path=tmp_path)
    assert model.predict([(tmp_path / "fine.png").read_bytes()])[0] in CLASS_NAMES
    with pytest.raises(ValueError, match=r"^photo 2 of 2: not_an_image: "):
        model.predict([(tmp_path / "fine.png").read_bytes(), b"plain text"])


@pytest.mark.slow
def test_identical_bytes_keep_their_version_and_new_bytes_add_one(
    registered, tiny_onnx, tmp_path, capsys
):
    """A retrain that gave the same bytes registers nothing new (tag onnx_sha256); other bytes
    are a new version."""
    import mlflow

    from flower_model.evaluation.tracking import register_onnx_model

    root, config, client, _ = registered
    with tracking_at(mlflow.get_tracking_uri()):
        again = register_onnx_model(config, root, 0.5)
        said = capsys.readouterr().out
        other = tmp_path / "other"
        shutil.copytree(root, other)
        resave_onnx(tiny_onnx, other / "models" / "model.onnx", "another training run")
        changed = register_onnx_model(config, other, 0.6)
    assert again == {"latest": "1", "best": "1"}
    assert f"already {MODEL_NAME} version 1" in said, said
    assert changed == {"latest": "2", "best": "2"}
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    digests = {item.version: item.tags[MODEL_DIGEST_TAG] for item in versions}
    assert sorted(digests) == ["1", "2"] and digests["1"] != digests["2"]
