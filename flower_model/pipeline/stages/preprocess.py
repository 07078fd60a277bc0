"""Stage preprocess: decode, clean, deduplicate, resize and split the photos into uint8 arrays."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import Stage


def inputs(config: Config) -> list[Path]:
    return [config.paths.raw_dir / config.data.name]


def outputs(config: Config) -> list[Path]:
    paths = config.paths
    return [
        paths.processed_dir,
        paths.reports_dir / "data.json",
        paths.reports_dir / "dropped.csv",
        paths.plots_dir / "data" / "class_distribution.csv",
    ]


def run(config: Config, root: Path) -> None:
    from flower_model.data.preprocess import preprocess_dataset

    paths = config.paths
    preprocess_dataset(
        dataset=root / paths.raw_dir / config.data.name,
        processed=root / paths.processed_dir,
        reports=root / paths.reports_dir,
        plots=root / paths.plots_dir,
        config=config.preprocess,
        resolved=STAGE.resolved(config),
    )


STAGE = Stage(
    name="preprocess",
    sections=(
        "data.name",
        "paths.raw_dir",
        "paths.processed_dir",
        "paths.reports_dir",
        "paths.plots_dir",
        "preprocess",
    ),
    run=run,
    inputs=inputs,
    outputs=outputs,
    modules=("numpy", "PIL", "tqdm"),
)
