"""Label issues: cross-validated probabilities and cleanlab find the labels that disagree with
the data; the two stages write the report, the counts and the gallery."""

import csv
import json
import shutil

import numpy as np
import pytest

from flower_model.evaluation import label_issues as issues
from tests.conftest import CLASS_NAMES, make_config
from tests.helpers.cli import run_in_process

CLUSTER_PHOTOS = 60  # per class
FEATURE_DIMS = 16
CLUSTER_SPREAD = 0.6  # within-class spread against centres ~N(0, 3): classes barely touch
FLIPPED = 12  # labels moved to another class on purpose


def _clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels with FLIPPED of them wrong, the rows that were flipped)."""
    rng = np.random.default_rng(seed)
    count = len(CLASS_NAMES)
    centres = rng.normal(0, 3, size=(count, FEATURE_DIMS))
    truth = np.repeat(np.arange(count), CLUSTER_PHOTOS)
    features = centres[truth] + rng.normal(0, CLUSTER_SPREAD, size=(truth.size, FEATURE_DIMS))
    flipped = rng.choice(truth.size, FLIPPED, replace=False)
    labels = truth.copy()
    labels[flipped] = (labels[flipped] + rng.integers(1, count, FLIPPED)) % count
    return features.astype(np.float32), labels, np.sort(flipped)


# The default C (0.002) is tuned on 1280 real backbone features; these 16-dimensional clusters
# need little regularisation.
CLUSTER_C = "label_issues.regularization=1.0"


def test_the_flipped_labels_are_found_and_ranked_first():
    features, labels, flipped = _clustered()
    settings = make_config([CLUSTER_C]).label_issues
    probs = issues.cross_validated_probs(features, labels, settings)
    assert probs.shape == (labels.size, len(CLASS_NAMES))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    ranked, quality = issues.find_issues(labels, probs, settings.filter_by)
    assert sorted(ranked.tolist()) == flipped.tolist()
    assert quality[flipped].max() < np.delete(quality, flipped).min()


def test_the_folds_are_seeded():
    features, labels, _ = _clustered(seed=1)
    settings = make_config().label_issues
    first = issues.cross_validated_probs(features, labels, settings)
    assert np.array_equal(first, issues.cross_validated_probs(features, labels, settings))


def test_counts_per_split_and_class():
    found = issues.Features(
        features=np.zeros((4, 2), np.float32),
        labels=np.array([0, 1, 1, 2]),
        splits=np.array(["train", "train", "val", "test"]),
        indices=np.array([0, 1, 0, 0]),
        files=np.array(["a", "b", "c", "d"]),
    )
    counted = issues.counts(found, np.array([1, 3]), CLASS_NAMES[:3])
    assert counted == {
        "photos": 4,
        "flagged": 2,
        "by_split": {"train": 1, "val": 0, "test": 1},
        "by_class": {"daisy": 0, "dandelion": 1, "roses": 1},
    }


@pytest.mark.slow
def test_the_two_stages_write_the_report_counts_and_gallery(project, tiny_processed):
    shutil.copytree(tiny_processed / "data", project / "data")
    overrides = ["preprocess.image_size=32", "label_issues.folds=3"]
    for stage in ("label_features", "label_issues"):
        code, out, err = run_in_process(project, stage, *overrides)
        assert code == 0, err
    assert "photos flagged" in out
    found = issues.Features.load(project / "data" / "features" / issues.FEATURES_FILE)
    manifest = list(csv.DictReader((project / "data" / "processed" / "manifest.csv").open()))
    assert sorted(found.files.tolist()) == sorted(row["file"] for row in manifest)
    assert found.features.shape == (len(manifest), 1280)  # EfficientNet-Lite0's pooled width
    with (project / "reports" / issues.ISSUES_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    counted = json.loads((project / "reports" / issues.ISSUES_JSON).read_text())["label_issues"]
    assert counted["flagged"] == len(rows) == sum(counted["by_split"].values())
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    assert all(row["given"] in CLASS_NAMES and row["suggested"] in CLASS_NAMES for row in rows)
    assert (project / "plots" / issues.GALLERY_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_benchmark_scores_injected_noise_against_the_flipped_photos():
    """benchmarks/label_issues.py on clustered features with no own issues: every injected flip
    found, nothing else flagged; on a 3-class subset too."""
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(
        "label_issues_benchmark", REPO_ROOT / "benchmarks" / "label_issues.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    features, truth, _ = _clustered(seed=2)
    rows = np.arange(truth.size)
    found = issues.Features(
        features=features,
        labels=np.repeat(np.arange(len(CLASS_NAMES)), CLUSTER_PHOTOS),  # the true labels
        splits=np.where(rows % 5 == 0, "test", "train"),
        indices=rows,
        files=np.array([f"photo{row}.jpg" for row in rows]),
    )
    # The benchmark's scoring is under test, not cleanlab's rule: flag every photo whose
    # out-of-sample prediction differs from its label, which on these clusters is exactly the flips.
    settings = make_config(["label_issues.filter_by=predicted_neq_given", CLUSTER_C]).label_issues
    result = benchmark.run(found, rows, 0.05, 0, settings)
    assert result["own_issues"] == 0 and result["flipped"] == round(0.05 * 240)
    assert result["precision"] == result["recall"] == 1.0
    subset = benchmark._subset(found, 3, 40)
    assert sorted(set(found.labels[subset].tolist())) == [0, 1, 2] and subset.size == 120
    small = benchmark.run(found, subset, 0.05, 0, settings)
    assert small["classes"] == 3 and small["precision"] == small["recall"] == 1.0
