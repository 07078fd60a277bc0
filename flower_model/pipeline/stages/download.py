"""Stage download: the first dataset archive that exists and verifies, extracted into data/raw."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import Stage


def outputs(config: Config) -> list[Path]:
    raw = config.paths.raw_dir
    return [raw / config.data.name, raw / "source.json"]


def run(config: Config, root: Path) -> None:
    from flower_model.data.download import download_dataset

    download_dataset(config.data, config.paths, root)


STAGE = Stage(
    name="download",
    sections=("data", "paths.raw_dir", "paths.download_cache_dir"),
    run=run,
    outputs=outputs,
    modules=("requests", "tqdm", "fsspec"),
)
