"""Backbone features of every kept photo and its mirror, for the label-issue search."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.evaluation.label_issues import FEATURES_FILE, extract_features
    from flower_model.io_utils import atomic_dir

    found = extract_features(root / config.paths.processed_dir, config.label_issues)
    with atomic_dir(root / config.paths.features_dir) as staging:
        found.save(staging / FEATURES_FILE)
    print(f"label_features: {found.features.shape[1]} features of {len(found.labels)} photos")


if __name__ == "__main__":
    stage_main(run)
