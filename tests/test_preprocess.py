"""Preprocess: bad files counted by reason, byte-stable outputs, sound splits."""

import csv
import hashlib
import json
import os
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flower_model.constants import SPLITS
from flower_model.data.images import ImageDecodeError, decode_image, load_image, resize_image
from flower_model.data.layout import images_path, labels_path
from flower_model.data.preprocess import preprocess_dataset
from tests.conftest import make_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HUGE_SIDE = 100_000
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_90 = 6


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_header_png() -> bytes:
    """A tiny file whose header claims 100,000 x 100,000 pixels (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", HUGE_SIDE, HUGE_SIDE, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0"))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def crafted(tmp_path, mini_dataset) -> Path:
    """Two real classes, salted with every kind of bad and unusual file."""
    root = tmp_path / "flower_photos"
    for name in ("daisy", "tulips"):
        shutil.copytree(mini_dataset / name, root / name)
    daisy, tulips = root / "daisy", root / "tulips"
    good = sorted(daisy.glob("*.jpg"))[-1]  # a plain RGB JPEG (the first ones are odd kinds)
    photo = Image.open(good).convert("RGB")
    (daisy / "zz_truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (daisy / "zz_empty.jpg").write_bytes(b"")
    (daisy / "zz_text.jpg").write_text("this is not a photo\n")
    (daisy / "zz_huge.png").write_bytes(_huge_header_png())
    photo.convert("CMYK").save(daisy / "zz_cmyk.jpg")
    photo.convert("L").save(daisy / "zz_gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(daisy / "zz_alpha.png")
    shutil.copy(good, daisy / "zz_same_as_first.jpg")  # duplicate within the class
    cross = sorted(tulips.glob("*.jpg"))[1]
    shutil.copy(cross, daisy / "zz_cross.jpg")  # the same photo filed under two classes
    return root


def _run(dataset: Path, out: Path, **preprocess) -> dict:
    config = make_config(preprocess=preprocess)
    return preprocess_dataset(
        dataset, out / "processed", out / "reports", out / "plots", config.preprocess, {"k": 1}
    )


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_bad_files_are_counted_by_reason(crafted, tmp_path):
    report = _run(crafted, tmp_path / "out", num_workers=0)
    assert report["dropped"] == {
        "total": 7,
        "empty": 1,
        "truncated": 1,
        "not_an_image": 1,
        "too_large": 1,
        "duplicate": 1,
        "cross_class_duplicate": 2,
    }
    rows = list(csv.DictReader((tmp_path / "out" / "reports" / "dropped.csv").open()))
    reasons = {row["file"]: row["reason"] for row in rows}
    assert reasons["daisy/zz_empty.jpg"] == "empty"
    assert reasons["daisy/zz_truncated.jpg"] == "truncated"
    assert reasons["daisy/zz_text.jpg"] == "not_an_image"
    assert reasons["daisy/zz_huge.png"] == "too_large"
    assert reasons["daisy/zz_same_as_first.jpg"] == "duplicate"
    assert (
        reasons["daisy/zz_cross.jpg"]
        == reasons[f"tulips/{sorted((crafted / 'tulips').glob('*.jpg'))[1].name}"]
    )
    manifest = (tmp_path / "out" / "processed" / "manifest.csv").read_text()
    for converted in ("zz_cmyk.jpg", "zz_gray.png", "zz_alpha.png"):
        assert f"daisy/{converted}" in manifest, f"{converted} should be converted and kept"
    images = np.load(images_path(tmp_path / "out" / "processed", "train"), mmap_mode="r")
    size = make_config().preprocess.image_size
    assert images.dtype == np.uint8 and images.shape[1:] == (size, size, 3)


def test_two_runs_give_identical_bytes(crafted, tmp_path):
    _run(crafted, tmp_path / "one", num_workers=0)
    _run(crafted, tmp_path / "two", num_workers=2)  # worker count must not change a byte
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_split_is_stratified_and_disjoint(mini_dataset, tmp_path):
    report = _run(mini_dataset, tmp_path / "out", val_fraction=0.25, test_fraction=0.25)
    rows = list(csv.DictReader((tmp_path / "out" / "processed" / "manifest.csv").open()))
    files = {split: {row["file"] for row in rows if row["split"] == split} for split in SPLITS}
    assert not files["train"] & files["val"] and not files["train"] & files["test"]
    assert not files["val"] & files["test"]
    per_class = Counter((row["class"], row["split"]) for row in rows)
    classes = json.loads((tmp_path / "out" / "processed" / "classes.json").read_text())
    for name in classes:
        total = sum(per_class[(name, split)] for split in SPLITS)
        assert per_class[(name, "test")] == round(total * 0.25)
        assert per_class[(name, "val")] == round(total * 0.25)
    for split in SPLITS:
        labels = np.load(labels_path(tmp_path / "out" / "processed", split))
        assert len(labels) == report["counts"][split]["total"] == len(files[split])
        assert set(labels.tolist()) == set(range(len(classes)))


def test_split_changes_with_the_seed(mini_dataset, tmp_path):
    _run(mini_dataset, tmp_path / "a", seed=1)
    _run(mini_dataset, tmp_path / "b", seed=2)
    first = (tmp_path / "a" / "processed" / "manifest.csv").read_text()
    second = (tmp_path / "b" / "processed" / "manifest.csv").read_text()
    assert first != second, "a different seed must give a different split"


def test_max_images_per_class_subsets(mini_dataset, tmp_path):
    report = _run(mini_dataset, tmp_path / "out", max_images_per_class=6)
    assert report["files_seen"] == 6 * len(report["classes"])


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATED_90
    Image.new("RGB", (40, 20), (200, 10, 10)).save(path, exif=exif)
    assert decode_image(path, max_pixels=10_000).shape == (40, 20, 3)


def test_resize_modes():
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :20] = 255
    cropped = resize_image(wide, 16, "crop", 0)
    padded = resize_image(wide, 16, "pad", 7)
    assert cropped.shape == padded.shape == (16, 16, 3)
    assert padded[0, 0, 0] == 7 and padded[8, 0, 0] == 255  # letterbox rows, image in the middle
    assert cropped[0, 0, 0] == 255 and cropped[0, -1, 0] == 0  # center crop keeps both halves


def test_load_image_equals_preprocess_arrays(mini_dataset, tmp_path):
    _run(mini_dataset, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "processed" / "manifest.csv").open()))
    row = next(row for row in rows if row["split"] == "test")
    stored = np.load(images_path(tmp_path / "out" / "processed", "test"))[int(row["index"])]
    config = make_config().preprocess
    fresh = load_image(
        mini_dataset / row["file"],
        config.image_size,
        config.resize_mode,
        0,
        config.max_image_pixels,
    )
    assert np.array_equal(stored, fresh)


def test_decode_errors_carry_a_reason(tmp_path):
    path = tmp_path / "nothing.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as error:
        decode_image(path, max_pixels=100)
    assert error.value.reason == "empty"


def _grey_ramp() -> np.ndarray:
    return np.arange(256, dtype=np.uint8).reshape(16, 16)


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [("uint16", ".png"), ("uint16", ".tif"), ("int32", ".tif"), ("float01", ".tif")],
)
def test_deep_images_are_scaled_to_8_bits_like_their_8_bit_twin(tmp_path, kind, suffix):
    from PIL import Image

    from flower_model.data.images import decode_image

    ramp = _grey_ramp()
    twin = tmp_path / "twin.png"
    Image.fromarray(ramp, "L").save(twin)
    deep = tmp_path / f"deep{suffix}"
    if kind == "uint16":
        Image.fromarray(ramp.astype(np.uint16) * 257).save(deep)
    elif kind == "int32":
        Image.fromarray(ramp.astype(np.int32) * 257, "I").save(deep)
    else:
        Image.fromarray(ramp.astype(np.float32) / 255, "F").save(deep)
    decoded = decode_image(deep, max_pixels=10_000)
    assert Image.open(deep).mode not in ("L", "RGB"), "the test file must be a deep mode"
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, decode_image(twin, max_pixels=10_000))


def test_a_class_with_no_readable_photo_is_an_error(mini_dataset, tmp_path):
    from flower_model.errors import FlowerModelError

    dataset = tmp_path / "flower_photos"
    shutil.copytree(mini_dataset, dataset)
    for photo in (dataset / "roses").iterdir():
        photo.write_bytes(b"not a photo")
    with pytest.raises(FlowerModelError) as caught:
        _run(dataset, tmp_path / "out", image_size=32, num_workers=0)
    message = str(caught.value)
    assert message.startswith("class 'roses' has no readable photo (not_an_image ")
    assert str(dataset / "roses") in message
    assert not (tmp_path / "out" / "processed").exists(), "nothing half-written"


def test_a_folder_without_class_folders_is_an_error(tmp_path):
    from flower_model.errors import FlowerModelError

    dataset = tmp_path / "flat"
    dataset.mkdir()
    (dataset / "photo.jpg").write_bytes(b"loose file, no class folder")
    with pytest.raises(FlowerModelError, match="has no class folders: it must hold one folder"):
        _run(dataset, tmp_path / "out", image_size=32, num_workers=0)


NON_UTF8_NAME = b"rose_\xe9t\xe9.jpg"  # Latin-1 bytes: not valid UTF-8


def test_every_skipped_photo_is_in_dropped_csv(mini_dataset, tmp_path):
    dataset = tmp_path / "flower_photos"
    shutil.copytree(mini_dataset, dataset)
    photo = sorted((dataset / "roses").glob("*.jpg"))[0]
    bad_name = os.fsencode(dataset / "roses") + b"/" + NON_UTF8_NAME
    Path(os.fsdecode(bad_name)).write_bytes(photo.read_bytes())
    shutil.copy(photo, dataset / "loose.jpg")  # beside the class folders: no label
    report = _run(dataset, tmp_path / "out", image_size=32, num_workers=0)
    assert report["dropped"]["non_utf8_name"] == 1
    assert report["dropped"]["outside_class_folder"] == 1
    assert report["files_seen"] == report["kept"] + report["dropped"]["total"]
    rows = list(csv.DictReader((tmp_path / "out" / "reports" / "dropped.csv").open()))
    reasons = {row["file"]: row["reason"] for row in rows}
    assert reasons["roses/rose_\\xe9t\\xe9.jpg"] == "non_utf8_name"
    assert reasons["loose.jpg"] == "outside_class_folder"
    manifest = (tmp_path / "out" / "processed" / "manifest.csv").read_text(encoding="utf-8")
    assert "rose_" not in manifest and "loose.jpg" not in manifest


def test_full_disk_is_one_line_and_keeps_the_old_outputs(mini_dataset, tmp_path):
    from flower_model.errors import OutputError
    from tests.helpers.disk import full_disk, leftovers

    with full_disk(tmp_path / "disk", {"processed/manifest.csv": b"old"}) as disk:
        old = disk / "processed"
        with pytest.raises(OutputError) as caught:
            config = make_config(preprocess={"image_size": 32, "num_workers": 0})
            preprocess_dataset(
                mini_dataset, old, disk / "reports", disk / "plots", config.preprocess, {}
            )
        assert str(caught.value) == f"no space left on {old}; free space or choose another path"
        assert (old / "manifest.csv").read_text() == "old"
        assert leftovers(disk, "processed") == []
