"""Stage download: the first dataset archive that exists and verifies, extracted into data/raw."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import Stage


def run(config: Config, root: Path) -> None:
    from flower_model.data.download import download_dataset

    download_dataset(config.data, config.paths, root)


STAGE = Stage(
    name="download",
    run=run,
    modules=("requests", "tqdm", "fsspec"),
)
