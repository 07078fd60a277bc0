"""Memory bounded by design (issue 38): thin and huge photos, and ONNX metadata that would size
an allocation, in infer, preprocess and the Triton image model."""

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image, ImageOps

from flower_model.data.images import (
    DECODE_BUDGET_PIXELS,
    MAX_ASPECT_RATIO,
    RESAMPLE,
    decode_image,
    load_image,
    resize_image,
)
from flower_model.errors import FlowerModelError
from flower_model.serving.infer import OnnxClassifier
from tests.conftest import REPO_ROOT, TINY_SIZE

THIN_SIDE = 20000  # the 1 x 20000 PNG of the issue: 224 x 4.48 M pixels if scaled whole
ADDRESS_SPACE_BYTES = 2_000_000 * 1024  # `ulimit -v 2000000`
PEAK_RSS_LIMIT_KB = 1_000_000  # the goal: peak memory <= 1 GB
SUBPROCESS_TIMEOUT_S = 300


def _reference_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Crop mode as it was before the aspect cap: scale the short side, centre crop."""
    image = Image.fromarray(rgb, "RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    resized = image.resize(new_size, RESAMPLE)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


@pytest.fixture(scope="module")
def thin_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("thin") / "thin.png"
    Image.new("RGB", (1, THIN_SIDE), (10, 200, 30)).save(path, optimize=True)
    assert path.stat().st_size < 1000, "a few hundred bytes, as in the issue"
    return path


class TestOrdinaryPhotosUnchanged:
    @pytest.mark.parametrize("shape", [(240, 320), (333, 500), (500, 375), (100, 400), (224, 224)])
    def test_crop_resize_equals_the_uncapped_rule(self, shape):
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        assert np.array_equal(resize_image(rgb, 224, "crop", 0), _reference_resize(rgb, 224))

    def test_real_photos_decode_at_full_size(self, mini_dataset):
        for photo in sorted(mini_dataset.rglob("*.jpg"))[:5]:
            with Image.open(photo) as image:
                full = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
            assert np.array_equal(decode_image(photo, 40_000_000), full)


class TestExtremeImages:
    def test_thin_strip_keeps_its_centre(self):
        strip = np.zeros((THIN_SIDE, 8, 3), dtype=np.uint8)
        strip[: THIN_SIDE // 2] = 255  # white above the middle, black below
        result = resize_image(strip, 64, "crop", 0)
        assert result.shape == (64, 64, 3)
        assert result[0].min() == 255 and result[-1].max() == 0, "the centre square, as before"
        capped = resize_image(strip[: 2 * MAX_ASPECT_RATIO], 64, "crop", 0)
        assert capped.shape == (64, 64, 3)

    def test_huge_jpeg_is_decoded_reduced(self, tmp_path):
        path = tmp_path / "huge.jpg"
        side = 4200  # 17.6 Mpx: just over the decode budget
        Image.new("RGB", (side, side), (200, 40, 40)).save(path)
        decoded = decode_image(path, 40_000_000)
        assert decoded.shape == (side // 2, side // 2, 3)
        assert decoded.shape[0] * decoded.shape[1] <= DECODE_BUDGET_PIXELS
        assert np.abs(decoded.astype(int) - (200, 40, 40)).max() <= 2

    def test_huge_sixteen_bit_png_is_reduced_after_the_read(self, tmp_path):
        path = tmp_path / "huge16.png"
        Image.new("I;16", (4200, 4200), 257 * 100).save(path)
        decoded = decode_image(path, 40_000_000)
        assert decoded.shape == (2100, 2100, 3) and decoded.max() == decoded.min() == 100


def _run_limited(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh Python under `ulimit -v 2000000`, reporting its peak RSS last."""
    script = code + "\nimport resource\nprint('peak_kb', resource.getrusage(0).ru_maxrss)\n"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES)
        ),
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": str(Path(sys.executable).parent)},
    )


def _peak_kb(result: subprocess.CompletedProcess) -> int:
    assert "MemoryError" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    return int(result.stdout.strip().splitlines()[-1].split()[1])


# The Triton python stub's utilities exist only inside tritonserver: a labelled stand-in with
# the one call `decode` makes, so the model's own decode runs here under the limit.
STUB_STAND_IN = """
import sys, types, numpy as np
class _Tensor:
    def __init__(self, array): self.array = array
    def as_numpy(self): return self.array
stub = types.ModuleType("triton_python_backend_utils")
stub.get_input_tensor_by_name = lambda request, name: _Tensor(request[name])
sys.modules["triton_python_backend_utils"] = stub
"""


@pytest.mark.slow
class TestUnderAddressSpaceLimit:
    def test_infer_on_the_thin_png(self, thin_png, tiny_onnx, tmp_path):
        code = (
            "from flower_model.commands import main\n"
            "try:\n"
            f"    main(['infer', {str(thin_png)!r}, '--model', {str(tiny_onnx)!r}])\n"
            "except SystemExit as stop:\n"
            "    print('exit', stop.code)\n"
        )
        result = _run_limited(code, tmp_path)
        assert _peak_kb(result) <= PEAK_RSS_LIMIT_KB
        rows = result.stdout.splitlines()
        assert rows[0].startswith("path,predicted") and rows[1].startswith(str(thin_png))
        assert "exit 0" in result.stdout

    def test_preprocess_decode_of_the_thin_png(self, thin_png):
        code = (
            "from pathlib import Path\n"
            "from flower_model.data.preprocess import _decode\n"
            "from tests.conftest import make_config\n"
            "decoded = _decode((Path(%r), %r, 0, make_config().preprocess))\n"
            "print('shape', decoded.image.shape, repr(decoded.reason))\n"
        ) % (str(thin_png.parent), thin_png.name)
        result = _run_limited(code, REPO_ROOT)
        assert _peak_kb(result) <= PEAK_RSS_LIMIT_KB
        assert "shape (224, 224, 3) ''" in result.stdout

    def test_triton_image_model_decode_of_the_thin_png(self, thin_png, tiny_onnx):
        code = STUB_STAND_IN + textwrap.dedent(f"""
            from flower_model.serving.contract import FILES, read_metadata
            from flower_model.serving.triton_models.image import TritonPythonModel
            parameters = {{key: {{"string_value": value}} for key, value in
                          read_metadata(__import__("pathlib").Path({str(tiny_onnx)!r})).items()}}
            parameters["classifier"] = {{"string_value": "flower_classifier"}}
            model = TritonPythonModel()
            model.initialize({{"model_config": __import__("json").dumps(
                {{"parameters": parameters}})}})
            files = np.array([[open({str(thin_png)!r}, "rb").read()]], dtype=object)
            print("shape", model.decode({{FILES: files}}).shape)
            """)
        result = _run_limited(code, REPO_ROOT)
        assert _peak_kb(result) <= PEAK_RSS_LIMIT_KB
        assert f"shape (1, {TINY_SIZE}, {TINY_SIZE}, 3)" in result.stdout


def _with_metadata(source: Path, target: Path, **changes: str) -> Path:
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in changes:
            entry.value = changes[entry.key]
    onnx.save(model, str(target))
    return target


BAD_METADATA = {
    "huge size": ({"image_size": "100000"}, "image_size=100000 is outside 16..1024"),
    "zero size": ({"image_size": "0"}, "image_size=0 is outside 16..1024"),
    "text size": ({"image_size": "abc"}, "image_size='abc' is not a whole number"),
    "bad json": ({"class_names": "[daisy"}, "class_names is not JSON"),
    "unknown mode": ({"resize_mode": "stretch"}, "resize_mode='stretch' is not one of"),
    "pixels": ({"max_image_pixels": "10**12"}, "max_image_pixels='10**12' is not a whole"),
    "class count": ({"class_names": json.dumps(["a", "b"])}, "names 2 classes but the model"),
}


class TestModelMetadataRangeChecked:
    @pytest.mark.parametrize("case", sorted(BAD_METADATA))
    def test_infer_refuses_in_one_line(self, case, tiny_onnx, tmp_path):
        changes, reason = BAD_METADATA[case]
        model = _with_metadata(tiny_onnx, tmp_path / "model.onnx", **changes)
        with pytest.raises(FlowerModelError) as caught:
            OnnxClassifier(model)
        message = str(caught.value)
        assert reason in message and str(model) in message and "\n" not in message
        assert "export_onnx" in message, "the fix is named"

    @pytest.mark.parametrize("case", ["huge size", "class count"])
    def test_serve_repository_refuses_before_writing(self, case, tiny_onnx, tmp_path):
        from flower_model.serving.model_repository import write_repository
        from tests.conftest import make_config

        changes, reason = BAD_METADATA[case]
        model = _with_metadata(tiny_onnx, tmp_path / "model.onnx", **changes)
        with pytest.raises(FlowerModelError, match=reason):
            write_repository(tmp_path / "repo", model, make_config().serve, "python")
        assert not (tmp_path / "repo").exists()

    def test_load_image_never_sees_an_unchecked_size(self, tiny_onnx, thin_png):
        """The checked metadata is what sizes the array: the thin PNG comes out square."""
        info = OnnxClassifier(tiny_onnx).info
        assert load_image(thin_png, *info.image_settings).shape[:2] == (info.image_size,) * 2
