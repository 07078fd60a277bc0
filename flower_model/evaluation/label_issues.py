"""Label issues: photos whose given label the data itself disputes (confident learning).

Two steps, two DVC stages, so that tuning the second costs no backbone pass:
1. `extract_features`: every kept photo (train, val and test) and its mirror image through the
   frozen ImageNet backbone; the two pooled feature vectors are averaged. One pass, cached as the
   label_features stage's out.
2. `find_issues`: out-of-sample probabilities for every photo from K-fold stratified
   cross-validation of a logistic regression on those features (cleanlab's
   `estimate_cv_predicted_probabilities`), then cleanlab's `find_label_issues` ranked by
   self-confidence and `get_label_quality_scores`. The split a photo belongs to plays no part:
   a 551-photo test split alone is too small to estimate the per-class thresholds.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flower_model.constants import SPLITS
from flower_model.data.layout import read_classes, read_manifest_files, read_split

FEATURES_FILE = "features.npz"
ISSUES_CSV = "label_issues.csv"
ISSUES_JSON = "label_issues.json"
GALLERY_FILE = "label_issues.png"
LOGISTIC_MAX_ITER = 2000  # lbfgs on 1280 standardised features converges in a few hundred


@dataclass(frozen=True)
class Features:
    """One row per kept photo, splits in SPLITS order, each in manifest order."""

    features: np.ndarray  # float32 [N, D]
    labels: np.ndarray  # int64 [N], the given labels
    splits: np.ndarray  # str [N]
    indices: np.ndarray  # int64 [N], the photo's row in its split's arrays
    files: np.ndarray  # str [N]

    def save(self, target: Path) -> None:
        np.savez(target, **{name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> "Features":
        with np.load(path, allow_pickle=False) as stored:
            return cls(**{name: stored[name] for name in cls.__dataclass_fields__})


def _backbone(config):
    """The frozen pretrained network; `forward_head(pre_logits=True)` gives pooled features."""
    from flower_model.config import EfficientNetLiteConfig
    from flower_model.models import registry

    model_config = EfficientNetLiteConfig(
        name=config.backbone,
        pretrained=True,
        dropout=0.0,
        input_mean=config.input_mean,
        input_std=config.input_std,
        freeze_stages=0,
    )
    return registry.create_model(model_config, num_classes=1).eval()


def extract_features(processed: Path, config) -> Features:
    """Pooled backbone features of every kept photo, averaged with its mirror image's."""
    import torch

    from flower_model.models.classifier import normalise, pixel_tensor

    classes = read_classes(processed)
    net = _backbone(config)
    mean, std = pixel_tensor(config.input_mean), pixel_tensor(config.input_std)
    parts: dict[str, list] = {"features": [], "labels": [], "splits": [], "indices": []}
    files: list[str] = []
    with torch.inference_mode():
        for split in SPLITS:
            images, labels = read_split(processed, split, len(classes), mmap=True)
            for start in range(0, len(images), config.batch_size):
                batch = torch.from_numpy(np.array(images[start : start + config.batch_size]))
                pixels = normalise(batch.permute(0, 3, 1, 2), mean, std, channels_last=False)
                pooled = [
                    net.forward_head(net.forward_features(view), pre_logits=True)
                    for view in (pixels, pixels.flip(-1))
                ]
                parts["features"].append(((pooled[0] + pooled[1]) / 2).numpy())
            parts["labels"].append(labels.astype(np.int64))
            parts["splits"].append(np.full(len(labels), split))
            parts["indices"].append(np.arange(len(labels), dtype=np.int64))
            files += read_manifest_files(processed, split)
    return Features(
        features=np.concatenate(parts["features"]).astype(np.float32),
        labels=np.concatenate(parts["labels"]),
        splits=np.concatenate(parts["splits"]),
        indices=np.concatenate(parts["indices"]),
        files=np.array(files),
    )


def cross_validated_probs(features: np.ndarray, labels: np.ndarray, config) -> np.ndarray:
    """Out-of-sample class probabilities of every row (stratified K-fold, seeded)."""
    from cleanlab.count import estimate_cv_predicted_probabilities
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=config.regularization, max_iter=LOGISTIC_MAX_ITER),
    )
    return estimate_cv_predicted_probabilities(
        features, labels, clf=classifier, cv_n_folds=config.folds, seed=config.seed
    )


def find_issues(
    labels: np.ndarray, probs: np.ndarray, filter_by: str
) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the flagged rows, most suspicious first; every row's label quality 0..1)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ranked = find_label_issues(
        labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence"
    )
    return np.asarray(ranked, dtype=np.int64), get_label_quality_scores(labels, probs)


def issue_rows(
    found: Features, probs: np.ndarray, ranked: np.ndarray, quality: np.ndarray, classes
) -> list[list]:
    """rank, file, split, given label, suggested label, label quality: one row per issue."""
    return [
        [
            rank,
            str(found.files[row]),
            str(found.splits[row]),
            classes[found.labels[row]],
            classes[int(probs[row].argmax())],
            round(float(quality[row]), 6),
        ]
        for rank, row in enumerate(ranked, start=1)
    ]


def counts(found: Features, ranked: np.ndarray, classes: list[str]) -> dict:
    """Flagged photos in all, per split and per given class (what `dvc metrics show` reads)."""
    flagged = np.zeros(len(found.labels), dtype=bool)
    flagged[ranked] = True
    return {
        "photos": int(len(found.labels)),
        "flagged": int(flagged.sum()),
        "by_split": {split: int(flagged[found.splits == split].sum()) for split in SPLITS},
        "by_class": {
            name: int(flagged[found.labels == label].sum()) for label, name in enumerate(classes)
        },
    }


def draw_gallery(
    processed: Path, found: Features, ranked: np.ndarray, rows: list[list], limit: int, target
) -> None:
    """The `limit` most suspicious photos with their given and suggested labels."""
    from flower_model.evaluation.eval_figures import photo_gallery, short_file_name

    classes = read_classes(processed)
    arrays = {
        split: read_split(processed, split, len(classes), mmap=True)[0]
        for split in set(found.splits[ranked[:limit]].tolist())
    }
    images = [arrays[str(found.splits[row])][found.indices[row]] for row in ranked[:limit]]
    titles = [
        f"{short_file_name(file)} ({split})\ngiven {given}\nsuggested {suggested}"
        for _, file, split, given, suggested, _ in rows[:limit]
    ]
    photo_gallery(
        np.array(images),
        titles,
        f"label issues ({len(titles)} of {len(rows)} shown, most suspicious first)",
        "no label issues found",
        target,
    )
