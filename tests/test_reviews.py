"""Label reviews: read strictly before any work, applied after the split so no photo moves
between splits; test photos keep their original labels beside the reviewed ones."""

import csv
import json

import numpy as np
import pytest

from flower_model.data.layout import read_manifest_files, reviewed_labels_path
from flower_model.data.preprocess import preprocess_dataset
from flower_model.data.reviews import EXCLUDED_LABEL, read_reviews
from flower_model.errors import FlowerModelError
from tests.conftest import CLASS_NAMES, TINY_SIZE, make_config

HEADER = "file,decision,note\n"
FILES = ("daisy/a.jpg", "roses/b.jpg")


def _reviews(tmp_path, text: str, raw: bytes | None = None):
    dataset = tmp_path / "photos"
    for file in FILES:
        (dataset / file).parent.mkdir(parents=True, exist_ok=True)
        (dataset / file).write_bytes(b"a photo")
    path = tmp_path / "label_reviews.csv"
    path.write_bytes(raw if raw is not None else text.encode())
    return read_reviews(path, list(CLASS_NAMES), dataset)


class TestReading:
    def test_the_three_decisions(self, tmp_path):
        reviews = _reviews(
            tmp_path,
            HEADER + "daisy/a.jpg,relabel:roses,a rose\nroses/b.jpg,exclude,a limousine\n",
        )
        assert reviews["daisy/a.jpg"].label == CLASS_NAMES.index("roses")
        assert reviews["roses/b.jpg"].decision == "exclude"
        assert _reviews(tmp_path, HEADER + "daisy/a.jpg,keep,right\n")["daisy/a.jpg"].label is None

    def test_a_bom_and_windows_line_ends_work(self, tmp_path):
        text = (HEADER + "daisy/a.jpg,exclude,not a flower\n").replace("\n", "\r\n")
        reviews = _reviews(tmp_path, "", raw=b"\xef\xbb\xbf" + text.encode())
        assert list(reviews) == ["daisy/a.jpg"] and reviews["daisy/a.jpg"].note == "not a flower"

    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            ("daisy/missing.jpg,exclude,x", "no photo 'daisy/missing.jpg'"),
            ("daisy/a.jpg,relabel:orchids,x", "decision 'relabel:orchids' is not"),
            ("daisy/a.jpg,delete,x", "decision 'delete' is not"),
            ("daisy/a.jpg,exclude", "needs 3 fields"),
            ("daisy/a.jpg,exclude,x\ndaisy/a.jpg,keep,y", "reviewed twice"),
        ],
    )
    def test_a_bad_line_is_one_line_naming_file_and_line(self, tmp_path, line, expected):
        with pytest.raises(FlowerModelError, match=f"label_reviews.csv:2.*{expected}|{expected}"):
            _reviews(tmp_path, HEADER + line + "\n")

    def test_no_file_means_no_reviews_and_a_bad_header_is_one_line(self, tmp_path):
        assert read_reviews(tmp_path / "none.csv", list(CLASS_NAMES), tmp_path) == {}
        with pytest.raises(FlowerModelError, match="first line must be file,decision,note"):
            _reviews(tmp_path, "name,what\n")


@pytest.mark.slow
def test_reviews_change_train_and_val_but_never_the_split_or_the_test_headline(
    tmp_path, mini_dataset
):
    config = make_config(
        preprocess={"image_size": TINY_SIZE, "num_workers": 0, "reviews_in_training": True}
    ).preprocess

    def preprocess(name: str, reviews_text: str | None):
        root = tmp_path / name
        reviews = None
        if reviews_text is not None:
            reviews = root / "label_reviews.csv"
            reviews.parent.mkdir(parents=True)
            reviews.write_text(reviews_text)
        preprocess_dataset(
            mini_dataset, root / "processed", root / "reports", root / "plots", config, {}, reviews
        )
        return root

    before = preprocess("before", None)
    split_of = {
        file: split
        for split in ("train", "val", "test")
        for file in read_manifest_files(before / "processed", split)
    }
    train, val, test = (
        read_manifest_files(before / "processed", split)[:2] for split in ("train", "val", "test")
    )
    lines = [
        f"{train[0]},relabel:tulips,looks like a tulip",
        f"{train[1]},exclude,not a flower",
        f"{val[0]},keep,label is right",
        f"{test[0]},relabel:tulips,a tulip",
        f"{test[1]},exclude,a limousine",
    ]
    after = preprocess("after", HEADER + "\n".join(lines) + "\n")
    for split in ("train", "val", "test"):  # no photo changed split; only the exclusion left
        files = read_manifest_files(after / "processed", split)
        assert all(split_of[file] == split for file in files)
    assert train[1] not in read_manifest_files(after / "processed", "train")
    manifest = {
        row["file"]: row for row in csv.DictReader((after / "processed/manifest.csv").open())
    }
    assert manifest[train[0]]["class"] == "tulips"
    tulips = CLASS_NAMES.index("tulips")
    test_files = read_manifest_files(after / "processed", "test")
    original = np.load(after / "processed" / "test_labels.npy")
    assert np.array_equal(original, np.load(before / "processed" / "test_labels.npy"))
    reviewed = np.load(reviewed_labels_path(after / "processed"))
    changed = {test_files[i]: int(reviewed[i]) for i in np.flatnonzero(reviewed != original)}
    assert changed == {test[0]: tulips, test[1]: EXCLUDED_LABEL}
    applied = list(csv.DictReader((after / "reports" / "reviews.csv").open()))
    assert {row["file"]: row["decision"] for row in applied} == {
        line.split(",")[0]: line.split(",")[1] for line in lines
    }
    dropped = {row["file"]: row for row in csv.DictReader((after / "reports/dropped.csv").open())}
    assert dropped[train[1]]["reason"] == "review_exclude"
    assert dropped[train[1]]["detail"] == "not a flower"
    report = json.loads((after / "reports" / "data.json").read_text())
    assert report["kept"] == json.loads((before / "reports/data.json").read_text())["kept"] - 1


def test_reviewed_accuracy_leaves_excluded_photos_out_and_counts_the_changes():
    from flower_model.evaluation.evaluate import reviewed_accuracy

    predictions = np.array([0, 1, 2, 3])
    labels = np.array([0, 1, 1, 0])  # the original labels: 2 of 4 right
    reviewed = np.array([0, 1, 2, EXCLUDED_LABEL])  # photo 2 relabelled, photo 3 excluded
    assert reviewed_accuracy(predictions, labels, reviewed) == {
        "accuracy": 1.0,
        "photos": 3,
        "reviewed": 2,
        "excluded": 1,
    }


@pytest.mark.parametrize("in_training", [False, True])
def test_train_and_val_reviews_apply_only_when_switched_on(in_training):
    from flower_model.data.preprocess import Decoded
    from flower_model.data.reviews import Review, apply_reviews

    splits = {
        "train": [Decoded("daisy/a.jpg", 0), Decoded("daisy/b.jpg", 0)],
        "val": [Decoded("roses/c.jpg", 2)],
        "test": [Decoded("roses/d.jpg", 2), Decoded("roses/e.jpg", 2)],
    }
    reviews = {
        "daisy/a.jpg": Review("daisy/a.jpg", "relabel:roses", "a rose", 2),
        "daisy/b.jpg": Review("daisy/b.jpg", "exclude", "a teacup", None),
        "roses/d.jpg": Review("roses/d.jpg", "exclude", "a shop sign", None),
    }
    after, test_labels, applied, excluded = apply_reviews(splits, reviews, in_training)
    assert test_labels == [EXCLUDED_LABEL, 2]  # test: reported whatever the switch
    assert [item.label for item in after["test"]] == [2, 2]  # ...never in the headline's labels
    if in_training:
        assert [(item.file, item.label) for item in after["train"]] == [("daisy/a.jpg", 2)]
        assert [item.reason for item in excluded] == ["review_exclude"]
        assert len(applied) == 3
    else:
        assert after["train"] == splits["train"] and excluded == []
        assert [item.file for _, item, _ in applied] == ["roses/d.jpg"]
