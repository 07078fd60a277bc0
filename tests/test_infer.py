"""`flower-model infer`: mixed good and bad files, output formats, minimal imports, same arrays."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from flower_model.data.layout import images_path
from flower_model.errors import OutputError
from flower_model.serving.infer import OnnxClassifier, classify, expand_paths, run_infer
from tests.conftest import REPO_ROOT
from tests.helpers.cli import run_in_process
from tests.helpers.disk import full_disk, leftovers


@pytest.fixture
def photo_folder(tmp_path, mini_dataset):
    folder = tmp_path / "photos"
    nested = folder / "nested"
    nested.mkdir(parents=True)
    good = sorted((mini_dataset / "roses").glob("*.jpg"))[:3]
    for photo in good:
        shutil.copy(photo, folder / photo.name)
    from PIL import Image

    Image.open(good[0]).convert("RGBA").save(nested / "with_alpha.png")
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "cut.jpg").write_bytes(good[1].read_bytes()[:500])
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    return folder


def test_mixed_folder_rows_and_reasons(photo_folder, tiny_onnx, tmp_path, capsys):
    output = tmp_path / "out" / "predictions.csv"
    code = run_infer([str(photo_folder)], tiny_onnx, output, top_k=3)
    assert code == 1, "a failed photo must show in the exit code"
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(output.open())}
    assert set(rows) == {*(p.name for p in photo_folder.glob("*.jpg")), "with_alpha.png"}
    assert rows["notes.jpg"]["error"].startswith("not_an_image")
    assert rows["cut.jpg"]["error"].startswith(("truncated", "corrupt"))
    good = [row for row in rows.values() if not row["error"]]
    assert len(good) == 4
    for row in good:
        ranked = row["top_k"].split(";")
        assert len(ranked) == 3 and ranked[0].split(":")[0] == row["predicted"]
    printed = capsys.readouterr()
    assert "notes.jpg" in printed.err
    assert f"wrote {output}: 4 predicted, 2 failed (of 6 files)" in printed.out, "counts add up"


def test_json_output_and_globs(photo_folder, tiny_onnx, tmp_path):
    output = tmp_path / "predictions.json"
    code = run_infer([str(photo_folder / "*.jpg")], tiny_onnx, output, top_k=2)
    assert code == 1
    results = json.loads(output.read_text())
    assert len(results) == 5 and all(
        len(item["top_k"]) == 2 for item in results if not item["error"]
    )


def test_predictions_equal_the_model_on_preprocessed_arrays(
    tiny_onnx, tiny_processed, mini_dataset
):
    classifier = OnnxClassifier(tiny_onnx)
    processed = tiny_processed / "data" / "processed"
    rows = [
        row for row in csv.DictReader((processed / "manifest.csv").open()) if row["split"] == "val"
    ]
    arrays = np.load(images_path(processed, "val"))
    for row in rows[:5]:
        assert np.array_equal(
            classifier.load(mini_dataset / row["file"]), arrays[int(row["index"])]
        )
    results = classify([mini_dataset / row["file"] for row in rows[:5]], classifier, top_k=1)
    expected = classifier.probs(arrays[[int(row["index"]) for row in rows[:5]]])
    for result, probs in zip(results, expected):
        assert result.probability == round(float(probs.max()), 6)
        assert result.predicted == classifier.class_names[int(probs.argmax())]


def test_infer_imports_no_heavy_dependencies(photo_folder, tiny_onnx):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from flower_model.serving.infer import run_infer\n"
        f"run_infer([{str(photo_folder)!r}], Path({str(tiny_onnx)!r}), None, 3)\n"
        "names = ('torch', 'lightning', 'mlflow', 'dvc', 'torchvision')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_expand_paths_reports_missing_inputs(tmp_path):
    missing = tmp_path / "nope.jpg"
    assert expand_paths([str(missing)]) == [missing]


@pytest.mark.parametrize("command", ["infer", "serve", "triton-repo"])
@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_damaged_model_is_a_one_line_error(tmp_path, photo_folder, tiny_onnx, command, damage):
    model = tmp_path / "model.onnx"
    whole = tiny_onnx.read_bytes()
    model.write_bytes({"garbage": b"not a model", "empty": b"", "truncated": whole[:2000]}[damage])
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    arguments = {
        "infer": [str(photo_folder)],
        "serve": ["serve.http_port=1"],  # never reached: the model is refused first
        "triton-repo": [str(tmp_path / "repository")],
    }[command]
    result = subprocess.run(
        [sys.executable, "-m", "flower_model.commands", command, *arguments, f"--model={model}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model} is not a usable"), lines
    assert "dvc repro export_onnx" in lines[0]
    assert not (tmp_path / "repository").exists(), "nothing half-written"


def test_session_settings_reach_onnx_runtime_and_keep_the_predictions(tiny_onnx, tiny_processed):
    """serve.ort_threads / serve.ort_spinning: the settings the stub's session is opened with."""
    arrays = np.load(images_path(tiny_processed / "data" / "processed", "val"))[:4]
    default = OnnxClassifier(tiny_onnx)
    tuned = OnnxClassifier(tiny_onnx, spinning=False, threads=1)
    options = tuned.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert default.session.get_session_options().intra_op_num_threads == 0
    assert np.allclose(tuned.probs(arrays), default.probs(arrays), atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_full_disk_output_is_one_line_and_leaves_nothing_partial(
    photo_folder, tiny_onnx, tmp_path, suffix
):
    name = f"pred{suffix}"
    with full_disk(tmp_path / "disk", {name: b"old predictions"}) as disk:
        with pytest.raises(OutputError) as caught:
            run_infer([str(photo_folder)] * 40, tiny_onnx, disk / name, top_k=3)
        assert str(caught.value) == (
            f"no space left on {disk / name}; free space or choose another path"
        )
        assert (disk / name).read_bytes() == b"old predictions"
        assert leftovers(disk, name) == []  # no .pred.csv.tmp / .pred.json.tmp
        # As users type it: one line on stderr, no traceback, a non-zero exit.
        flags = ["--model", str(tiny_onnx), "--output", str(disk / name)]
        code, _, stderr = run_in_process(tmp_path, "infer", str(photo_folder), *flags)
        assert code != 0 and stderr.strip().splitlines() == [f"error: {caught.value}"], stderr
        assert leftovers(disk, name) == []


def test_top_k_above_the_number_of_classes_is_one_line(tiny_onnx, photo_folder):
    """`--top-k 99` was silently cut to the number of classes."""
    from flower_model.errors import FlowerModelError

    with pytest.raises(FlowerModelError, match=r"--top-k must be 1 to \d+ \(the model's classes\)"):
        run_infer([str(photo_folder)], tiny_onnx, None, top_k=99)
