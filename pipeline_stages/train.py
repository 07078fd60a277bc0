"""Fit the configured model on the preprocessed arrays, tracked in MLflow."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def preflight(config: Config, root: Path) -> None:
    from flower_model.models.registry import check_model
    from flower_model.training.resume import load_resume_state
    from flower_model.training.tracking import require_tracking_server

    check_model(config.model)  # a registered name of the configured family
    load_resume_state(config, root)  # the checkpoint exists, loads, and fits this model
    require_tracking_server(config.mlflow)  # a store MLflow accepts, and its server answers


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.training.train import train_model

    train_model(config, root, params)


if __name__ == "__main__":
    stage_main(run, preflight)
