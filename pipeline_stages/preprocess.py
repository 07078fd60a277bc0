"""Decode, clean, deduplicate, resize and split the photos into uint8 arrays."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.data.preprocess import preprocess_dataset
    from flower_model.data.reviews import reviews_file

    paths = config.paths
    preprocess_dataset(
        dataset=root / paths.raw_dir / config.data.name,
        processed=root / paths.processed_dir,
        reports=root / paths.reports_dir,
        plots=root / paths.plots_dir,
        config=config.preprocess,
        resolved=params,
        reviews_file=reviews_file(root / config.preprocess.label_reviews_dir, config.data.name),
    )


if __name__ == "__main__":
    stage_main(run)
