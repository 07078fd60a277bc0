"""Fetch the photo archive (first source that verifies) and extract it into data/raw."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.data.download import download_dataset

    download_dataset(config.data, config.paths, root)


if __name__ == "__main__":
    stage_main(run)
